package etcd

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/beacon-go/beacon/internal/testserver"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/cache"
	"github.com/beacon-go/beacon/registry/registrytest"
)

// memUse is what one operation cost the process's heap.
type memUse struct {
	peak  uint64 // highest heap (live and not yet collected objects) above the level before
	alloc uint64 // bytes allocated during the operation
}

func (m memUse) String() string {
	return fmt.Sprintf("peak +%.1f MiB, allocated %.1f MiB", float64(m.peak)/(1<<20), float64(m.alloc)/(1<<20))
}

// measureMem runs f and samples the heap every 200 µs meanwhile, with the GC
// made eager (GOGC 20) so that the peak reflects what f holds rather than
// garbage the collector has not reached yet.
func measureMem(f func()) memUse {
	defer debug.SetGCPercent(debug.SetGCPercent(20))
	runtime.GC()
	objs := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	allocs := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(objs)
	metrics.Read(allocs)
	base, alloc0 := objs[0].Value.Uint64(), allocs[0].Value.Uint64()
	stop := make(chan struct{})
	peakc := make(chan uint64)
	go func() {
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		peak := base
		tick := time.NewTicker(200 * time.Microsecond)
		defer tick.Stop()
		for {
			metrics.Read(s)
			peak = max(peak, s[0].Value.Uint64())
			select {
			case <-stop:
				peakc <- peak
				return
			case <-tick.C:
			}
		}
	}()
	f()
	close(stop)
	peak := <-peakc
	metrics.Read(allocs)
	return memUse{peak: peak - base, alloc: allocs[0].Value.Uint64() - alloc0}
}

// invalidRecord returns a JSON record of about size bytes that names its key
// correctly but fails validation: one node metadata value is far longer
// than registry.MaxMetadataValueLen.
func invalidRecord(name, id string, size int) string {
	head := fmt.Sprintf(`{"name":%q,"version":"1","nodes":[{"id":%q,"address":"127.0.0.1:1","metadata":{"x":"`, name, id)
	tail := `"}}]}`
	return head + strings.Repeat("a", max(0, size-len(head)-len(tail))) + tail
}

// putInvalid writes n invalid records of size bytes as junk/bad-NN: every
// fifth is the JSON of invalidRecord (costly to decode: tens of ms per MB,
// ten times that with -race), the others are garbage that a decoder
// rejects at once (a record cut short, then junk).
func putInvalid(t testing.TB, cli *clientv3.Client, prefix string, n, size int) {
	t.Helper()
	for i := range n {
		id := fmt.Sprintf("bad-%02d", i)
		val := invalidRecord("junk", id, size)
		if i%5 != 0 {
			cut := strings.Index(val, `"x":"`)
			val = val[:cut] + strings.Repeat("}", size-cut)
		}
		if _, err := cli.Put(ctxT(t), nodeKey(prefix, "junk", id), val); err != nil {
			t.Fatal(err)
		}
	}
}

// warnings counts the Warn records logged so far.
func (l *logBuf) warnings() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.recs {
		if strings.HasPrefix(r, "WARN ") {
			n++
		}
	}
	return n
}

// Issue 13 item 6: 50 invalid records of 1 MB each (valid JSON, the right
// name and node ID, but a node metadata value of 1 MB) next to two valid
// nodes. Reading the registry must not cost memory in proportion to the
// junk: a listing holds one bounded page at a time, records known to be
// malformed are not fetched again, and each bad key is logged at most once
// per interval, with a few lines in all.
func TestByteBudgetInvalidRecords(t *testing.T) {
	const (
		n    = 50
		size = 1_000_000
		// Budgets asserted (before the fix: peak +100-200 MiB and as
		// much allocated per call, 50 warnings per call).
		peakBudget = 24 << 20 // heap growth while one call runs
		warmBudget = 4 << 20  // bytes allocated by a repeated call
		warnBudget = 8        // Warn lines over the whole test
	)
	prefix := testPrefix(t)
	cli := rawClient(t)
	t.Cleanup(func() { cli.Delete(context.Background(), prefix, clientv3.WithPrefix()) })
	lb := newLogBuf()
	r := newReg(t, lb, WithPrefix(prefix))
	if err := r.Register(ctxT(t), svc("junk", "1.0.0", "ok-1", "ok-2")); err != nil {
		t.Fatal(err)
	}
	if err := r.Register(ctxT(t), svc("fine", "1.0.0", "f-1")); err != nil {
		t.Fatal(err)
	}
	putInvalid(t, cli, prefix, n, size)

	check := func(what string, m memUse, warm bool) {
		t.Helper()
		t.Logf("%-28s %v (warnings so far: %d)", what, m, lb.warnings())
		if m.peak > peakBudget {
			t.Errorf("%s: heap grew by %d bytes, budget %d", what, m.peak, peakBudget)
		}
		if warm && m.alloc > warmBudget {
			t.Errorf("%s: allocated %d bytes, budget %d for a repeated call", what, m.alloc, warmBudget)
		}
	}
	// Calls get a minute: the first listing decodes 10 MB of JSON, which
	// takes seconds with -race on a busy machine (each request is bounded
	// by the default request timeout).
	ctx := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		t.Cleanup(cancel)
		return ctx
	}
	for i := range 3 {
		var got []*registry.Service
		var err error
		m := measureMem(func() { got, err = r.GetService(ctx(), "junk") })
		if err != nil || len(got) != 1 || len(got[0].Nodes) != 2 {
			t.Fatalf("GetService(junk) = %v, %v; want the 2 valid nodes", describeIDs(got), err)
		}
		check(fmt.Sprintf("GetService #%d", i+1), m, i > 0)
	}
	for i := range 2 {
		var got []*registry.Service
		var err error
		m := measureMem(func() { got, err = r.ListServices(ctx()) })
		if err != nil || len(got) != 2 {
			t.Fatalf("ListServices = %v, %v; want fine and junk", describeIDs(got), err)
		}
		check(fmt.Sprintf("ListServices #%d", i+1), m, true)
	}
	var w registry.Watcher
	m := measureMem(func() {
		var err error
		if w, err = r.Watch(ctx()); err != nil {
			t.Fatal(err)
		}
	})
	defer w.Stop()
	check("Watch (all) initial listing", m, true)
	created := 0
	for created < 3 {
		ev, err := nextWithin(t, w, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if ev.Type == registry.Create {
			created++
		}
	}

	// The same junk seen by a watch: rewritten (a new revision), plus one
	// record over MaxRecordSize, then a valid change behind them. Only the
	// valid record is decoded: the junk is known by its bytes, the big
	// record by its size.
	before := decodes.Load()
	putInvalid(t, cli, prefix, n, size)
	if _, err := cli.Put(ctxT(t), nodeKey(prefix, "junk", "huge"), invalidRecord("junk", "huge", MaxRecordSize+100_000)); err != nil {
		t.Fatal(err)
	}
	if err := r.Register(ctxT(t), svc("fine", "1.0.0", "f-2")); err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := nextWithin(t, w, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if ev.Type == registry.Create && ev.Service.Nodes[0].ID == "f-2" {
			break
		}
		if ev.Service.Nodes[0].ID != "ok-1" && ev.Service.Nodes[0].ID != "ok-2" {
			t.Fatalf("unexpected event %v %s", ev.Type, ev.Service.Nodes[0].ID)
		}
	}
	if d := decodes.Load() - before; d != 1 {
		t.Errorf("the watch decoded %d records for %d bad puts and one valid one, want 1", d, n+1)
	}
	t.Logf("warnings after the watch saw %d bad puts: %d", n+1, lb.warnings())
	if got := lb.warnings(); got > warnBudget {
		t.Errorf("%d Warn lines, want at most %d:\n%s", got, warnBudget, strings.Join(lb.lines(), "\n"))
	}

	// A calling client (a new Registry, a cache: what a selector does):
	// the first lookup's GetService, the watch's listing and the resync
	// after it. The junk is decoded once, not three times.
	lb2 := newLogBuf()
	r2 := newReg(t, lb2, WithPrefix(prefix))
	var events atomic.Int64
	c := cache.New(r2, cache.WithLogger(lb2.Logger()), cache.WithFetchTimeout(time.Minute),
		cache.OnEvent(func(string, registry.EventType) { events.Add(1) }))
	defer c.Close()
	before = decodes.Load()
	m = measureMem(func() {
		e, err := c.Entry(ctx(), "junk")
		if err != nil {
			t.Fatal(err)
		}
		registrytest.Eventually(t, time.Minute, func() error {
			if events.Load() < 2 || len(e.Snapshot().Nodes) != 2 {
				return fmt.Errorf("%d events, %d nodes", events.Load(), len(e.Snapshot().Nodes))
			}
			return nil
		})
		time.Sleep(200 * time.Millisecond) // the resync fetch after the watch opened
	})
	check("cache lookup, watch, resync", m, false)
	t.Logf("the calling client: %d records decoded, %d Warn lines", decodes.Load()-before, lb2.warnings())
	// The 51 bad records once (the one over MaxRecordSize is refused at
	// once), the 2 valid ones three times.
	if d := decodes.Load() - before; d > n+1+3*2 {
		t.Errorf("a cache lookup decoded %d records, want the %d bad ones once and the valid ones", d, n+1)
	}
	if got := lb2.warnings(); got > registry.BadRecordLogBurst+1 {
		t.Errorf("the calling client logged %d Warn lines, want at most %d:\n%s", got, registry.BadRecordLogBurst+1, strings.Join(lb2.lines(), "\n"))
	}
}

func (l *logBuf) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]string, 0, len(l.recs))
	for _, r := range l.recs {
		if len(r) > 300 {
			r = r[:300] + "..."
		}
		out = append(out, r)
	}
	return out
}

func describeIDs(ss []*registry.Service) string {
	var parts []string
	for _, s := range ss {
		ids := make([]string, 0, len(s.Nodes))
		for _, n := range s.Nodes {
			ids = append(ids, n.ID)
		}
		parts = append(parts, s.Name+"@"+s.Version+"["+strings.Join(ids, ",")+"]")
	}
	return strings.Join(parts, " ")
}

// A value larger than a listing page (ListPageBytes), which an etcd with a
// larger --max-request-bytes accepts, is never fetched by a listing: the
// etcd client refuses the response before reading it, and the listing skips
// the key by name. The watch receives it (one event's bytes) but does not
// decode it.
func TestListingSkipsValueOverPage(t *testing.T) {
	srv := testserver.MustStartEtcd(t, testserver.WithArgs("--max-request-bytes=12582912"))
	cli, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second,
		Logger: zap.NewNop(), MaxCallSendMsgSize: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	lb := newLogBuf()
	r := newReg(t, lb, WithAddrs(srv.Endpoints()...))
	if err := r.Register(ctxT(t), svc("big", "1.0.0", "a-ok", "z-ok")); err != nil {
		t.Fatal(err)
	}
	const size = 2*ListPageBytes + 1000
	for _, id := range []string{"m-huge-1", "m-huge-2"} {
		if _, err := cli.Put(ctxT(t), nodeKey(DefaultPrefix, "big", id), invalidRecord("big", id, size)); err != nil {
			t.Fatal(err)
		}
	}
	before := decodes.Load()
	for i := range 2 {
		var got []*registry.Service
		m := measureMem(func() { got, err = r.GetService(ctxT(t), "big") })
		t.Logf("GetService #%d with two %d-byte values: %v", i+1, size, m)
		if err != nil || len(got) != 1 || len(got[0].Nodes) != 2 {
			t.Fatalf("GetService(big) = %v, %v; want a-ok and z-ok", describeIDs(got), err)
		}
		if m.peak > ListPageBytes*3 || m.alloc > size {
			t.Errorf("GetService #%d: %v; the big values were fetched", i+1, m)
		}
	}
	if d := decodes.Load() - before; d != 4 {
		t.Errorf("%d records decoded, want the 2 valid ones per GetService", d)
	}
	if !lb.Has("skipping malformed record", "big/m-huge-1", "not fetched") || !lb.Has("skipping malformed record", "big/m-huge-2", "not fetched") {
		t.Errorf("the big values were not logged:\n%s", strings.Join(lb.lines(), "\n"))
	}
	// The watch: Creates of the valid nodes, nothing for the big ones.
	w, err := r.Watch(ctxT(t), registry.WatchService("big"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	before = decodes.Load()
	if _, err := cli.Put(ctxT(t), nodeKey(DefaultPrefix, "big", "m-huge-3"), invalidRecord("big", "m-huge-3", size)); err != nil {
		t.Fatal(err)
	}
	if err := r.Register(ctxT(t), svc("big", "1.0.0", "n-ok")); err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := nextWithin(t, w, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if id := ev.Service.Nodes[0].ID; strings.Contains(id, "huge") {
			t.Fatalf("event %v for %s", ev.Type, id)
		} else if id == "n-ok" {
			break
		}
	}
	if d := decodes.Load() - before; d != 1 {
		t.Errorf("the watch decoded %d records, want 1 (n-ok)", d)
	}
}
