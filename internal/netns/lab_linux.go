//go:build linux

package netns

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Lab addressing: host i (0-based) has eth0 with LabSubnet.(11+i)/24.
const (
	LabSubnet   = "10.99.0" // first three octets of the lab's /24
	LabIface    = "eth0"    // the interface of every host
	MaxLabHosts = 200
)

// Environment of processes started by Lab.Command.
const (
	EnvLabHost  = "BEACON_LAB_HOST"  // host index, 0-based
	EnvLabIP    = "BEACON_LAB_IP"    // the host's IPv4 address
	EnvLabIface = "BEACON_LAB_IFACE" // the host's LAN interface ("eth0")
)

// Lab is a LAN made of network namespaces, built inside the private
// namespace made by RunIsolated:
//
//	<p>-h0 [lo, eth0 10.99.0.11/24] --veth-- p0 \
//	<p>-h1 [lo, eth0 10.99.0.12/24] --veth-- p1  }- br0 (bridge) in namespace <p>-br
//	...                                          /
//
// Each veth pair is created inside the bridge namespace with its peer born
// directly in the host namespace, so no link ever exists in the namespace of
// the test itself. Every host routes 224.0.0.0/4 via eth0 and, unless
// LabIPv6 was given, has IPv6 disabled. Namespace names start with "bl<pid>-"
// plus a random part, so labs of parallel test processes never clash (they
// also live in each process's private /run/netns).
//
// Hosts are numbered from 0. A Lab's methods are safe for concurrent use.
type Lab struct {
	prefix string
	bridge string
	hosts  []string
	ipv6   bool

	mu     sync.Mutex
	closed bool
}

// NewLab builds a lab of n hosts (1 to MaxLabHosts). It must run inside a
// private network namespace (see RunIsolated); it fails otherwise. Inside
// RunIsolated's namespace /run/netns is a private tmpfs, so the lab's
// namespaces are invisible outside the test process; when the private
// namespace was made by an outer tool they live in its /run/netns. It takes
// about 0.1 s for 10 hosts, Close included (one `ip -batch` per
// namespace). Close it.
func NewLab(n int, opts ...LabOption) (*Lab, error) {
	if n < 1 || n > MaxLabHosts {
		return nil, fmt.Errorf("netns: lab size %d out of range 1..%d", n, MaxLabHosts)
	}
	var o labOptions
	for _, f := range opts {
		f(&o)
	}
	priv, err := InPrivate()
	if err != nil {
		return nil, err
	}
	if !priv {
		return nil, errors.New("netns: NewLab needs a private network namespace (TestMain must call netns.RunIsolated)")
	}
	if reason := os.Getenv(EnvLabUnavailable); reason != "" {
		return nil, errors.New("netns: " + reason)
	}
	p := fmt.Sprintf("bl%d-%04x", os.Getpid(), rand.Uint32()&0xffff)
	l := &Lab{prefix: p, bridge: p + "-br", ipv6: o.ipv6}
	for i := range n {
		l.hosts = append(l.hosts, fmt.Sprintf("%s-h%d", p, i))
	}
	if err := l.build(); err != nil {
		_ = l.Close()
		return nil, err
	}
	return l, nil
}

func (l *Lab) build() error {
	adds := []string{"netns add " + l.bridge}
	for _, h := range l.hosts {
		adds = append(adds, "netns add "+h)
	}
	if err := ipBatch("", adds); err != nil {
		return err
	}
	// The bridge is L2 only; hosts get IPv6 only on request. Set before
	// the interfaces exist so that they inherit the "default" values.
	if err := l.doNS(l.bridge, func() error { return sysctlIPv6(false) }); err != nil {
		return err
	}
	for _, h := range l.hosts {
		if err := l.doNS(h, func() error { return sysctlIPv6(l.ipv6) }); err != nil {
			return err
		}
	}
	br := []string{
		"link set lo up",
		"link add br0 type bridge mcast_snooping 0 stp_state 0 forward_delay 0",
		"link set br0 up",
	}
	for i, h := range l.hosts {
		br = append(br,
			fmt.Sprintf("link add p%d type veth peer name %s netns %s", i, LabIface, h),
			fmt.Sprintf("link set p%d master br0", i),
			fmt.Sprintf("link set p%d up", i),
		)
	}
	if err := ipBatch(l.bridge, br); err != nil {
		return err
	}
	for i, h := range l.hosts {
		if err := ipBatch(h, []string{
			"link set lo up",
			fmt.Sprintf("addr add %s/24 dev %s", l.IP(i), LabIface),
			"link set " + LabIface + " up",
			"route add 224.0.0.0/4 dev " + LabIface,
		}); err != nil {
			return err
		}
	}
	return nil
}

// sysctlIPv6 disables IPv6 in the calling thread's namespace, or (enable)
// turns off duplicate address detection so link-local addresses work at
// once. A kernel without IPv6 is fine either way.
func sysctlIPv6(enable bool) error {
	set := map[string]string{"disable_ipv6": "1"}
	if enable {
		set = map[string]string{"accept_dad": "0"}
	}
	for key, val := range set {
		for _, scope := range []string{"all", "default"} {
			p := filepath.Join("/proc/sys/net/ipv6/conf", scope, key)
			if err := os.WriteFile(p, []byte(val), 0o644); err != nil {
				if errors.Is(err, os.ErrNotExist) {
					continue
				}
				return err
			}
		}
	}
	return nil
}

// Len returns the number of hosts.
func (l *Lab) Len() int { return len(l.hosts) }

// Namespace returns the name of host i's namespace (for `ip netns exec`).
func (l *Lab) Namespace(i int) string { return l.hosts[i] }

// Bridge returns the name of the bridge's namespace (br0 lives there).
func (l *Lab) Bridge() string { return l.bridge }

// IP returns host i's IPv4 address on eth0: 10.99.0.(11+i).
func (l *Lab) IP(i int) net.IP {
	if i < 0 || i >= len(l.hosts) {
		panic(fmt.Sprintf("netns: lab host %d out of range 0..%d", i, len(l.hosts)-1))
	}
	return net.ParseIP(LabSubnet + "." + strconv.Itoa(11+i)).To4()
}

// Command returns a command that runs name with args in host i (through
// `ip netns exec`, which execs name, so cmd.Process is the program itself).
// Its environment is this process's plus EnvLabHost, EnvLabIP and
// EnvLabIface. The program is killed if the thread that started it ends;
// Close kills it too. Wait for it as usual.
func (l *Lab) Command(i int, name string, args ...string) *exec.Cmd {
	ip := l.IP(i) // checks i
	cmd := exec.Command("ip", append([]string{"netns", "exec", l.hosts[i], name}, args...)...)
	cmd.Env = append(os.Environ(),
		EnvLabHost+"="+strconv.Itoa(i), EnvLabIP+"="+ip.String(), EnvLabIface+"="+LabIface)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// Do runs fn on an OS thread switched into host i's network namespace and
// returns its error. Sockets that fn opens (and interfaces it looks up)
// belong to host i and stay there after Do returns; goroutines that fn
// starts run in the test's own namespace, so open every socket within fn
// itself. Start processes with Command, not from fn. Do blocks until fn
// returns; the thread is switched back afterwards.
func (l *Lab) Do(i int, fn func() error) error {
	_ = l.IP(i) // checks i
	return l.doNS(l.hosts[i], fn)
}

// doNS runs fn on a thread inside namespace ns, then switches the thread
// back; if switching back fails the thread is left locked and so is
// destroyed when its goroutine ends, never reused in the wrong namespace.
func (l *Lab) doNS(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", syscall.Gettid()))
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			errc <- err
			return
		}
		err = setns(target)
		target.Close()
		if err != nil {
			errc <- fmt.Errorf("netns: entering %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := setns(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("netns: leaving %s: %w", ns, err))
			return // thread stays locked: it dies with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

func setns(f *os.File) error {
	if _, _, e := syscall.RawSyscall(sysSetns, f.Fd(), syscall.CLONE_NEWNET, 0); e != 0 {
		return e
	}
	return nil
}

// Close kills every process left in the lab's namespaces (SIGTERM, then
// SIGKILL after up to a second), then deletes the namespaces. It is
// idempotent and blocks until done (normally well under a second).
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	all := append([]string{l.bridge}, l.hosts...)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		deadline := time.Now().Add(time.Second)
		for {
			pids := l.pids(all)
			if len(pids) == 0 {
				break
			}
			if time.Now().After(deadline) {
				break
			}
			for _, pid := range pids {
				_ = syscall.Kill(pid, sig)
			}
			time.Sleep(20 * time.Millisecond) // poll for the processes to exit
		}
	}
	left := l.pids(all)
	var dels []string
	for _, ns := range all {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			dels = append(dels, "netns del "+ns)
		}
	}
	if len(dels) == 0 {
		return nil
	}
	err := ipBatch("", dels)
	if len(left) > 0 {
		err = errors.Join(err, fmt.Errorf("netns: processes %v survived SIGKILL in lab %s", left, l.prefix))
	}
	return err
}

// pids lists the processes living in the given namespaces.
func (l *Lab) pids(namespaces []string) []int {
	var pids []int
	for _, ns := range namespaces {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err != nil {
			continue
		}
		out, err := exec.Command("ip", "netns", "pids", ns).Output()
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}
