package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/outpost-edge/outpost/internal/agent"
	"github.com/outpost-edge/outpost/internal/buildinfo"
	"github.com/outpost-edge/outpost/internal/fleet/client"
)

func init() {
	register(&command{name: "enroll", summary: "enroll this gateway with an outpost-server (bootstrap token -> client certificate)", run: runEnroll})
}

func runEnroll(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("enroll", flag.ContinueOnError)
	server := fs.String("server", "", "the fleet server, https://host:port")
	token := fs.String("token", "", "the bootstrap token (default: env OUTPOST_ENROLL_TOKEN)")
	caFile := fs.String("ca", "", "the fleet CA certificate (the server's DATA/ca.pem)")
	cfgPath := fs.String("config", "", "the agent's config file: enroll into its data_dir (or fleet.dir) as its node_id")
	data := fs.String("data", "", "the agent's data directory (without --config; default ./data)")
	id := fs.String("id", "", "the gateway id (default: node_id from --config, else the hostname)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), helpText("outpost enroll --server URL --token TOKEN --ca CA.pem [--config FILE | --data DIR --id ID]",
			`Enroll this gateway with a fleet server: make a key pair here (ECDSA P-256;
the private key never leaves the gateway), send a certificate request with the
single-use bootstrap token, and store the key, the client certificate and the
fleet CA in DATA_DIR/fleet (mode 0600). From then on every request to the
server is mutual TLS. Add a 'fleet: {}' section to the config (outpost demo
does it by itself once enrolled) to keep the gateway in sync.`,
			"outpost enroll --config /etc/outpost/outpost.yaml --server https://fleet.example.com:8443 --ca fleet-ca.pem --token opb_...",
			"outpost enroll --data outpost-demo-data --id demo --server https://127.0.0.1:8443 --ca fleet-data/ca.pem --token opb_..."))
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return exitOK
		}
		return exitUsage
	}
	if *token == "" {
		*token = os.Getenv("OUTPOST_ENROLL_TOKEN")
	}
	if *server == "" || *token == "" || *caFile == "" {
		fmt.Fprintln(os.Stderr, "outpost enroll: --server, --token and --ca are required")
		return exitUsage
	}
	caPEM, err := os.ReadFile(*caFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "outpost enroll: --ca:", err)
		return exitUsage
	}
	dir, gwID := filepath.Join("data", "fleet"), *id
	if *cfgPath != "" {
		cfg, err := agent.Load(*cfgPath)
		if err != nil {
			printConfigError(err)
			return exitUsage
		}
		dir = filepath.Join(cfg.DataDir, "fleet")
		if cfg.Fleet != nil {
			dir = cfg.Fleet.Dir
		}
		if gwID == "" {
			gwID = cfg.NodeID
		}
	} else if *data != "" {
		dir = filepath.Join(*data, "fleet")
	}
	if gwID == "" {
		gwID, _ = os.Hostname()
	}
	facts := map[string]string{"arch": runtime.GOARCH, "os": runtime.GOOS, "version": buildinfo.Read().Version}
	if h, err := os.Hostname(); err == nil {
		facts["hostname"] = h
	}
	if err := client.Enroll(ctx, client.EnrollOptions{Server: *server, Token: *token, CAPEM: caPEM, ID: gwID, Dir: dir, Facts: facts}); err != nil {
		fmt.Fprintln(os.Stderr, "outpost enroll:", err)
		return exitFailure
	}
	fmt.Printf("enrolled as %s with %s; identity in %s\n", gwID, *server, dir)
	return exitOK
}
