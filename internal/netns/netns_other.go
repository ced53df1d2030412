//go:build !linux

package netns

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"runtime"
	"testing"
)

var errUnsupported = errors.New("network namespaces need Linux, this is " + runtime.GOOS)

// InPrivate reports whether the process runs in a private network
// namespace; never on this system.
func InPrivate() (bool, error) { return false, errUnsupported }

// RunIsolated runs m's tests directly, with EnvUnavailable set so that
// Require skips the tests that need a private namespace.
func RunIsolated(m *testing.M) int {
	os.Setenv(EnvUnavailable, errUnsupported.Error())
	return m.Run()
}

// Lab is a LAN of network namespaces; unavailable on this system.
type Lab struct{}

// NewLab fails on this system.
func NewLab(int, ...LabOption) (*Lab, error) { return nil, errUnsupported }

// Len returns 0.
func (*Lab) Len() int { return 0 }

// IP returns nil.
func (*Lab) IP(int) net.IP { return nil }

// Command returns a command that fails to start.
func (*Lab) Command(int, string, ...string) *exec.Cmd { return &exec.Cmd{Err: errUnsupported} }

// Do returns an error.
func (*Lab) Do(int, func() error) error { return errUnsupported }

// Close does nothing.
func (*Lab) Close() error { return nil }
