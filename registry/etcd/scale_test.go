package etcd

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/cache"
	"github.com/beacon-go/beacon/registry/registrytest"
)

// scaleService returns service i of the scale measurements in the shape
// go-micro services register: service metadata, two endpoints with request
// and response shapes, nodes with go-micro's node metadata.
func scaleService(i, nodes int) *registry.Service {
	name := fmt.Sprintf("svc-%05d", i)
	str := func(n string) *registry.Value { return &registry.Value{Name: n, Type: "string"} }
	s := &registry.Service{Name: name, Version: "1.4.2", Metadata: map[string]string{"team": "platform", "tier": "backend"},
		Endpoints: []*registry.Endpoint{
			{Name: "Store.Get", Request: &registry.Value{Name: "GetRequest", Type: "GetRequest", Values: []*registry.Value{str("id")}},
				Response: &registry.Value{Name: "GetResponse", Type: "GetResponse", Values: []*registry.Value{str("id"), str("value"), str("etag")}},
				Metadata: map[string]string{"idempotent": "true"}},
			{Name: "Store.Put", Request: &registry.Value{Name: "PutRequest", Type: "PutRequest", Values: []*registry.Value{str("id"), str("value")}},
				Response: &registry.Value{Name: "PutResponse", Type: "PutResponse", Values: []*registry.Value{str("etag")}}},
		}}
	for j := range nodes {
		s.Nodes = append(s.Nodes, scaleNode(i, j, 0))
	}
	return s
}

func scaleNode(i, j, gen int) *registry.Node {
	return &registry.Node{ID: fmt.Sprintf("svc-%05d-%08x-%d", i, uint32(i*7919+j*104729), j),
		Address:  fmt.Sprintf("10.%d.%d.%d:%d", i>>8&255, i&255, j, 8080+gen%1000),
		Metadata: map[string]string{"broker": "http", "protocol": "grpc", "registry": "etcd", "server": "grpc", "transport": "grpc"}}
}

// scaleLoad writes services x nodes keys in transactions of 100 puts, with
// 4 writers.
func scaleLoad(t testing.TB, cli *clientv3.Client, prefix string, services, nodes int) time.Duration {
	t.Helper()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var ops []clientv3.Op
			flush := func() error {
				if len(ops) == 0 {
					return nil
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				_, err := cli.Txn(ctx).Then(ops...).Commit()
				ops = ops[:0]
				return err
			}
			for i := w; i < services; i += 4 {
				s := scaleService(i, nodes)
				for _, n := range s.Nodes {
					one := *s
					one.Nodes = []*registry.Node{n}
					val, err := encode(&one)
					if err != nil {
						errs <- err
						return
					}
					ops = append(ops, clientv3.OpPut(nodeKey(prefix, s.Name, n.ID), string(val)))
					if len(ops) == 100 {
						if err := flush(); err != nil {
							errs <- err
							return
						}
					}
				}
			}
			if err := flush(); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return time.Since(start)
}

// heapAndStacks is the memory that a program's data and goroutines use.
func heapAndStacks() (heap, stacks uint64, goroutines int) {
	for range 2 {
		runtime.GC()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc, ms.StackInuse, runtime.NumGoroutine()
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU returns the CPU time of another process (etcd) from /proc.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which is in parentheses).
	s := string(b)
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == ')' {
			s = s[i+2:]
			break
		}
	}
	var fields []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ' ' {
			fields = append(fields, s[start:i])
			start = i + 1
		}
	}
	if len(fields) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(fields[11], 10, 64)
	st, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ = 100
}

// Issue 13 item 8: 10,000 services x 10 nodes in a real etcd. Figures for
// the README; run without -race:
//
//	BEACON_MEASURE=1 go test -run TestMeasureScale -v -timeout 20m ./registry/etcd
func TestMeasureScale(t *testing.T) {
	if os.Getenv("BEACON_MEASURE") != "1" {
		t.Skip("set BEACON_MEASURE=1 to measure (loads 100,000 keys into etcd)")
	}
	services, nodes := 10_000, 10
	if os.Getenv("BEACON_SCALE_HEAPPROFILE") != "" {
		runtime.MemProfileRate = 1
	}
	if v, err := strconv.Atoi(os.Getenv("BEACON_SCALE_SERVICES")); err == nil && v > 0 {
		services = v
	}
	total := services * nodes
	prefix := testPrefix(t)
	cli := rawClient(t)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cli.Delete(ctx, prefix, clientv3.WithPrefix())
	})
	load := scaleLoad(t, cli, prefix, services, nodes)
	val, _ := encode(&registry.Service{Name: "svc-00000", Version: "1.4.2", Metadata: scaleService(0, 1).Metadata,
		Endpoints: scaleService(0, 1).Endpoints, Nodes: []*registry.Node{scaleNode(0, 0, 0)}})
	t.Logf("loaded %d services x %d nodes = %d keys of %d bytes of JSON each in %v (txns of 100 puts, 4 writers)",
		services, nodes, total, len(val), load.Round(time.Millisecond))

	// A logger that counts warnings and keeps nothing (a test's logBuf
	// would keep every line, and count as the cache's memory).
	var warns atomic.Int64
	logger := slog.New(countWarns{&warns})
	r, err := New(context.Background(), WithAddrs(shared.Endpoints()...), WithPrefix(prefix), WithLogger(logger))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	bg, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	ctx := func() context.Context { return bg }

	// ListServices and GetService.
	var took []time.Duration
	for range 3 {
		start := time.Now()
		list, err := r.ListServices(ctx())
		took = append(took, time.Since(start))
		if err != nil || len(list) != services {
			t.Fatalf("ListServices: %d services, %v", len(list), err)
		}
	}
	listMem := measureMem(func() { r.ListServices(ctx()) })
	t.Logf("ListServices of %d nodes: %s; while it runs (GC at 20%%): %v", total, percentiles(took), listMem)
	var get []time.Duration
	for i := range 200 {
		start := time.Now()
		if _, err := r.GetService(ctx(), fmt.Sprintf("svc-%05d", i*7919%services)); err != nil {
			t.Fatal(err)
		}
		get = append(get, time.Since(start))
	}
	t.Logf("GetService (10 nodes) among %d keys: %s", total, percentiles(get))

	lookups := func(f func(name string)) {
		var wg sync.WaitGroup
		work := make(chan int)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range work {
					f(fmt.Sprintf("svc-%05d", i))
				}
			}()
		}
		for i := range services {
			work <- i
		}
		close(work)
		wg.Wait()
	}

	// The etcd side of a cache: a WatchService watch per service, alone.
	h0, s0, g0 := heapAndStacks()
	var (
		mu      sync.Mutex
		watches []registry.Watcher
	)
	start := time.Now()
	lookups(func(name string) {
		w, err := r.Watch(ctx(), registry.WatchService(name))
		if err != nil {
			t.Error(err)
			return
		}
		for range nodes {
			if _, err := w.Next(); err != nil {
				t.Error(err)
			}
		}
		mu.Lock()
		watches = append(watches, w)
		mu.Unlock()
	})
	took1 := time.Since(start)
	h1, s1, g1 := heapAndStacks()
	t.Logf("%d WatchService watches alone: opened in %v; heap +%.1f MiB, stacks +%.1f MiB, +%d goroutines: %.0f B of heap and %.0f B of stacks per service",
		len(watches), took1.Round(time.Millisecond), mib(h1-h0), mib(s1-s0), g1-g0, per(h1-h0, services), per(s1-s0, services))
	for _, w := range watches {
		w.Stop()
	}
	watches = nil
	time.Sleep(time.Second)

	// A cache holding every service.
	h0, s0, g0 = heapAndStacks()
	var created atomic.Int64
	c := cache.New(r, cache.WithRefreshInterval(time.Hour), cache.WithLogger(logger),
		cache.OnEvent(func(string, registry.EventType) { created.Add(1) }))
	defer c.Close()
	start = time.Now()
	lookups(func(name string) {
		if _, err := c.Entry(ctx(), name); err != nil {
			t.Error(err)
		}
	})
	fill := time.Since(start)
	// Each entry's watch opens in the background: wait until every watch
	// has delivered its initial events.
	for deadline := time.Now().Add(5 * time.Minute); created.Load() < int64(total); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d initial events from the cache's watches", created.Load())
		}
	}
	fillAll := time.Since(start)
	time.Sleep(time.Second)
	h2, s2, g2 := heapAndStacks()
	if p := os.Getenv("BEACON_SCALE_HEAPPROFILE"); p != "" {
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		pprof.WriteHeapProfile(f)
		f.Close()
	}
	t.Logf("cache of all %d services: first lookups %v, all watches open %v; heap +%.1f MiB, stacks +%.1f MiB, +%d goroutines",
		services, fill.Round(time.Millisecond), fillAll.Round(time.Millisecond), mib(h2-h0), mib(s2-s0), g2-g0)
	t.Logf("  per node: %.0f B of heap + %.0f B of stacks = %.0f B (the etcd watches alone: %.0f + %.0f B; the rest, the cache's own: %.0f B of heap)",
		per(h2-h0, total), per(s2-s0, total), per(h2-h0+s2-s0, total), per(h1-h0, total), per(s1-s0, total), per(h2-h0-(h1-h0), total))

	// A registry-wide watch as well.
	start = time.Now()
	w, err := r.Watch(ctx())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	for i := range total {
		if _, err := nextWithin(t, w, 30*time.Second); err != nil {
			t.Logf("registry-wide Watch failed after %d of %d initial events: %v", i, total, err)
			w = nil
			break
		}
	}
	if w != nil {
		took3 := time.Since(start)
		h3, _, _ := heapAndStacks()
		t.Logf("registry-wide Watch: initial %d Create events in %v; heap +%.1f MiB (%.0f B per node)",
			total, took3.Round(time.Millisecond), mib(h3-h2), per(h3-h2, total))
	}

	// Changes: one node's record rewritten with a new address; time until
	// the cache's snapshot has it and until the registry-wide watch
	// delivers it.
	type arrival struct {
		id   string
		addr string
		at   time.Time
	}
	arrivals := make(chan arrival, 4096)
	go func() {
		if w == nil {
			close(arrivals)
			return
		}
		for {
			ev, err := w.Next()
			if err != nil {
				close(arrivals)
				return
			}
			arrivals <- arrival{ev.Service.Nodes[0].ID, ev.Service.Nodes[0].Address, time.Now()}
		}
	}()
	awaitWatch := func(n *registry.Node) time.Time {
		for a := range arrivals {
			if a.id == n.ID && a.addr == n.Address {
				return a.at
			}
		}
		t.Fatal("the registry-wide watch ended")
		return time.Time{}
	}
	const changes = 500
	put := func(k, gen int) (string, *registry.Node) {
		i := k * 7919 % services
		n := scaleNode(i, k%nodes, gen)
		s := scaleService(i, 0)
		s.Nodes = []*registry.Node{n}
		b, _ := encode(s)
		if _, err := cli.Put(ctx(), nodeKey(prefix, s.Name, n.ID), string(b)); err != nil {
			t.Fatal(err)
		}
		return s.Name, n
	}
	awaitCache := func(name string, n *registry.Node, spin time.Duration) time.Time {
		e, err := c.Entry(ctx(), name)
		if err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(10 * time.Second); !hasNode(e.Snapshot(), n); time.Sleep(spin) {
			if time.Now().After(deadline) {
				t.Fatalf("a change of %s never reached the cache", name)
			}
		}
		return time.Now()
	}
	var toCache, toWatch []time.Duration
	for k := range changes {
		name, n := put(k, k+1)
		start := time.Now()
		toCache = append(toCache, awaitCache(name, n, 20*time.Microsecond).Sub(start))
		if w != nil {
			toWatch = append(toWatch, awaitWatch(n).Sub(start))
		}
	}
	t.Logf("a change (one node rewritten) -> the cache's snapshot: %s (from when the put returned)", percentiles(toCache))
	if w != nil {
		t.Logf("a change -> the registry-wide watcher: %s", percentiles(toWatch))
	}

	// CPU per change: the same puts with the watchers (the cache's 10,000
	// and the registry-wide one; each put waited for in both) and without
	// any.
	cpu0, ecpu0 := cpuTime(), procCPU(shared.PID())
	for k := range changes {
		name, n := put(k, k+1000)
		awaitCache(name, n, 100*time.Microsecond)
		if w != nil {
			awaitWatch(n)
		}
	}
	time.Sleep(100 * time.Millisecond)
	cpu1, ecpu1 := cpuTime(), procCPU(shared.PID())
	if w != nil {
		w.Stop()
	}
	c.Close()
	time.Sleep(time.Second)
	cpu2, ecpu2 := cpuTime(), procCPU(shared.PID())
	for k := range changes {
		put(k, k+2000)
	}
	time.Sleep(100 * time.Millisecond)
	cpu3, ecpu3 := cpuTime(), procCPU(shared.PID())
	with, without := (cpu1-cpu0)/changes, (cpu3-cpu2)/changes
	t.Logf("CPU per change in this process: %v with the watchers, %v without (the writer's puts): the watchers cost %v per change",
		with.Round(time.Microsecond), without.Round(time.Microsecond), (with - without).Round(time.Microsecond))
	t.Logf("etcd server CPU per change: %v with %d watches, %v without", ((ecpu1 - ecpu0) / changes).Round(time.Microsecond), services+1,
		((ecpu3 - ecpu2) / changes).Round(time.Microsecond))
	if n := warns.Load(); n > 0 {
		t.Logf("%d warnings", n)
	}
}

func mib(b uint64) float64        { return float64(int64(b)) / (1 << 20) }
func per(b uint64, n int) float64 { return float64(int64(b)) / float64(n) }

func hasNode(s *cache.Snapshot, want *registry.Node) bool {
	for _, n := range s.Nodes {
		if n.ID == want.ID {
			return n.Address == want.Address
		}
	}
	return false
}

// countWarns is a slog handler that counts Warn and Error records.
type countWarns struct{ n *atomic.Int64 }

func (c countWarns) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (c countWarns) Handle(context.Context, slog.Record) error {
	c.n.Add(1)
	return nil
}
func (c countWarns) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c countWarns) WithGroup(string) slog.Handler      { return c }

// changeCost is what one change of a node costs a process that follows the
// registry with a registry-wide watch and a cache of every service.
type changeCost struct {
	decodes float64 // records decoded per change
	mallocs float64 // heap allocations per change (the writer's included)
	bytes   float64 // bytes allocated per change (the writer's included)
}

// measureChangeCost loads services x nodes keys under a prefix of its own,
// follows them with a registry-wide Watch and a cache of every service,
// then rewrites one node n times (each change waited for in both) and
// returns the cost per change.
func measureChangeCost(t *testing.T, services, nodes, n int) changeCost {
	prefix := testPrefix(t)
	cli := rawClient(t)
	t.Cleanup(func() { cli.Delete(context.Background(), prefix, clientv3.WithPrefix()) })
	scaleLoad(t, cli, prefix, services, nodes)
	r := newReg(t, nil, WithPrefix(prefix))
	w, err := r.Watch(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	for range services * nodes {
		if _, err := nextWithin(t, w, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	var created atomic.Int64
	c := cache.New(r, cache.WithRefreshInterval(time.Hour), cache.WithLogger(slog.New(slog.DiscardHandler)),
		cache.OnEvent(func(string, registry.EventType) { created.Add(1) }))
	defer c.Close()
	for i := range services {
		if _, err := c.Entry(ctxT(t), fmt.Sprintf("svc-%05d", i)); err != nil {
			t.Fatal(err)
		}
	}
	registrytest.Eventually(t, 30*time.Second, func() error {
		if got := created.Load(); got < int64(services*nodes) {
			return fmt.Errorf("%d of %d initial events in the cache", got, services*nodes)
		}
		return nil
	})
	e, err := c.Entry(ctxT(t), "svc-00000")
	if err != nil {
		t.Fatal(err)
	}
	s := scaleService(0, 0)
	change := func(gen int) {
		node := scaleNode(0, 0, gen)
		s.Nodes = []*registry.Node{node}
		b, _ := encode(s)
		if _, err := cli.Put(ctxT(t), nodeKey(prefix, s.Name, node.ID), string(b)); err != nil {
			t.Fatal(err)
		}
		ev, err := nextWithin(t, w, 5*time.Second)
		if err != nil || ev.Type != registry.Update || ev.Service.Nodes[0].Address != node.Address {
			t.Fatalf("change %d: watcher got %v, %v", gen, ev, err)
		}
		for deadline := time.Now().Add(5 * time.Second); !hasNode(e.Snapshot(), node); time.Sleep(100 * time.Microsecond) {
			if time.Now().After(deadline) {
				t.Fatalf("change %d never reached the cache", gen)
			}
		}
	}
	change(1) // warm up
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	d0 := decodes.Load()
	for gen := range n {
		change(gen + 2)
	}
	d1 := decodes.Load()
	runtime.ReadMemStats(&m1)
	return changeCost{decodes: float64(d1-d0) / float64(n), mallocs: float64(m1.Mallocs-m0.Mallocs) / float64(n),
		bytes: float64(m1.TotalAlloc-m0.TotalAlloc) / float64(n)}
}

// Issue 13 item 8, cheaply: what a change costs a watcher does not grow
// with the registry. With 2,000 nodes (200 services x 10) as with 20 (2 x
// 10), each change decodes its record once per watch that sees it (the
// registry-wide one and the cache's watch of its service) and nothing
// else, and allocates as much.
func TestWatchCostIsPerChange(t *testing.T) {
	const n = 40
	small := measureChangeCost(t, 2, 10, n)
	large := measureChangeCost(t, 200, 10, n)
	t.Logf("per change, 20 nodes:    %.1f decodes, %.0f allocations, %.0f bytes (the writer's included)", small.decodes, small.mallocs, small.bytes)
	t.Logf("per change, 2,000 nodes: %.1f decodes, %.0f allocations, %.0f bytes", large.decodes, large.mallocs, large.bytes)
	for _, c := range []changeCost{small, large} {
		if c.decodes != 2 {
			t.Errorf("%.2f decodes per change, want 2 (one per watch)", c.decodes)
		}
	}
	if large.mallocs > small.mallocs*1.5+100 || large.bytes > small.bytes*1.5+32<<10 {
		t.Errorf("a change costs more with 2,000 nodes than with 20: %.0f allocations and %.0f bytes against %.0f and %.0f",
			large.mallocs, large.bytes, small.mallocs, small.bytes)
	}
}
