package gozero

import "syscall"

// sysProcAttr makes the kernel SIGKILL a child if the test process dies
// without stopping it (e.g. a test binary killed by `go test -timeout`).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
