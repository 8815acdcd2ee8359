package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/internal/buildinfo"
	"github.com/outpost-edge/outpost/internal/ota/release"
	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

func init() {
	register(&command{name: "release", summary: "publish signed updates: keygen, add, sign, rotate, delegate, serve, push", run: runRelease})
}

const releaseUsage = `Usage:
  outpost release keygen --repo DIR --keys KEYDIR [--passphrase-file FILE | --no-passphrase]
  outpost release add    --repo DIR --keys KEYDIR --binary FILE --version V [--platform linux/arm64] [--deltas 3] [--no-sign]
  outpost release sign   --repo DIR --keys KEYDIR [--timestamp | --role NAME]
  outpost release rotate --repo DIR --keys KEYDIR --role timestamp|snapshot|targets|root
  outpost release delegate --repo DIR --keys KEYDIR --role NAME --paths 'linux/arm64/*[,PATTERN...]' [--terminating]
  outpost release serve  DIR [--listen 127.0.0.1:8080]
  outpost release push   --repo DIR [--server https://fleet:8443] [--ca ca.pem]

Publish Outpost releases as a TUF repository (static files) that gateways
update from. keygen creates the four role keys and the first root.json; copy
DIR/metadata/1.root.json to each gateway (ota.root). add puts a binary in the
repository as a compressed full target plus bsdiff deltas from the previous
versions, then signs (unless --no-sign). sign publishes what was added; with
--timestamp it only re-signs the timestamp, which expires after a day:
run it from cron. Keep KEYDIR offline; the root key especially.

Private keys are encrypted with a passphrase (scrypt, XChaCha20-Poly1305),
read from the file given by --passphrase-file or from the environment
variable OUTPOST_RELEASE_PASSPHRASE (never from the command line). keygen
and rotate encrypt new keys with it; add, sign and rotate need it when the
keys are encrypted. keygen --no-passphrase stores the keys unencrypted.

delegate creates a key for a delegated targets role (one level, TUF
order) trusted only for target names matching its path patterns; add
--role NAME then publishes with that role's key plus the snapshot and
timestamp keys, so the top-level targets key can stay offline (sign --role
NAME renews the role's expiry). Target names are PLATFORM/outpost-VERSION.zst and
PLATFORM/outpost-FROM-to-VERSION.patch.

push publishes the repository to outpost-server, which hosts it for its
gateways (URL https://SERVER/api/v1/ota): targets first, then metadata,
timestamp.json last. It needs an operator or admin API token in
OUTPOST_SERVER_TOKEN; --server and --ca default to OUTPOST_SERVER and
OUTPOST_SERVER_CA. The server never signs: the keys stay here.

Examples:
  OUTPOST_RELEASE_PASSPHRASE="$(pass show outpost/release)" outpost release keygen --repo ./repo --keys ./keys
  outpost release keygen --repo ./repo --keys ./keys --passphrase-file /run/secrets/outpost-release
  outpost release add --repo ./repo --keys ./keys --binary dist/outpost-linux-arm64 --version 1.4.0 --platform linux/arm64
  outpost release sign --repo ./repo --keys ./keys --timestamp
  outpost release delegate --repo ./repo --keys ./keys --role arm64 --paths 'linux/arm64/*'
  outpost release add --repo ./repo --keys ./keys --role arm64 --binary dist/outpost-linux-arm64 --version 1.4.0 --platform linux/arm64
  outpost release serve ./repo --listen 127.0.0.1:8080
  OUTPOST_SERVER_TOKEN=opa_... outpost release push --repo ./repo --server https://fleet.example.com:8443 --ca fleet-ca.pem
`

func runRelease(ctx context.Context, args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(os.Stdout, releaseUsage)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("release "+sub, flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), releaseUsage, "\nFlags:\n"); fs.PrintDefaults() }
	repo := fs.String("repo", "", "repository directory")
	keys := fs.String("keys", "", "private key directory (keep offline)")
	passFile := fs.String("passphrase-file", "", "file holding the key passphrase (default $"+passphraseEnv+")")
	var err error
	switch sub {
	case "keygen":
		noConsistent := fs.Bool("no-consistent-snapshot", false, "name metadata and targets without version/hash prefixes")
		noPass := fs.Bool("no-passphrase", false, "store the private keys unencrypted (not recommended)")
		if code, ok := parseFlags(fs, args); !ok {
			return code
		}
		if *repo == "" || *keys == "" {
			return usageErr(fs, "--repo and --keys are required")
		}
		var pass []byte
		if pass, err = readPassphrase(*passFile); err != nil {
			break
		}
		switch {
		case pass == nil && !*noPass:
			return usageErr(fs, "the keys would be stored unencrypted: set $"+passphraseEnv+" or --passphrase-file, or pass --no-passphrase")
		case pass != nil && *noPass:
			return usageErr(fs, "--no-passphrase conflicts with a passphrase ($"+passphraseEnv+" or --passphrase-file)")
		case *noPass:
			fmt.Fprintf(os.Stderr, "warning: the private keys in %s are stored unencrypted; anyone who can read them can publish updates\n", *keys)
		}
		var r *tuf.Repo
		if r, err = tuf.InitRepo(*repo, *keys, !*noConsistent, pass); err == nil {
			fmt.Printf("created repository %s (root v1) and keys in %s\npin this root on gateways: %s\n",
				*repo, *keys, filepath.Join(r.MetaDir(), "1.root.json"))
		}
	case "add":
		binary := fs.String("binary", "", "the outpost binary to publish")
		version := fs.String("version", "", "its version (semantic, e.g. 1.4.0)")
		platform := fs.String("platform", buildinfo.Platform(), "GOOS/GOARCH[/vN] it runs on")
		deltas := fs.Int("deltas", 3, "make deltas from this many previous versions")
		noSign := fs.Bool("no-sign", false, "stage only; publish later with `release sign`")
		role := fs.String("role", "", "publish with this delegated role (see delegate); default the targets role")
		if code, ok := parseFlags(fs, args); !ok {
			return code
		}
		if *repo == "" || *keys == "" || *binary == "" || *version == "" {
			return usageErr(fs, "--repo, --keys, --binary and --version are required")
		}
		if *role != "" && *noSign {
			return usageErr(fs, "--role cannot be staged with --no-sign")
		}
		var r *tuf.Repo
		if r, err = openRepo(*repo, *keys, *passFile); err != nil {
			break
		}
		if !*noSign {
			// A wrong passphrase fails here, before anything is written.
			if err = release.CheckKeys(r, *role); err != nil {
				break
			}
		}
		t0 := time.Now()
		var res *release.AddResult
		if res, err = release.AddTo(r, *role, *binary, *version, *platform, *deltas); err != nil {
			// AddTo may have stored some targets before failing.
			break
		}
		switch {
		case *noSign:
			err = release.SaveStaged(r)
		case *role != "":
			err = release.SignRole(r, *role)
		default:
			err = release.Sign(r)
		}
		if err != nil {
			release.Discard(r, res)
			break
		}
		// Printed only once the release is published (or staged).
		fmt.Printf("added %s: %d bytes, %d compressed (%.1f%%)\n", res.Full, res.Size, res.Packed, pct(res.Packed, res.Size))
		for name, n := range res.Deltas {
			fmt.Printf("added %s: delta from %s, %d bytes (%.1f%% of compressed full)\n", name, res.From[name], n, pct(n, res.Packed))
		}
		fmt.Printf("done in %v; targets v%d\n", time.Since(t0).Round(time.Millisecond), r.Targets.Version)
	case "sign":
		tsOnly := fs.Bool("timestamp", false, "only re-sign timestamp.json with a fresh expiry")
		role := fs.String("role", "", "re-sign only this delegated role (with snapshot and timestamp)")
		if code, ok := parseFlags(fs, args); !ok {
			return code
		}
		if *repo == "" || *keys == "" {
			return usageErr(fs, "--repo and --keys are required")
		}
		var r *tuf.Repo
		if r, err = openRepo(*repo, *keys, *passFile); err != nil {
			break
		}
		switch {
		case *tsOnly:
			err = r.SignTimestamp()
		case *role != "":
			err = release.SignRole(r, *role)
		default:
			err = release.Sign(r)
		}
		if err == nil {
			fmt.Printf("signed: timestamp v%d expires %s\n", r.Timestamp.Version, r.Timestamp.Expires.Format(time.RFC3339))
		}
	case "rotate":
		role := fs.String("role", "", "role whose key to replace")
		if code, ok := parseFlags(fs, args); !ok {
			return code
		}
		if *repo == "" || *keys == "" || *role == "" {
			return usageErr(fs, "--repo, --keys and --role are required")
		}
		var r *tuf.Repo
		if r, err = openRepo(*repo, *keys, *passFile); err != nil {
			break
		}
		if err = r.RotateKey(*role); err == nil {
			err = release.Sign(r)
		}
		if err == nil {
			fmt.Printf("rotated %s key; root v%d\n", *role, r.Root.Version)
		}
	case "delegate":
		role := fs.String("role", "", "name of the delegated role (lower case letters, digits, - and _)")
		paths := fs.String("paths", "", "comma-separated target path patterns the role is trusted for (path.Match)")
		terminating := fs.Bool("terminating", false, "later roles are not consulted for names matching these paths")
		if code, ok := parseFlags(fs, args); !ok {
			return code
		}
		if *repo == "" || *keys == "" || *role == "" || *paths == "" {
			return usageErr(fs, "--repo, --keys, --role and --paths are required")
		}
		var r *tuf.Repo
		if r, err = openRepo(*repo, *keys, *passFile); err != nil {
			break
		}
		if err = r.Delegate(*role, strings.Split(*paths, ","), *terminating); err == nil {
			err = release.Sign(r)
		}
		if err == nil {
			fmt.Printf("delegated %s to role %s (key %s); targets v%d\n", *paths, *role, filepath.Join(*keys, *role+".key"), r.Targets.Version)
		}
	case "serve":
		listen := fs.String("listen", "127.0.0.1:8080", "address to listen on")
		dir := ""
		if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
			dir, args = args[0], args[1:]
		}
		if code, ok := parseFlags(fs, args); !ok {
			return code
		}
		if dir == "" && fs.NArg() > 0 {
			dir = fs.Arg(0)
		}
		if dir == "" {
			return usageErr(fs, "the repository directory is required")
		}
		err = serveRepo(ctx, dir, *listen)
	case "push":
		server := fs.String("server", os.Getenv("OUTPOST_SERVER"), "outpost-server URL (env OUTPOST_SERVER)")
		ca := fs.String("ca", os.Getenv("OUTPOST_SERVER_CA"), "the fleet CA certificate (env OUTPOST_SERVER_CA; default: system roots)")
		if code, ok := parseFlags(fs, args); !ok {
			return code
		}
		if *repo == "" || *server == "" {
			return usageErr(fs, "--repo and --server (or OUTPOST_SERVER) are required")
		}
		var res pushResult
		res, err = pushRepo(ctx, *repo, *server, *ca, os.Getenv("OUTPOST_SERVER_TOKEN"))
		if err == nil {
			fmt.Printf("pushed %s to %s/api/v1/ota: %d files uploaded (%d bytes), %d already there\n", *repo, strings.TrimRight(*server, "/"), res.Uploaded, res.Bytes, res.Skipped)
		}
	default:
		fmt.Fprintf(os.Stderr, "outpost release: unknown subcommand %q\n\n%s", sub, releaseUsage)
		return exitUsage
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "outpost release %s: %v\n", sub, err)
		return exitFailure
	}
	return exitOK
}

// passphraseEnv holds the key passphrase when --passphrase-file is not given.
const passphraseEnv = "OUTPOST_RELEASE_PASSPHRASE"

// readPassphrase returns the key passphrase from file (one trailing newline
// dropped) or $OUTPOST_RELEASE_PASSPHRASE; nil when neither is set.
func readPassphrase(file string) ([]byte, error) {
	if file == "" {
		if v := os.Getenv(passphraseEnv); v != "" {
			return []byte(v), nil
		}
		return nil, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("passphrase file: %w", err)
	}
	b = bytes.TrimSuffix(bytes.TrimSuffix(b, []byte("\n")), []byte("\r"))
	if len(b) == 0 {
		return nil, fmt.Errorf("passphrase file %s is empty", file)
	}
	return b, nil
}

// openRepo opens a repository with the passphrase for its keys.
func openRepo(dir, keys, passFile string) (*tuf.Repo, error) {
	pass, err := readPassphrase(passFile)
	if err != nil {
		return nil, err
	}
	r, err := release.Open(dir, keys)
	if err != nil {
		return nil, err
	}
	r.Passphrase = pass
	return r, nil
}

func serveRepo(ctx context.Context, dir, addr string) error {
	if _, err := os.Stat(filepath.Join(dir, "metadata", "root.json")); err != nil {
		return fmt.Errorf("%s is not a repository: %w", dir, err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: release.Handler(dir), ReadHeaderTimeout: 10 * time.Second}
	fmt.Printf("serving %s on http://%s/ (metadata/, targets/)\n", dir, ln.Addr())
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func parseFlags(fs *flag.FlagSet, args []string) (int, bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK, false
		}
		return exitUsage, false
	}
	return 0, true
}

func usageErr(fs *flag.FlagSet, msg string) int {
	fmt.Fprintf(os.Stderr, "outpost %s: %s\n", fs.Name(), msg)
	return exitUsage
}

func pct(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}
