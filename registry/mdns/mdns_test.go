package mdns_test

import (
	"bytes"
	"compress/zlib"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	hmdns "github.com/hashicorp/mdns"
	"go.uber.org/goleak"

	"github.com/beacon-go/beacon/internal/netns"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/mdns"
	"github.com/beacon-go/beacon/registry/registrytest"
)

type isolated struct{ m *testing.M }

func (i isolated) Run() int { return netns.RunIsolated(i.m) }

func TestMain(m *testing.M) {
	if os.Getenv(envHelper) != "" {
		// A node process started by the LAN test: no leak check, it exits
		// by signal or after its own Close.
		os.Exit(netns.RunIsolated(m))
	}
	goleak.VerifyTestMain(isolated{m})
}

// testLogger logs to the test at Debug level when -v, else Warn.
func testLogger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if testing.Verbose() {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: level}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

func newRegistry(t testing.TB, opts ...mdns.Option) *mdns.Registry {
	t.Helper()
	netns.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := mdns.New(ctx, append([]mdns.Option{mdns.WithLogger(testLogger(t))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestConformance(t *testing.T) {
	netns.Require(t)
	registrytest.Run(t, registrytest.Config{
		New: func(t *testing.T) (registry.Registry, error) {
			return mdns.New(context.Background(), mdns.WithLogger(testLogger(t)))
		},
		// 2 s, not 1: HeartbeatKeepsAlive needs a lookup to finish within
		// one TTL of the last heartbeat, which a loaded CI machine with
		// the race detector does not always manage in 1 s.
		TTL: 2 * time.Second,
	})
}

const envHelper = "BEACON_MDNS_HELPER"

// service returns a one-node service for tests.
func service(name, id, addr string) *registry.Service {
	return &registry.Service{
		Name: name, Version: "1.0.0",
		Metadata:  map[string]string{"k": "v"},
		Endpoints: []*registry.Endpoint{{Name: "Greeter.Hello"}},
		Nodes:     []*registry.Node{{ID: id, Address: addr, Metadata: map[string]string{"zone": "a"}}},
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// TestTwoRegistries: what one Registry registers, another sees at once,
// and a deregistration (goodbye) is a Delete event within milliseconds.
func TestTwoRegistries(t *testing.T) {
	a, b := newRegistry(t), newRegistry(t)
	defer a.Close()
	defer b.Close()
	ev := registrytest.Watch(t, b, registry.WatchService("two"))
	s := service("two", "two-1", "127.0.0.1:9000")
	start := time.Now()
	if err := a.Register(ctxT(t), s, registry.RegisterTTL(30*time.Second)); err != nil {
		t.Fatal(err)
	}
	created := ev.Expect(t, 5*time.Second, registry.Create, "two-1")
	got, err := b.GetService(ctxT(t), "two")
	if err != nil || len(got) != 1 || got[0].Nodes[0].Address != "127.0.0.1:9000" {
		t.Fatalf("GetService = %v, %v", got, err)
	}
	stop := time.Now()
	if err := a.Deregister(ctxT(t), s); err != nil {
		t.Fatal(err)
	}
	deleted := ev.Expect(t, 5*time.Second, registry.Delete, "two-1")
	t.Logf("register -> create event %v; deregister -> delete event %v",
		created.Timestamp.Sub(start), deleted.Timestamp.Sub(stop))
	if _, err := b.GetService(ctxT(t), "two"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("GetService after goodbye = %v, want ErrNotFound", err)
	}
}

// TestSilentDisappearance: a node whose registry stops without a goodbye
// (Close, as after a crash) is dropped by watchers within the documented
// bound: missed × interval (+10% jitter) + interval/2.
func TestSilentDisappearance(t *testing.T) {
	const interval = 200 * time.Millisecond
	a := newRegistry(t)
	b := newRegistry(t, mdns.WithQueryInterval(interval))
	defer b.Close()
	ev := registrytest.Watch(t, b, registry.WatchService("silent"))
	if err := a.Register(ctxT(t), service("silent", "silent-1", "127.0.0.1:9000")); err != nil {
		t.Fatal(err)
	}
	ev.Expect(t, 5*time.Second, registry.Create, "silent-1")
	a.Close()
	gone := time.Now()
	bound := time.Duration(mdns.DefaultMissedQueries)*interval*11/10 + interval/2
	del := ev.Expect(t, bound+time.Second, registry.Delete, "silent-1")
	took := del.Timestamp.Sub(gone)
	t.Logf("silent node dropped after %v (bound %v with interval %v)", took, bound, interval)
	if took > bound+time.Second { // slack for a loaded machine
		t.Errorf("dropped after %v, documented bound %v", took, bound)
	}
}

func TestListServicesMany(t *testing.T) {
	r := newRegistry(t)
	defer r.Close()
	var want []string
	for i := range 40 { // more than one query packet's worth of questions
		name := fmt.Sprintf("many-%02d", i)
		want = append(want, name)
		if err := r.Register(ctxT(t), service(name, name+"-n", "127.0.0.1:9000")); err != nil {
			t.Fatal(err)
		}
	}
	registrytest.Eventually(t, 5*time.Second, func() error {
		list, err := r.ListServices(ctxT(t))
		if err != nil {
			return err
		}
		var got []string
		for _, s := range list {
			if strings.HasPrefix(s.Name, "many-") {
				got = append(got, s.Name)
				if len(s.Nodes) != 1 {
					return fmt.Errorf("%s has %d nodes", s.Name, len(s.Nodes))
				}
			}
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("got %d services %v", len(got), got)
		}
		return nil
	})
}

func TestLookupContext(t *testing.T) {
	r := newRegistry(t, mdns.WithLookupTimeout(300*time.Millisecond))
	defer r.Close()
	// Nothing answers: the lookup timeout is the cost of ErrNotFound.
	start := time.Now()
	if _, err := r.GetService(ctxT(t), "nobody"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("GetService(nobody) = %v", err)
	}
	t.Logf("ErrNotFound after %v (lookup timeout 300ms)", time.Since(start))
	// A shorter ctx wins.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	start = time.Now()
	if _, err := r.GetService(ctx, "nobody"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("GetService with a 20ms ctx = %v", err)
	}
	if took := time.Since(start); took > time.Second { // the lookup timeout is 300ms
		t.Errorf("GetService returned %v after its 20ms ctx", took)
	}
	// A canceled ctx fails at once.
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if _, err := r.ListServices(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("ListServices(canceled) = %v", err)
	}
	if err := r.Register(ctx, service("x", "x", "127.0.0.1:1")); !errors.Is(err, context.Canceled) {
		t.Errorf("Register(canceled) = %v", err)
	}
	if _, err := r.Watch(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Watch(canceled) = %v", err)
	}
}

func TestNewErrors(t *testing.T) {
	netns.Require(t)
	cases := []struct {
		name string
		opts []mdns.Option
		want error
	}{
		{"no such interface", []mdns.Option{mdns.WithInterfaceName("nope0")}, registry.ErrUnavailable},
		{"bad advertised address", []mdns.Option{mdns.WithAddrs("not-an-ip")}, registry.ErrInvalid},
		{"bad domain", []mdns.Option{mdns.WithDomain("a..b")}, registry.ErrInvalid},
		{"no IP family", []mdns.Option{mdns.WithIPv4(false)}, registry.ErrUnavailable},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, err := mdns.New(ctxT(t), tc.opts...)
			if !errors.Is(err, tc.want) {
				if r != nil {
					r.Close()
				}
				t.Fatalf("New = %v, want %v", err, tc.want)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := mdns.New(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("New(canceled) = %v", err)
	}
}

// TestDomains: registries in different domains do not see each other.
func TestDomains(t *testing.T) {
	a := newRegistry(t, mdns.WithDomain("beacon-a"))
	b := newRegistry(t, mdns.WithDomain("beacon-b."))
	defer a.Close()
	defer b.Close()
	if err := a.Register(ctxT(t), service("dom", "dom-1", "127.0.0.1:9000")); err != nil {
		t.Fatal(err)
	}
	registrytest.Eventually(t, 5*time.Second, func() error {
		_, err := a.GetService(ctxT(t), "dom")
		return err
	})
	if got, err := b.GetService(ctxT(t), "dom"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("other domain sees %v, %v", got, err)
	}
}

// TestLocalLookupLatency measures GetService with 10 nodes answering in the
// same namespace (the LAN test measures it between hosts).
func TestLocalLookupLatency(t *testing.T) {
	r := newRegistry(t)
	defer r.Close()
	for i := range 10 {
		if err := r.Register(ctxT(t), service("lat", fmt.Sprintf("lat-%d", i), fmt.Sprintf("127.0.0.1:%d", 9000+i))); err != nil {
			t.Fatal(err)
		}
	}
	var ds []time.Duration
	complete := 0
	for range 100 {
		start := time.Now()
		got, err := r.GetService(ctxT(t), "lat")
		ds = append(ds, time.Since(start))
		if err == nil && len(got[0].Nodes) == 10 {
			complete++
		}
	}
	t.Logf("GetService, 10 local nodes, 100 lookups: p50 %v p90 %v max %v; %d/100 complete",
		percentile(ds, .5), percentile(ds, .9), percentile(ds, 1), complete)
	if complete == 0 {
		t.Error("no lookup found all 10 nodes")
	}
}

// TestGoMicroInterop: go-micro's reader (hashicorp/mdns's client plus
// go-micro's decoding) sees our nodes, and we see nodes registered the way
// go-micro does.
func TestGoMicroInterop(t *testing.T) {
	r := newRegistry(t, mdns.WithAddrs("10.1.2.3"))
	defer r.Close()
	if err := r.Register(ctxT(t), service("interop", "ours-1", "127.0.0.1:9100")); err != nil {
		t.Fatal(err)
	}
	if err := r.Register(ctxT(t), service("interop", "named-1", "backend.example:9200")); err != nil {
		t.Fatal(err)
	}
	// go-micro's GetService: hashicorp/mdns Query, then decode the TXT.
	entries := make(chan *hmdns.ServiceEntry, 64)
	err := hmdns.Query(&hmdns.QueryParam{Service: "interop", Domain: "micro", Timeout: 200 * time.Millisecond,
		Entries: entries, DisableIPv6: true, Logger: log.New(io.Discard, "", 0)})
	if err != nil {
		t.Fatal(err)
	}
	close(entries)
	seen := map[string]string{}
	for e := range entries {
		b, err := hex.DecodeString(strings.Join(e.InfoFields, ""))
		if err != nil {
			t.Fatal(err)
		}
		zr, err := zlib.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		js, _ := io.ReadAll(zr)
		var txt struct { // go-micro's mdnsTxt
			Service   string
			Version   string
			Endpoints []*registry.Endpoint
			Metadata  map[string]string
		}
		if err := json.Unmarshal(js, &txt); err != nil {
			t.Fatal(err)
		}
		if txt.Service != "interop" || txt.Version != "1.0.0" || len(txt.Endpoints) != 1 {
			t.Errorf("go-micro reads %+v", txt)
		}
		id := strings.TrimSuffix(e.Name, ".interop.micro.")
		seen[id] = net.JoinHostPort(e.AddrV4.String(), fmt.Sprint(e.Port))
	}
	if seen["ours-1"] != "127.0.0.1:9100" || seen["named-1"] != "10.1.2.3:9200" {
		t.Errorf("go-micro sees %v", seen)
	}

	// A node registered like go-micro does: hashicorp/mdns responder with
	// go-micro's TXT, and its "_services" wildcard.
	gm := registrytest.Service(&registrytest.Config{Address: func(int) string { return "" }}, "gomicro.svc", "latest", 0, 1)
	js, _ := json.Marshal(struct {
		Service   string
		Version   string
		Endpoints []*registry.Endpoint
		Metadata  map[string]string
	}{"gomicro.svc", "latest", gm.Endpoints, map[string]string{"broker": "http"}})
	var z bytes.Buffer
	zw := zlib.NewWriter(&z)
	zw.Write(js)
	zw.Close()
	h := hex.EncodeToString(z.Bytes())
	var txt []string
	for len(h) > 255 {
		txt, h = append(txt, h[:255]), h[255:]
	}
	txt = append(txt, h)
	nodeSvc, err := hmdns.NewMDNSService("gomicro.svc-4a5b", "gomicro.svc", "micro.", "gm-host.", 41000, []net.IP{net.IPv4(127, 0, 0, 1)}, txt)
	if err != nil {
		t.Fatal(err)
	}
	wild, err := hmdns.NewMDNSService("gomicro.svc", "_services", "micro.", "gm-host.", 9999, []net.IP{net.IPv4zero}, nil)
	if err != nil {
		t.Fatal(err)
	}
	quiet := log.New(io.Discard, "", 0)
	for _, z := range []hmdns.Zone{nodeSvc, wild} {
		srv, err := hmdns.NewServer(&hmdns.Config{Zone: z, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Shutdown()
	}
	registrytest.Eventually(t, 5*time.Second, func() error {
		got, err := r.GetService(ctxT(t), "gomicro.svc")
		if err != nil {
			return err
		}
		n := got[0].Nodes[0]
		if got[0].Version != "latest" || n.ID != "gomicro.svc-4a5b" || n.Address != "127.0.0.1:41000" || n.Metadata["broker"] != "http" {
			return fmt.Errorf("go-micro node read as %+v %+v", got[0], n)
		}
		list, err := r.ListServices(ctxT(t))
		if err != nil {
			return err
		}
		if !slices.ContainsFunc(list, func(s *registry.Service) bool { return s.Name == "gomicro.svc" }) {
			return fmt.Errorf("ListServices misses go-micro's service: %v", list)
		}
		return nil
	})
}

// BenchmarkGetService: one lookup answered by 10 nodes in the same
// namespace.
func BenchmarkGetService(b *testing.B) {
	r := newRegistry(b)
	defer r.Close()
	for i := range 10 {
		if err := r.Register(ctxT(b), service("bench", fmt.Sprintf("bench-%d", i), fmt.Sprintf("127.0.0.1:%d", 9000+i))); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := r.GetService(ctxT(b), "bench"); err != nil { // learn whom to expect
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := r.GetService(context.Background(), "bench"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHeartbeat: Register of unchanged data.
func BenchmarkHeartbeat(b *testing.B) {
	r := newRegistry(b)
	defer r.Close()
	s := service("beat", "beat-1", "127.0.0.1:9000")
	if err := r.Register(ctxT(b), s); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := r.Register(context.Background(), s); err != nil {
			b.Fatal(err)
		}
	}
}
