package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/beacon-go/beacon/beacongrpc"
	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/examples/greeter"
	"github.com/beacon-go/beacon/internal/netns"
	"github.com/beacon-go/beacon/registry/mdns"
	"github.com/beacon-go/beacon/selector"
)

const probeEnv = "BEACON_E2E_PROBE"

// binDir holds the programs built once per test run.
var binDir string

func TestMain(m *testing.M) {
	if os.Getenv(probeEnv) == "1" {
		os.Exit(probe())
	}
	// Beacon's gRPC balancers go into grpc-go's global table before any
	// gRPC client (etcd's included) exists.
	beacongrpc.RegisterBalancers()
	code := netns.RunIsolated(m)
	if code == 0 {
		// No goroutine of the in-process selectors and clients survives.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// build compiles the greeter server and the beacon CLI once.
var build = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "beacon-e2e-bin")
	if err != nil {
		return "", err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	for name, pkg := range map[string]string{"greeter-server": "../../examples/greeter/server", "beacon": "../../cmd/beacon"} {
		cmd := exec.Command(goBin, "build", "-o", filepath.Join(dir, name), pkg)
		cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	return dir, nil
})

// probe runs in a lab host: it calls greeter by name every 20 ms and reports
// each call and every change of the selector's node set as JSON lines on
// stdout, until stdin closes.
func probe() int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { io.Copy(io.Discard, os.Stdin); cancel() }()
	reg, err := mdns.New(ctx, mdns.WithLogger(log))
	if err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		return 1
	}
	defer reg.Close()
	sel := selector.New(reg, selector.WithLogger(log))
	defer sel.Close()
	cli := client.New(sel, client.Retries(2), client.RequestTimeout(time.Second), client.Logger(log))
	defer cli.Close()
	enc := json.NewEncoder(os.Stdout)
	var last string
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return 0
		case <-t.C:
		}
		rsp := new(greeter.HelloRsp)
		cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
		err := cli.Call(cctx, "greeter", "Greeter.Hello", &greeter.HelloReq{Name: "probe"}, rsp)
		ccancel()
		ev := probeEvent{Kind: "call", T: time.Now().UnixNano(), Node: rsp.Node}
		if err != nil {
			if ctx.Err() != nil {
				return 0
			}
			ev.Err = err.Error()
		}
		enc.Encode(ev)
		if e, err := sel.Cache().Entry(ctx, "greeter"); err == nil {
			var addrs []string
			for _, n := range e.Snapshot().Nodes {
				addrs = append(addrs, n.Address)
			}
			slices.Sort(addrs)
			if s := strings.Join(addrs, ","); s != last {
				last = s
				enc.Encode(probeEvent{Kind: "nodes", T: time.Now().UnixNano(), Nodes: addrs})
			}
		}
	}
}

type probeEvent struct {
	Kind  string   `json:"kind"`
	T     int64    `json:"t"`
	Node  string   `json:"node,omitempty"`
	Err   string   `json:"err,omitempty"`
	Nodes []string `json:"nodes,omitempty"`
}

// events collects a probe's output.
type events struct {
	mu  sync.Mutex
	all []probeEvent
	ch  chan struct{}
}

func (e *events) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var ev probeEvent
		if json.Unmarshal(sc.Bytes(), &ev) == nil {
			e.mu.Lock()
			e.all = append(e.all, ev)
			e.mu.Unlock()
		}
	}
	close(e.ch)
}

// wait polls until cond holds on the events so far.
func (e *events) wait(t *testing.T, d time.Duration, what string, cond func([]probeEvent) bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		e.mu.Lock()
		ok := cond(e.all)
		e.mu.Unlock()
		if ok {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("probe: %s not seen within %v", what, d)
}

func (e *events) since(t0 int64) []probeEvent {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []probeEvent
	for _, ev := range e.all {
		if ev.T >= t0 {
			out = append(out, ev)
		}
	}
	return out
}

func hasNode(evs []probeEvent, ip string) (bool, bool) {
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Kind == "nodes" {
			for _, a := range evs[i].Nodes {
				if strings.HasPrefix(a, ip+":") {
					return true, true
				}
			}
			return false, true
		}
	}
	return false, false
}

// firstWithout returns the time of the first node-set event after t0 that
// lacks ip.
func firstWithout(evs []probeEvent, t0 int64, ip string) (int64, bool) {
	for _, ev := range evs {
		if ev.Kind != "nodes" || ev.T < t0 {
			continue
		}
		present := false
		for _, a := range ev.Nodes {
			present = present || strings.HasPrefix(a, ip+":")
		}
		if !present {
			return ev.T, true
		}
	}
	return 0, false
}

// crashBound is the documented time within which a watcher drops a node
// that died without a goodbye (mdns defaults: 3 missed 1 s query rounds plus
// half an interval, 3.8 s with the rounds' jitter), plus scheduling slack
// for a loaded 2-core machine.
const crashBound = 3800*time.Millisecond + 700*time.Millisecond

func startGreeter(t *testing.T, lab *netns.Lab, bin string, host int, node string) *exec.Cmd {
	t.Helper()
	return start(t, lab.Command(host, filepath.Join(bin, "greeter-server"), "--node", node), node)
}

// start starts cmd with its output in a log file that is printed if the
// test fails; the process is killed and reaped at cleanup.
func start(t *testing.T, cmd *exec.Cmd, name string) *exec.Cmd {
	t.Helper()
	logf, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
		if t.Failed() {
			out, _ := os.ReadFile(logf.Name())
			t.Logf("%s log:\n%s", name, out)
		}
	})
	return cmd
}

func TestGreeterAcrossLAN(t *testing.T) {
	lab := netns.RequireLab(t, 3)
	bin, err := build()
	if err != nil {
		t.Fatal(err)
	}
	ip := func(i int) string { return lab.IP(i).String() }
	h1 := startGreeter(t, lab, bin, 0, "h1")
	startGreeter(t, lab, bin, 1, "h2")

	self, _ := os.Executable()
	pr := lab.Command(2, self, "-test.run=^$")
	pr.Env = append(os.Environ(), probeEnv+"=1")
	stdin, _ := pr.StdinPipe()
	stdout, _ := pr.StdoutPipe()
	pr.Stderr = os.Stderr
	if err := pr.Start(); err != nil {
		t.Fatal(err)
	}
	ev := &events{ch: make(chan struct{})}
	go ev.read(stdout)
	defer func() { stdin.Close(); <-ev.ch; pr.Wait() }()

	// Both nodes are found and round-robin reaches both hosts.
	ev.wait(t, 15*time.Second, "calls answered by h1 and h2", func(all []probeEvent) bool {
		got := map[string]bool{}
		for _, e := range all {
			if e.Kind == "call" && e.Err == "" {
				got[e.Node] = true
			}
		}
		return got["h1"] && got["h2"]
	})
	ev.wait(t, 5*time.Second, "both nodes in the selector", func(all []probeEvent) bool {
		a, _ := hasNode(all, ip(0))
		b, _ := hasNode(all, ip(1))
		return a && b
	})

	t.Run("CLI", func(t *testing.T) { testCLI(t, lab, bin) })

	// A clean stop: gone from the client's selector within 1 s, no failed call.
	t0 := time.Now().UnixNano()
	if err := h1.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ev.wait(t, 5*time.Second, "h1 dropped after SIGTERM", func(all []probeEvent) bool {
		_, ok := firstWithout(all, t0, ip(0))
		return ok
	})
	tDrop, _ := firstWithout(ev.since(t0), t0, ip(0))
	clean := time.Duration(tDrop - t0)
	t.Logf("clean stop: node left the remote selector %v after SIGTERM", clean)
	if clean > time.Second {
		t.Errorf("cleanly stopped node still in the selector after %v, want within 1 s", clean)
	}
	h1.Wait()

	// A crash: SIGKILL, no goodbye.
	h1b := startGreeter(t, lab, bin, 0, "h1b")
	ev.wait(t, 15*time.Second, "h1b answering", func(all []probeEvent) bool {
		for _, e := range all {
			if e.Kind == "call" && e.Node == "h1b" {
				return true
			}
		}
		return false
	})
	t1 := time.Now().UnixNano()
	if err := h1b.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	ev.wait(t, 10*time.Second, "h1b dropped after SIGKILL", func(all []probeEvent) bool {
		_, ok := firstWithout(all, t1, ip(0))
		return ok
	})
	tCrash, _ := firstWithout(ev.since(t1), t1, ip(0))
	crash := time.Duration(tCrash - t1)
	t.Logf("crash: node left the remote selector %v after SIGKILL (bound %v)", crash, crashBound)
	if crash > crashBound {
		t.Errorf("crashed node still in the selector after %v, want within %v", crash, crashBound)
	}
	// Let a few more calls run against the one healthy node.
	tEnd := time.Now().UnixNano()
	ev.wait(t, 5*time.Second, "calls after the crash", func(all []probeEvent) bool {
		n := 0
		for _, e := range all {
			if e.Kind == "call" && e.T > tEnd {
				n++
			}
		}
		return n >= 20
	})
	calls, failed := 0, 0
	for _, e := range ev.since(0) {
		if e.Kind == "call" {
			calls++
			if e.Err != "" {
				failed++
				t.Errorf("call failed while a healthy node remained: %s", e.Err)
			}
		}
	}
	t.Logf("%d calls by name across the LAN, %d failed", calls, failed)
}

func testCLI(t *testing.T, lab *netns.Lab, bin string) {
	beacon := func(args ...string) (string, error) {
		cmd := lab.Command(2, filepath.Join(bin, "beacon"), args...)
		out, err := cmd.Output()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), fmt.Errorf("%v: %s", err, ee.Stderr)
		}
		return string(out), err
	}
	out, err := beacon("services")
	if err != nil || !strings.Contains(out, "greeter") || !strings.Contains(out, "1.0.0") {
		t.Fatalf("beacon services: %v\n%s", err, out)
	}
	t.Logf("beacon services:\n%s", out)
	out, err = beacon("--json", "services")
	var rows []struct {
		Name  string `json:"name"`
		Nodes int    `json:"nodes"`
	}
	if err != nil || json.Unmarshal([]byte(out), &rows) != nil || len(rows) != 1 || rows[0].Nodes != 2 {
		t.Fatalf("beacon --json services: %v %q", err, out)
	}
	out, err = beacon("describe", "greeter")
	if err != nil || !strings.Contains(out, lab.IP(0).String()+":") || !strings.Contains(out, lab.IP(1).String()+":") ||
		!strings.Contains(out, "Greeter.Hello") {
		t.Fatalf("beacon describe: %v\n%s", err, out)
	}
	out, err = beacon("call", "greeter", "Greeter.Hello", `{"name":"Ann"}`)
	if err != nil || !strings.Contains(out, "Hello Ann") {
		t.Fatalf("beacon call: %v\n%s", err, out)
	}
	if _, err := beacon("call", "greeter", "Greeter.Hello", `{"name":""}`); err == nil {
		t.Fatal("beacon call with a handler error exited 0")
	}
	// watch: a late watcher learns what is there.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w := lab.Command(2, filepath.Join(bin, "beacon"), "watch", "greeter")
	wout, _ := w.StdoutPipe()
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(wout)
	creates := 0
	for creates < 2 && ctx.Err() == nil && sc.Scan() {
		if strings.Contains(sc.Text(), "create") {
			creates++
		}
	}
	w.Process.Signal(syscall.SIGINT)
	io.Copy(io.Discard, wout)
	w.Wait()
	if creates < 2 {
		t.Fatalf("beacon watch reported %d creates, want 2", creates)
	}
}
