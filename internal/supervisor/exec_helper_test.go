package supervisor

import (
	"os/exec"
	"syscall"
)

func execCommand(path string, setsid bool) *exec.Cmd {
	cmd := exec.Command(path)
	if setsid {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	return cmd
}
