package gomicro

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	gmlogger "go-micro.dev/v5/logger"
	gmreg "go-micro.dev/v5/registry"

	"github.com/beacon-go/beacon/internal/netns"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/mdns"
)

// The processes of the tests: the test binary re-executed in a lab host
// with envRole set. Each reads commands on stdin and reports on stdout, one
// line each.
const (
	envRole    = "BEACON_INTEROP_ROLE" // gomicro-node, gomicro-observer, beacon-node
	envService = "BEACON_INTEROP_SERVICE"
	envNode    = "BEACON_INTEROP_NODE"
	envTTL     = "BEACON_INTEROP_TTL" // beacon-node: register TTL
	envKey     = "BEACON_INTEROP_KEY" // beacon-node: signing key
)

func TestMain(m *testing.M) {
	if role := os.Getenv(envRole); role != "" {
		os.Exit(runRole(role))
	}
	os.Exit(netns.RunIsolated(m))
}

func runRole(role string) int {
	// Only ever in a namespace of a lab (made by the test in its own
	// private namespace).
	if priv, err := netns.InPrivate(); !priv {
		fmt.Fprintf(os.Stderr, "%s: not in a private network namespace (%v): refusing to multicast\n", role, err)
		return 2
	}
	svc, id := os.Getenv(envService), os.Getenv(envNode)
	addr := net.JoinHostPort(os.Getenv(netns.EnvLabIP), "8080")
	gmlogger.DefaultLogger = gmlogger.NewLogger(gmlogger.WithOutput(os.Stderr), gmlogger.WithLevel(gmlogger.WarnLevel))
	var err error
	switch role {
	case "gomicro-node":
		err = goMicroNode(svc, id, addr)
	case "gomicro-observer":
		err = goMicroObserver(svc)
	case "beacon-node":
		err = beaconNode(svc, id, addr)
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", role, err)
		return 1
	}
	return 0
}

func say(format string, args ...any) { fmt.Printf(format+"\n", args...) }

// goMicroNode registers one node with go-micro's mdns registry and
// deregisters it on "stop".
func goMicroNode(svc, id, addr string) error {
	r := gmreg.NewMDNSRegistry()
	s := &gmreg.Service{Name: svc, Version: "2.0.0", Metadata: map[string]string{"svc": "level"},
		Endpoints: []*gmreg.Endpoint{{Name: "Say.Hello"}},
		Nodes:     []*gmreg.Node{{Id: id, Address: addr, Metadata: map[string]string{"zone": "gm"}}}}
	if err := r.Register(s); err != nil {
		return err
	}
	say("READY")
	waitFor("stop")
	say("STOP %d", time.Now().UnixNano())
	if err := r.Deregister(s); err != nil {
		return err
	}
	say("STOPPED")
	return nil
}

// observed is what the go-micro observer prints.
type observed struct {
	Action   string            `json:"action,omitempty"` // watch events
	Nodes    []observedNode    `json:"nodes"`
	Version  string            `json:"version,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"` // the service's, as go-micro reads it
	At       int64             `json:"at"`
	Err      string            `json:"err,omitempty"`
}

type observedNode struct {
	ID       string            `json:"id"`
	Address  string            `json:"address"`
	Metadata map[string]string `json:"metadata"`
}

func observe(s *gmreg.Service) observed {
	o := observed{Version: s.Version, Metadata: s.Metadata, At: time.Now().UnixNano()}
	for _, n := range s.Nodes {
		o.Nodes = append(o.Nodes, observedNode{ID: n.Id, Address: n.Address, Metadata: n.Metadata})
	}
	return o
}

func printJSON(prefix string, v any) {
	b, _ := json.Marshal(v)
	say("%s %s", prefix, b)
}

// goMicroObserver watches svc with go-micro's registry ("EVENT {...}") and
// looks it up on "get" ("GOT {...}").
func goMicroObserver(svc string) error {
	r := gmreg.NewMDNSRegistry()
	w, err := r.Watch(gmreg.WatchService(svc))
	if err != nil {
		return err
	}
	go func() {
		for {
			res, err := w.Next()
			if err != nil {
				return
			}
			o := observe(res.Service)
			o.Action = res.Action
			printJSON("EVENT", o)
		}
	}()
	say("READY")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() == "list" {
			list, err := r.ListServices()
			var names []string
			for _, s := range list {
				names = append(names, s.Name)
			}
			if err != nil {
				names = append(names, "error: "+err.Error())
			}
			say("LIST %s", strings.Join(names, ","))
			continue
		}
		if sc.Text() != "get" {
			continue
		}
		got, err := r.GetService(svc)
		o := observed{At: time.Now().UnixNano()}
		if err != nil {
			o.Err = err.Error()
		}
		for _, s := range got {
			x := observe(s)
			o.Nodes = append(o.Nodes, x.Nodes...)
			o.Version = s.Version
		}
		printJSON("GOT", o)
	}
	w.Stop()
	return nil
}

// beaconNode registers one node with Beacon's mdns registry, heartbeats,
// stops heartbeating on "hang" (the registry then withdraws the node when
// its TTL runs out) and deregisters on "stop".
func beaconNode(svc, id, addr string) error {
	opts := []mdns.Option{mdns.WithInterfaceName(netns.LabIface),
		mdns.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))}
	if k := os.Getenv(envKey); k != "" {
		opts = append(opts, mdns.WithKey([]byte(k)))
	}
	ctx := context.Background()
	r, err := mdns.New(ctx, opts...)
	if err != nil {
		return err
	}
	defer r.Close()
	ttl, err := time.ParseDuration(os.Getenv(envTTL))
	if err != nil {
		ttl = 15 * time.Second
	}
	s := &registry.Service{Name: svc, Version: "1.0.0", Metadata: map[string]string{"svc": "level"},
		Endpoints: []*registry.Endpoint{{Name: "Greeter.Hello"}},
		Nodes:     []*registry.Node{{ID: id, Address: addr, Metadata: map[string]string{"zone": "a"}}}}
	if err := r.Register(ctx, s, registry.RegisterTTL(ttl)); err != nil {
		return err
	}
	say("READY")
	cmds := make(chan string)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			cmds <- sc.Text()
		}
		close(cmds)
	}()
	beat := time.NewTicker(ttl / 3)
	defer beat.Stop()
	beating := true
	for {
		select {
		case <-beat.C:
			if beating {
				if err := r.Register(ctx, s, registry.RegisterTTL(ttl)); err != nil {
					return err
				}
			}
		case c, ok := <-cmds:
			switch {
			case c == "hang":
				beating = false
				say("HUNG %d", time.Now().UnixNano())
			case c == "stop" || !ok:
				say("STOP %d", time.Now().UnixNano())
				if err := r.Deregister(ctx, s); err != nil {
					return err
				}
				say("STOPPED")
				return nil
			}
		}
	}
}

func waitFor(cmd string) {
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() && sc.Text() != cmd {
	}
}

// proc is a role process in a lab host.
type proc struct {
	name    string
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	lines   chan string
	pending []string // lines read while waiting for others
	done    chan error
	killed  bool // by the test: its exit status says nothing
	errMu   sync.Mutex
	errb    bytes.Buffer
}

func (p *proc) Write(b []byte) (int, error) {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	return p.errb.Write(b)
}

func (p *proc) stderr() string {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	return p.errb.String()
}

func start(t *testing.T, lab *netns.Lab, host int, role, svc, id string, env ...string) *proc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{name: role + "/" + id, lines: make(chan string, 64), done: make(chan error, 1)}
	p.cmd = lab.Command(host, exe, "-test.run=^$")
	p.cmd.Env = append(p.cmd.Env, append([]string{envRole + "=" + role, envService + "=" + svc, envNode + "=" + id}, env...)...)
	p.cmd.Stderr = p
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<16), 1<<20)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.done <- p.cmd.Wait()
	}()
	t.Cleanup(func() {
		p.stdin.Close()
		var err error
		select {
		case err = <-p.done:
		case <-time.After(5 * time.Second):
			p.cmd.Process.Kill()
			err = <-p.done
		}
		if err != nil && !p.killed {
			// With -race, a data race makes the process exit with 66.
			t.Errorf("%s: %v; stderr:\n%s", p.name, err, p.stderr())
		} else if t.Failed() {
			t.Logf("%s stderr:\n%s", p.name, p.stderr())
		}
	})
	p.expect(t, "READY", 30*time.Second)
	return p
}

func (p *proc) send(t *testing.T, line string) {
	t.Helper()
	if _, err := fmt.Fprintln(p.stdin, line); err != nil {
		t.Fatalf("%s: %v", p.name, err)
	}
}

// expect waits for a line starting with prefix and returns the rest. Other
// lines are kept for later expects.
func (p *proc) expect(t *testing.T, prefix string, d time.Duration) string {
	t.Helper()
	for i, l := range p.pending {
		if rest, found := strings.CutPrefix(l, prefix); found {
			p.pending = append(p.pending[:i], p.pending[i+1:]...)
			return strings.TrimSpace(rest)
		}
	}
	timeout := time.After(d)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("%s exited before %q; stderr:\n%s", p.name, prefix, p.stderr())
			}
			if rest, found := strings.CutPrefix(l, prefix); found {
				return strings.TrimSpace(rest)
			}
			p.pending = append(p.pending, l)
		case <-timeout:
			t.Fatalf("%s: no %q within %v; stderr:\n%s", p.name, prefix, d, p.stderr())
		}
	}
}

func (p *proc) expectTime(t *testing.T, prefix string) time.Time {
	t.Helper()
	var ns int64
	if _, err := fmt.Sscan(p.expect(t, prefix, 10*time.Second), &ns); err != nil {
		t.Fatal(err)
	}
	return time.Unix(0, ns)
}

// event waits for the observer's next watch event matching action and node
// ID; other events are skipped.
func (p *proc) event(t *testing.T, action, id string, d time.Duration) observed {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			t.Fatalf("go-micro's watcher: no %s of %s within %v", action, id, d)
		}
		var o observed
		if err := json.Unmarshal([]byte(p.expect(t, "EVENT ", left)), &o); err != nil {
			t.Fatal(err)
		}
		if o.Action == action && len(o.Nodes) == 1 && o.Nodes[0].ID == id {
			return o
		}
	}
}

// get asks the go-micro observer for GetService.
func (p *proc) get(t *testing.T) observed {
	t.Helper()
	p.send(t, "get")
	var o observed
	if err := json.Unmarshal([]byte(p.expect(t, "GOT ", 10*time.Second)), &o); err != nil {
		t.Fatal(err)
	}
	return o
}

// kill SIGKILLs the process and waits for it.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	p.killed = true
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := <-p.done
	p.done <- err
}

// list asks the go-micro observer for ListServices: the names.
func (p *proc) list(t *testing.T) []string {
	t.Helper()
	p.send(t, "list")
	return strings.Split(p.expect(t, "LIST ", 10*time.Second), ",")
}
