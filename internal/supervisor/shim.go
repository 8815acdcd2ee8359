package supervisor

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// The start shim. On cgroup v1 a process cannot be created inside a group,
// so the supervisor starts its own executable (/proc/self/exe) with
// shimEnv set. The shim, already in its own process group, blocks reading
// fd 3 until the supervisor has moved it into the component's cgroups and
// writes one byte; then it drops privileges (setgroups, setgid, setuid) and
// execs the component's program with the same pid. If the supervisor closes
// the pipe without writing, the shim exits with code 127.
//
// This runs from package init so that every binary linking the supervisor
// (the agent, and test binaries) can serve as the shim; it does nothing
// unless shimEnv is set.
const shimEnv = "OUTPOST_SUPERVISOR_SHIM"

func init() {
	spec, ok := os.LookupEnv(shimEnv)
	if !ok {
		return
	}
	os.Exit(runShim(spec, os.Args[1:]))
}

// shimSpec is passed in shimEnv: "uid:gid:g1,g2" (empty fields: unchanged).
func shimSpec(uid, gid int, groups []int) string {
	if uid < 0 {
		return "::"
	}
	gs := make([]string, len(groups))
	for i, g := range groups {
		gs[i] = strconv.Itoa(g)
	}
	return fmt.Sprintf("%d:%d:%s", uid, gid, strings.Join(gs, ","))
}

func runShim(spec string, args []string) int {
	sync := os.NewFile(3, "sync")
	var b [1]byte
	n, _ := sync.Read(b[:])
	sync.Close()
	if n != 1 {
		return 127
	}
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "outpost shim: missing program")
		return 127
	}
	parts := strings.SplitN(spec, ":", 3)
	if len(parts) == 3 && parts[0] != "" {
		uid, err1 := strconv.Atoi(parts[0])
		gid, err2 := strconv.Atoi(parts[1])
		var groups []int
		if parts[2] != "" {
			for _, g := range strings.Split(parts[2], ",") {
				if n, err := strconv.Atoi(g); err == nil {
					groups = append(groups, n)
				}
			}
		}
		if err1 != nil || err2 != nil {
			fmt.Fprintln(os.Stderr, "outpost shim: bad credentials spec")
			return 127
		}
		if err := syscall.Setgroups(groups); err != nil {
			fmt.Fprintln(os.Stderr, "outpost shim: setgroups:", err)
			return 127
		}
		if err := syscall.Setgid(gid); err != nil {
			fmt.Fprintln(os.Stderr, "outpost shim: setgid:", err)
			return 127
		}
		if err := syscall.Setuid(uid); err != nil {
			fmt.Fprintln(os.Stderr, "outpost shim: setuid:", err)
			return 127
		}
	}
	env := make([]string, 0, len(os.Environ()))
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, shimEnv+"=") {
			env = append(env, e)
		}
	}
	// args[0] is the program path, args[1:] its argv (argv[0] first).
	err := syscall.Exec(args[0], args[1:], env)
	fmt.Fprintf(os.Stderr, "outpost: exec %s: %v\n", args[0], err)
	if os.IsNotExist(err) {
		return 127
	}
	return 126
}
