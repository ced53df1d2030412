package selector_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/cache"
	"github.com/beacon-go/beacon/selector"
)

func setNodes(ids ...string) []cache.Node {
	svc := &registry.Service{Name: "greeter", Version: "1"}
	var out []cache.Node
	for i, id := range ids {
		// Nodes of another protocol: a Set does not look.
		n := &registry.Node{ID: id, Address: fmt.Sprintf("127.0.0.1:%d", 9000+i), Metadata: map[string]string{registry.MetaProtocol: registry.ProtocolGRPC}}
		svc.Nodes = append(svc.Nodes, n)
		out = append(out, cache.Node{Node: n, Service: svc})
	}
	return out
}

func setShares(t *testing.T, s *selector.Set, k int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range k {
		p, err := s.Pick()
		if err != nil {
			t.Fatal(err)
		}
		got[p.Node.ID]++
		p.Done(selector.Outcome{Latency: time.Millisecond})
	}
	return got
}

func TestSetPicksListedNodes(t *testing.T) {
	s := selector.NewSet(selector.WithStrategy(selector.RoundRobin()))
	if _, err := s.Pick(); !errors.Is(err, selector.ErrNoneAvailable) {
		t.Fatalf("empty set: %v", err)
	}
	s.Update(setNodes("a", "b", "c"))
	if got := setShares(t, s, 300); got["a"] != 100 || got["b"] != 100 || got["c"] != 100 {
		t.Fatalf("round robin shares %v", got)
	}
	s.Update(setNodes("a", "b"))
	if got := setShares(t, s, 100); got["a"] != 50 || got["b"] != 50 {
		t.Fatalf("after update: %v", got)
	}
	if s.String() != "set/roundrobin" {
		t.Fatal(s.String())
	}
}

// TestSetEjectionSurvivesAbsence: an ejected node stays ejected while it is
// left out of the list and comes back ejected; Retain forgets it.
func TestSetEjectionSurvivesAbsence(t *testing.T) {
	clk := &clock{now: time.Unix(1000, 0)}
	s := selector.NewSet(selector.WithStrategy(selector.RoundRobin()), selector.WithClock(clk.Now))
	all := setNodes("a", "b", "c")
	s.Update(all)
	for {
		p, err := s.Pick()
		if err != nil {
			t.Fatal(err)
		}
		if p.Node.ID == "b" {
			p.Done(selector.Outcome{Err: errors.New("refused"), Latency: time.Millisecond})
			break
		}
		p.Done(selector.Outcome{Latency: time.Millisecond})
	}
	if !s.Ejected("b") {
		t.Fatal("b not ejected after a transport failure")
	}
	if got := setShares(t, s, 100); got["b"] != 0 {
		t.Fatalf("ejected node picked: %v", got)
	}
	s.Update([]cache.Node{all[0], all[2]}) // b's connection went down
	setShares(t, s, 10)
	s.Update(all) // and came back, within its cool-off
	if got := setShares(t, s, 100); got["b"] != 0 || !s.Ejected("b") {
		t.Fatalf("b came back without its ejection: %v", got)
	}
	// After the cool-off, one trial request.
	clk.Add(selector.DefaultEjectBase + time.Millisecond)
	p, err := s.Pick()
	if err != nil {
		t.Fatal(err)
	}
	if p.Node.ID != "b" || !p.Probe {
		t.Fatalf("after the cool-off: %s probe=%v", p.Node.ID, p.Probe)
	}
	p.Done(selector.Outcome{Latency: time.Millisecond})
	if s.Ejected("b") {
		t.Fatal("b still ejected after a successful trial")
	}
	// Retain forgets nodes gone for good, not listed ones.
	s.Update(all[:1])
	s.Retain(func(id string) bool { return id == "c" })
	if s.Stats("a") == nil || s.Stats("b") != nil || s.Stats("c") == nil {
		t.Fatal("Retain kept the wrong figures")
	}
}

func TestSetLeastLoadedAvoidsSlowNode(t *testing.T) {
	s := selector.NewSet()
	s.Update(setNodes("a", "b", "c"))
	got := map[string]int{}
	for range 3000 {
		p, err := s.Pick()
		if err != nil {
			t.Fatal(err)
		}
		got[p.Node.ID]++
		lat := time.Millisecond
		if p.Node.ID == "c" {
			lat = 50 * time.Millisecond
		}
		p.Done(selector.Outcome{Latency: lat})
	}
	if got["c"] > 300 {
		t.Fatalf("slow node got %d of 3000 calls: %v", got["c"], got)
	}
}

func TestSetPickZeroAllocs(t *testing.T) {
	for _, strategy := range strategies() {
		s := selector.NewSet(selector.WithStrategy(strategy))
		s.Update(setNodes("a", "b", "c"))
		setShares(t, s, 10)
		allocs := testing.AllocsPerRun(1000, func() {
			p, _ := s.Pick()
			p.Done(selector.Outcome{Latency: time.Millisecond})
		})
		if allocs != 0 {
			t.Errorf("%s: %v allocs per pick", strategy, allocs)
		}
	}
}

// BenchmarkSetPick: one Pick and its Done, the cost a gRPC balancer's pick
// adds to a call (besides grpc-go's own pick_first child).
func BenchmarkSetPick(b *testing.B) {
	for _, strategy := range strategies() {
		s := selector.NewSet(selector.WithStrategy(strategy))
		s.Update(setNodes("a", "b", "c"))
		b.Run(strategy.String(), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p, _ := s.Pick()
				p.Done(selector.Outcome{Latency: time.Millisecond})
			}
		})
		b.Run(strategy.String()+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					p, _ := s.Pick()
					p.Done(selector.Outcome{Latency: time.Millisecond})
				}
			})
		})
	}
}

// TestLeastLoadedRecoversFromSlowFirstAnswer: two equal nodes under
// steady load (three callers, answers in 4-6 ms); node b is slow for its
// first 100 ms (a cold start, a pause of the process), which sets its
// latency EWMA to 50 ms. Once b answers as fast as a, it has its share back
// after one exploration round: the answer to an exploration call replaces
// the EWMA. (It used to be folded in by the time since the exploration was
// picked, a few ms, so it hardly counted: b got one call a second, for as
// long as a answered fast.)
func TestLeastLoadedRecoversFromSlowFirstAnswer(t *testing.T) {
	clk := &clock{now: time.Unix(1_000_000, 0)}
	s := selector.NewSet(selector.WithStrategy(selector.LeastLoaded()), selector.WithClock(clk.Now))
	s.Update(setNodes("a", "b"))
	start := clk.Now()
	// Three callers, each calling again as soon as its call is answered.
	type call struct {
		p   selector.Pick
		lat time.Duration
		end time.Time
	}
	pick := func() call {
		p, err := s.Pick()
		if err != nil {
			t.Fatal(err)
		}
		lat := 4*time.Millisecond + time.Duration(rand.Int64N(int64(2*time.Millisecond)))
		if p.Node.ID == "b" && clk.Now().Before(start.Add(100*time.Millisecond)) {
			lat = 50 * time.Millisecond // b is slow for a moment
		}
		return call{p, lat, clk.Now().Add(lat)}
	}
	calls := []call{pick(), pick(), pick()}
	got := map[string]int{}
	for clk.Now().Before(start.Add(4 * time.Second)) {
		i := 0
		for j := range calls {
			if calls[j].end.Before(calls[i].end) {
				i = j
			}
		}
		c := calls[i]
		clk.Add(c.end.Sub(clk.Now()))
		c.p.Done(selector.Outcome{Latency: c.lat, At: c.end})
		if clk.Now().After(start.Add(2 * time.Second)) { // the last 2 s
			got[c.p.Node.ID]++
		}
		calls[i] = pick()
	}
	total := got["a"] + got["b"]
	if got["b"] < total/4 {
		t.Fatalf("b, slow at first, got %d of %d calls in the last 2 s (a %d) though it answers as fast as a", got["b"], total, got["a"])
	}
	t.Logf("shares in the last 2 s: %v", got)
}
