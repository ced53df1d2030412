package etcd

import (
	"fmt"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/beacon-go/beacon/registry"
)

// Measuring tests print figures (for the README) and assert nothing about
// timing. Run with: go test -run Measure -v ./registry/etcd/

func percentiles(d []time.Duration) string {
	s := slices.Clone(d)
	slices.Sort(s)
	p := func(q float64) time.Duration {
		return s[min(len(s)-1, int(q*float64(len(s))))].Round(10 * time.Microsecond)
	}
	return fmt.Sprintf("p50 %v, p90 %v, p99 %v, max %v (n=%d)", p(0.50), p(0.90), p(0.99), s[len(s)-1].Round(10*time.Microsecond), len(s))
}

// Register in one client -> Create event in another client's watcher;
// heartbeat (Register of unchanged data) and GetService round trips.
func TestMeasureLatency(t *testing.T) {
	prefix := testPrefix(t)
	a := newReg(t, nil, WithPrefix(prefix))
	b := newReg(t, nil, WithPrefix(prefix))
	w, err := b.Watch(ctxT(t), registry.WatchService("lat"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	const n = 200
	var toWatch, beat, get []time.Duration
	for i := range n {
		s := svc("lat", "1.0.0", fmt.Sprintf("n%03d", i))
		start := time.Now()
		if err := a.Register(ctxT(t), s, registry.RegisterTTL(30*time.Second)); err != nil {
			t.Fatal(err)
		}
		for {
			ev, err := nextWithin(t, w, 5*time.Second)
			if err != nil {
				t.Fatalf("registration %d: %v", i, err)
			}
			if ev.Type == registry.Create && ev.Service.Nodes[0].ID == s.Nodes[0].ID {
				break
			}
		}
		toWatch = append(toWatch, time.Since(start))

		start = time.Now()
		if err := a.Register(ctxT(t), s, registry.RegisterTTL(30*time.Second)); err != nil {
			t.Fatal(err)
		}
		beat = append(beat, time.Since(start))

		start = time.Now()
		if _, err := b.GetService(ctxT(t), "lat"); err != nil {
			t.Fatal(err)
		}
		get = append(get, time.Since(start))
	}
	t.Logf("Register (new node, TTL 30s: grant + put) -> Create in another client's watcher: %s (goal p99 <= 20ms)", percentiles(toWatch))
	t.Logf("heartbeat (Register of unchanged data, one txn): %s", percentiles(beat))
	t.Logf("GetService (1 to %d nodes): %s", n, percentiles(get))
}

// bulkLoad writes n single-node services under prefix in transactions of
// 100 puts (etcd allows 128 operations per transaction by default).
func bulkLoad(t testing.TB, cli *clientv3.Client, prefix string, n int) time.Duration {
	t.Helper()
	start := time.Now()
	var ops []clientv3.Op
	flush := func() {
		if len(ops) == 0 {
			return
		}
		if _, err := cli.Txn(ctxT(t)).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
		ops = ops[:0]
	}
	for i := range n {
		name := fmt.Sprintf("svc-%05d", i)
		s := svc(name, "1.0.0", name+"-1")
		val, err := encode(s)
		if err != nil {
			t.Fatal(err)
		}
		ops = append(ops, clientv3.OpPut(nodeKey(prefix, name, name+"-1"), string(val)))
		if len(ops) == 100 {
			flush()
		}
	}
	flush()
	return time.Since(start)
}

func TestMeasureListServices10k(t *testing.T) {
	if testing.Short() {
		t.Skip("slow measurement; runs without -short")
	}
	const n = 10_000
	prefix := testPrefix(t)
	cli := rawClient(t)
	t.Cleanup(func() { cli.Delete(ctxT(t), prefix, clientv3.WithPrefix()) })
	load := bulkLoad(t, cli, prefix, n)
	r := newReg(t, nil, WithPrefix(prefix))
	var took []time.Duration
	for range 5 {
		start := time.Now()
		list, err := r.ListServices(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		took = append(took, time.Since(start))
		if len(list) != n {
			t.Fatalf("ListServices returned %d services, want %d", len(list), n)
		}
	}
	var get []time.Duration
	for i := range 200 {
		start := time.Now()
		if _, err := r.GetService(ctxT(t), fmt.Sprintf("svc-%05d", i*37%n)); err != nil {
			t.Fatal(err)
		}
		get = append(get, time.Since(start))
	}
	t.Logf("bulk load of %d services (100 puts per txn): %v", n, load.Round(time.Millisecond))
	t.Logf("ListServices with %d services (10 pages of %d keys, decode + group): %s", n, listPage, percentiles(took))
	t.Logf("GetService among %d services: %s", n, percentiles(get))
}

func BenchmarkGetService(b *testing.B) {
	prefix := testPrefix(b)
	r := newReg(b, nil, WithPrefix(prefix))
	if err := r.Register(ctxT(b), svc("bench", "1.0.0", "n1", "n2", "n3")); err != nil {
		b.Fatal(err)
	}
	ctx := ctxT(b)
	for b.Loop() {
		if _, err := r.GetService(ctx, "bench"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHeartbeat(b *testing.B) {
	prefix := testPrefix(b)
	r := newReg(b, nil, WithPrefix(prefix))
	s := svc("bench", "1.0.0", "n1")
	ctx := ctxT(b)
	for b.Loop() {
		if err := r.Register(ctx, s, registry.RegisterTTL(30*time.Second)); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkListServices10k(b *testing.B) {
	prefix := testPrefix(b)
	cli := rawClient(b)
	b.Cleanup(func() { cli.Delete(ctxT(b), prefix, clientv3.WithPrefix()) })
	bulkLoad(b, cli, prefix, 10_000)
	r := newReg(b, nil, WithPrefix(prefix))
	ctx := ctxT(b)
	for b.Loop() {
		if _, err := r.ListServices(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	val := validRecord(b)
	b.SetBytes(int64(len(val)))
	for b.Loop() {
		if _, err := decode("greeter/greeter-1", val); err != nil {
			b.Fatal(err)
		}
	}
}
