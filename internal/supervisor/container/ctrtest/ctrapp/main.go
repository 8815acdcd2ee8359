// Command ctrapp is the program inside the test container images: a tiny
// static binary with modes chosen by its first argument.
//
//	sleep          print "started", run until SIGTERM (exit 0)
//	ignore         ignore SIGTERM, run forever
//	exit N         exit with code N after printing a line on stderr
//	hog            allocate and touch memory until killed
//	env            print the environment
//	check FILE     exit 0 when FILE exists (an exec health check)
//	touch FILE     create FILE, then run as sleep
//	http ADDR      serve GET /healthz on ADDR until SIGTERM
//	reaper CMD...  run CMD as a child subreaper, reaping every orphan
//	               below it, until CMD exits (keeps podman's conmon
//	               processes away from a test process that is a subreaper)
//	mqtt           connect to the bus with the credentials file, publish a
//	               heartbeat on components/<name>/heartbeat every 100ms,
//	               reconnect (re-reading the credentials) when it breaks
package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

var hogged [][]byte

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: ctrapp MODE [ARG]")
		os.Exit(2)
	}
	arg := ""
	if len(os.Args) > 2 {
		arg = os.Args[2]
	}
	if os.Args[1] == "reaper" {
		os.Exit(reaper(os.Args[2:]))
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	switch os.Args[1] {
	case "sleep":
		fmt.Println("started", os.Getenv("OUTPOST_COMPONENT_NAME"))
		<-term
		fmt.Println("stopping")
	case "tick":
		// A numbered line every 100 ms until SIGTERM (log continuity).
		tk := time.NewTicker(100 * time.Millisecond)
		for i := 1; ; i++ {
			select {
			case <-term:
				fmt.Println("stopping")
				return
			case <-tk.C:
				fmt.Println("tick", i)
			}
		}
	case "ignore":
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ignoring SIGTERM")
		select {}
	case "exit":
		n, _ := strconv.Atoi(arg)
		fmt.Fprintln(os.Stderr, "exiting with", n)
		os.Exit(n)
	case "hog":
		for {
			b := make([]byte, 1<<20)
			for i := range b {
				b[i] = byte(i)
			}
			hogged = append(hogged, b)
			time.Sleep(time.Millisecond)
		}
	case "env":
		for _, kv := range os.Environ() {
			fmt.Println(kv)
		}
	case "check":
		if _, err := os.Stat(arg); err != nil {
			fmt.Fprintln(os.Stderr, "not ready:", err)
			os.Exit(1)
		}
	case "touch":
		if err := os.WriteFile(arg, nil, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("started")
		<-term
		fmt.Println("stopping")
	case "http":
		srv := &http.Server{Addr: arg, ReadHeaderTimeout: time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprintln(w, "ok")
		})}
		go func() { _ = srv.ListenAndServe() }()
		<-term
	case "mqtt":
		go heartbeat()
		<-term
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[1])
		os.Exit(2)
	}
}

func heartbeat() {
	name := os.Getenv("OUTPOST_COMPONENT_NAME")
	for {
		if err := session(name); err != nil {
			fmt.Fprintln(os.Stderr, "mqtt:", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// session connects once (MQTT 3.1.1) and publishes until the connection
// breaks.
func session(name string) error {
	var cred struct{ URL, Username, Password string }
	b, err := os.ReadFile(os.Getenv("OUTPOST_MQTT_CREDENTIALS_FILE"))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &cred); err != nil {
		return err
	}
	u, err := url.Parse(cred.URL)
	if err != nil {
		return err
	}
	conn, err := net.DialTimeout("unix", u.Path, 2*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	var p []byte
	p = appendStr(p, "MQTT")
	p = append(p, 4, 0xC2, 0, 60) // level 4, username+password+clean, keepalive 60
	p = appendStr(p, name)
	p = appendStr(p, cred.Username)
	p = appendStr(p, cred.Password)
	if _, err := conn.Write(packet(0x10, p)); err != nil {
		return err
	}
	var ack [4]byte
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := bufio.NewReader(conn).Read(ack[:]); err != nil {
		return err
	}
	if ack[0] != 0x20 || ack[3] != 0 {
		return fmt.Errorf("connack % x", ack)
	}
	fmt.Println("connected")
	_ = conn.SetReadDeadline(time.Time{})
	for {
		body := appendStr(nil, "components/"+name+"/heartbeat")
		body = append(body, []byte(time.Now().Format(time.RFC3339Nano))...)
		if _, err := conn.Write(packet(0x30, body)); err != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func appendStr(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func packet(h byte, body []byte) []byte {
	out := []byte{h}
	n := len(body)
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		out = append(out, d)
		if n == 0 {
			break
		}
	}
	return append(out, body...)
}

func reaper(argv []string) int {
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, 36 /* PR_SET_CHILD_SUBREAPER */, 1, 0); errno != 0 {
		fmt.Fprintln(os.Stderr, "prctl:", errno)
		return 1
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	p, err := os.StartProcess(argv[0], argv, &os.ProcAttr{Files: []*os.File{os.Stdin, os.Stdout, os.Stderr}, Env: os.Environ()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go func() {
		for s := range sigs {
			_ = p.Signal(s)
		}
	}()
	// When the process that started us goes (a test killed), stop too.
	parent := os.Getppid()
	go func() {
		for range time.Tick(time.Second) {
			if os.Getppid() != parent {
				_ = p.Signal(syscall.SIGTERM)
				return
			}
		}
	}()
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, 0, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return 0
		}
		if pid == p.Pid {
			// Orphans left (conmon) are reaped until none remain.
			for {
				if _, err := syscall.Wait4(-1, &ws, 0, nil); err != nil && err != syscall.EINTR {
					return ws.ExitStatus()
				}
			}
		}
	}
}
