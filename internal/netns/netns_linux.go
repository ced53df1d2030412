//go:build linux

package netns

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// nsID identifies a namespace: the device and inode of its nsfs file.
type nsID struct{ dev, ino uint64 }

func (id nsID) String() string { return fmt.Sprintf("%d:%d", id.dev, id.ino) }

func parseNSID(s string) (nsID, error) {
	d, i, ok := strings.Cut(s, ":")
	if !ok {
		return nsID{}, fmt.Errorf("netns: malformed namespace id %q", s)
	}
	dev, err1 := strconv.ParseUint(d, 10, 64)
	ino, err2 := strconv.ParseUint(i, 10, 64)
	if err1 != nil || err2 != nil {
		return nsID{}, fmt.Errorf("netns: malformed namespace id %q", s)
	}
	return nsID{dev, ino}, nil
}

func statNS(path string) (nsID, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return nsID{}, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return nsID{uint64(st.Dev), st.Ino}, nil
}

// InPrivate reports whether the calling process runs in a network namespace
// other than the initial one.
//
// The initial namespace is the one of PID 1 (/proc/1/ns/net): the two
// namespace files are compared by device and inode, which is how the kernel
// identifies namespaces. Reading /proc/1/ns/net needs privileges over PID 1,
// which an unprivileged user (or root inside a user namespace) does not have;
// then the reference is the namespace recorded in EnvInitial by RunIsolated
// before it re-executed the test binary (the namespace the test was started
// in, the one that must never see multicast). The marker is a namespace
// identity, not a yes/no flag, so an inherited or stale marker can only make
// InPrivate say "not private" wrongly, never "private" while still in the
// namespace it names. Without either reference InPrivate returns an error.
func InPrivate() (bool, error) {
	self, err := statNS("/proc/self/ns/net")
	if err != nil {
		return false, err
	}
	initial, err := statNS("/proc/1/ns/net")
	if err == nil {
		return self != initial, nil
	}
	if m := os.Getenv(EnvInitial); m != "" {
		ref, perr := parseNSID(m)
		if perr != nil {
			return false, perr
		}
		return self != ref, nil
	}
	return false, fmt.Errorf("netns: cannot read the initial namespace: %w", err)
}

// RunIsolated runs the tests of m in a private network namespace and returns
// the exit code for os.Exit. Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(netns.RunIsolated(m)) }
//
// When the process is not already in a private namespace, RunIsolated
// re-executes the test binary (same arguments, same standard streams) under
// `unshare --net --mount --propagation private` (with `--user
// --map-root-user` when not root), waits for it and returns its exit code;
// SIGINT and SIGTERM are passed on to it, and it is killed if this process
// dies. In the child it brings lo up, adds `224.0.0.0/4 dev lo` and mounts a
// private tmpfs on /run/netns, then runs m.Run().
//
// When the process already is in a private namespace (made by an outer tool,
// or a lab host started by Lab.Command), it runs m.Run() directly and leaves
// the namespace as it is.
//
// When no namespace can be made (no `unshare` or `ip`, no privileges, user
// namespaces disabled), it sets EnvUnavailable to the reason and runs m.Run()
// in the current namespace, so that tests calling Require skip (or fail with
// BEACON_REQUIRE_NETNS=1) while the others still run.
func RunIsolated(m *testing.M) int {
	if os.Getenv(envChild) != "" {
		os.Unsetenv(envChild)
		setupChild()
		return m.Run()
	}
	if priv, _ := InPrivate(); priv {
		return m.Run()
	}
	code, err := reexec()
	if err != nil {
		os.Setenv(EnvUnavailable, err.Error())
		return m.Run()
	}
	return code
}

// unshareArgs returns the unshare command line that makes the namespaces.
func unshareArgs() []string {
	args := []string{"--net", "--mount", "--propagation", "private"}
	if os.Geteuid() != 0 {
		args = append([]string{"--user", "--map-root-user"}, args...)
	}
	return args
}

// reexec runs the test binary again in new namespaces. An error means the
// namespaces could not be made and nothing was run.
func reexec() (int, error) {
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		return 0, fmt.Errorf("util-linux unshare not found: %w", err)
	}
	ip, err := exec.LookPath("ip")
	if err != nil {
		return 0, fmt.Errorf("iproute2 ip not found: %w", err)
	}
	exe, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("cannot find the test binary: %w", err)
	}
	self, err := statNS("/proc/self/ns/net")
	if err != nil {
		return 0, err
	}
	// Probe: can we make the namespaces and configure them? Doing it with a
	// throw-away process tells "cannot isolate" apart from "tests failed",
	// which the child's exit code alone cannot.
	probe := exec.Command(unshare, append(unshareArgs(), "--", ip, "link", "set", "lo", "up")...)
	var out bytes.Buffer
	probe.Stdout, probe.Stderr = &out, &out
	if err := probe.Run(); err != nil {
		return 0, fmt.Errorf("%s %s: %v: %s", unshare, strings.Join(unshareArgs(), " "), err, strings.TrimSpace(out.String()))
	}

	cmd := exec.Command(unshare, append(append(unshareArgs(), "--", exe), os.Args[1:]...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), envChild+"=1", EnvInitial+"="+self.String())
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	// Pdeathsig fires when the thread that forked the child exits: keep
	// this goroutine on its thread until the child is gone.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("starting %s: %w", unshare, err)
	}
	done := make(chan struct{})
	fwd := make(chan struct{})
	go func() {
		defer close(fwd)
		for {
			select {
			case s := <-sigs:
				_ = cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	err = cmd.Wait()
	close(done)
	<-fwd
	if err == nil {
		return 0, nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			fmt.Fprintf(os.Stderr, "netns: isolated test process killed by %v\n", ws.Signal())
			return 2, nil
		}
		return ee.ExitCode(), nil
	}
	fmt.Fprintf(os.Stderr, "netns: waiting for the isolated test process: %v\n", err)
	return 1, nil
}

// setupChild prepares the namespace made by reexec. Failures are recorded in
// EnvUnavailable / EnvLabUnavailable for Require and RequireLab to report.
func setupChild() {
	if priv, err := InPrivate(); !priv {
		reason := "the re-executed test process is not in a private network namespace"
		if err != nil {
			reason += ": " + err.Error()
		}
		os.Setenv(EnvUnavailable, reason)
		return
	}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"route", "add", "224.0.0.0/4", "dev", "lo"},
	} {
		if err := ipCmd("", args...); err != nil {
			os.Setenv(EnvUnavailable, err.Error())
			return
		}
	}
	if err := privateRunNetns(); err != nil {
		os.Setenv(EnvLabUnavailable, err.Error())
	}
}

// privateRunNetns mounts a tmpfs on /run/netns. It runs only in the child,
// whose mount namespace is private, so the mount is invisible outside. When
// /run/netns does not exist and cannot be made (an unprivileged user
// namespace cannot write the real /run), a tmpfs goes on /run first.
func privateRunNetns() error {
	const dir = "/run/netns"
	const flags = syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_NOEXEC
	if err := os.MkdirAll(dir, 0o755); err != nil {
		if err := syscall.Mount("beacon-run", "/run", "tmpfs", flags, "mode=0755"); err != nil {
			return fmt.Errorf("mount tmpfs on /run: %w", err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	if err := syscall.Mount("beacon-netns", dir, "tmpfs", flags, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", dir, err)
	}
	return nil
}

// ipCmd runs `ip [-n ns] args...`, returning its output in the error.
func ipCmd(ns string, args ...string) error {
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ipBatch runs `ip [-n ns] -batch -` with the given commands on stdin.
func ipBatch(ns string, cmds []string) error {
	args := []string{"-batch", "-"}
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	c := exec.Command("ip", args...)
	c.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	out, err := c.CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
