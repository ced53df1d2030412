package testserver

import "syscall"

// sysProcAttr makes the kernel SIGKILL the server if the test process dies
// without stopping it (e.g. a test binary killed by `go test -timeout`).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
