package selector_test

import (
	"context"
	"errors"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/selector"
)

// clock is a settable time source for ejection tests.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func pickOne(t *testing.T, s *selector.Cached) selector.Pick {
	t.Helper()
	next, err := s.Select(context.Background(), "greeter")
	if err != nil {
		t.Fatal(err)
	}
	p, err := next()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// shares picks k times, answering each at once, and counts picks per node.
func shares(t *testing.T, s *selector.Cached, k int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range k {
		p := pickOne(t, s)
		got[p.Node.ID]++
		p.Done(selector.Outcome{Latency: time.Millisecond})
	}
	return got
}

// LeastLoaded: a node whose requests are stuck in flight (hung) stops
// getting new ones after a few picks; a slow node gets a small share.
func TestLeastLoadedAvoidsHungAndSlowNodes(t *testing.T) {
	_, s := setup(t, 3, selector.WithStrategy(selector.LeastLoaded()))
	shares(t, s, 300) // every node has a latency
	// n001 hangs: what is picked for it never finishes.
	stuck := 0
	for range 1000 {
		p := pickOne(t, s)
		if p.Node.ID == "n001" {
			stuck++
			continue
		}
		p.Done(selector.Outcome{Latency: time.Millisecond})
	}
	if stuck > 10 {
		t.Errorf("a hung node got %d of 1000 calls, want a few", stuck)
	}
	t.Logf("hung node: %d of 1000 picks", stuck)

	// A node 10x slower than the others gets far less than a third.
	_, s = setup(t, 3, selector.WithStrategy(selector.LeastLoaded()))
	got := map[string]int{}
	for range 3000 {
		p := pickOne(t, s)
		got[p.Node.ID]++
		lat := time.Millisecond
		if p.Node.ID == "n002" {
			lat = 10 * time.Millisecond
		}
		p.Done(selector.Outcome{Latency: lat})
	}
	if got["n002"] > 3000/6 {
		t.Errorf("a 10x slower node got %d of 3000 picks: %v", got["n002"], got)
	}
	t.Logf("10x slower node: %v", got)
}

// Ejection is fair: the calls in flight when a node failed are one
// incident; after the cool-off one trial goes to the node (not a flood);
// its success brings the node back, its failure doubles the cool-off; while
// it is out, the others share its calls evenly.
func TestEjectionProbesAndSharesFairly(t *testing.T) {
	for _, strat := range strategies() {
		t.Run(strat.String(), func(t *testing.T) {
			clk := &clock{now: time.Unix(1000, 0)}
			_, s := setup(t, 3, selector.WithStrategy(strat), selector.WithClock(clk.Now), selector.WithEjection(time.Second, 8*time.Second))
			shares(t, s, 30)
			// Calls in flight on n001 (up to 8; LeastLoaded stops sending
			// once they pile up) fail together.
			var inflight []selector.Pick
			for range 1000 {
				if len(inflight) == 8 {
					break
				}
				p := pickOne(t, s)
				if p.Node.ID == "n001" {
					inflight = append(inflight, p)
				} else {
					p.Done(selector.Outcome{Latency: time.Millisecond})
				}
			}
			for _, p := range inflight {
				p.Done(selector.Outcome{Latency: time.Second, Err: errors.New("timeout")})
			}
			got := shares(t, s, 1000)
			if got["n001"] != 0 {
				t.Fatalf("ejected node picked: %v", got)
			}
			if a, b := float64(got["n000"]), float64(got["n002"]); math.Abs(a-b)/math.Max(a, b) > 0.2 {
				t.Errorf("the others' shares differ by more than 20%%: %v", got)
			}
			// One incident: after one base cool-off, one trial (a probe).
			clk.Add(1100 * time.Millisecond)
			probes := 0
			var probe selector.Pick
			for range 50 {
				p := pickOne(t, s)
				if p.Probe {
					probes++
					probe = p
					continue
				}
				if p.Node.ID == "n001" {
					t.Fatalf("n001 picked outside its trial")
				}
				p.Done(selector.Outcome{Latency: time.Millisecond})
			}
			if probes != 1 || probe.Node.ID != "n001" {
				t.Fatalf("%d trials after the cool-off, want exactly one to n001", probes)
			}
			// The trial fails: a repeated incident, 2 s.
			probe.Done(selector.Outcome{Latency: time.Second, Err: errors.New("timeout")})
			clk.Add(1100 * time.Millisecond)
			if got := shares(t, s, 50); got["n001"] != 0 {
				t.Fatalf("cool-off did not grow after a failed trial: %v", got)
			}
			clk.Add(time.Second)
			p := pickOne(t, s)
			if !p.Probe || p.Node.ID != "n001" {
				t.Fatalf("no trial after the longer cool-off: %+v", p)
			}
			// A trial whose ping failed: another base cool-off, no growth.
			p.Done(selector.Outcome{ProbeFailed: true})
			clk.Add(1100 * time.Millisecond)
			p = pickOne(t, s)
			if !p.Probe {
				t.Fatalf("a failed ping made the cool-off grow")
			}
			// The trial succeeds: back in the rotation.
			p.Done(selector.Outcome{Latency: time.Millisecond})
			if got := shares(t, s, 300); got["n001"] < 50 {
				t.Fatalf("node not back after a successful trial: %v", got)
			}
		})
	}
}

// A node that registers again with new data (restarted, new address)
// starts afresh, even while ejected.
func TestReRegistrationClearsEjection(t *testing.T) {
	clk := &clock{now: time.Unix(1000, 0)}
	r, s := setup(t, 3, selector.WithClock(clk.Now))
	shares(t, s, 3)
	s.Mark("greeter", &registry.Node{ID: "n001"}, errors.New("refused"))
	if got := shares(t, s, 30); got["n001"] != 0 {
		t.Fatalf("not ejected: %v", got)
	}
	svc := service("greeter", "1.0.0", 1, 1)
	svc.Nodes[0].Address = "127.0.0.1:20001"
	if err := r.Register(context.Background(), svc); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := shares(t, s, 30)
		if got["n001"] > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a re-registered node stays ejected: %v", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Weights from node metadata are honoured by every strategy.
func TestWeights(t *testing.T) {
	for _, strat := range strategies() {
		t.Run(strat.String(), func(t *testing.T) {
			r, s := setup(t, 0, selector.WithStrategy(strat))
			svc := service("greeter", "1.0.0", 0, 2)
			svc.Nodes[0].Metadata[selector.MetaWeight] = "3"
			if err := r.Register(context.Background(), svc); err != nil {
				t.Fatal(err)
			}
			// 16 calls in flight, each answered 1 ms after it was made.
			got := map[string]int{}
			var window []selector.Pick
			for range 4000 {
				p := pickOne(t, s)
				got[p.Node.ID]++
				window = append(window, p)
				if len(window) == 16 {
					window[0].Done(selector.Outcome{Latency: time.Millisecond})
					window = window[1:]
				}
			}
			ratio := float64(got["n000"]) / float64(got["n001"])
			if ratio < 2.4 || ratio > 3.6 {
				t.Errorf("weight 3 vs 1: shares %v (ratio %.2f), want about 3", got, ratio)
			}
		})
	}
}

// Skipped picks give their in-flight count back; a skipped trial lets
// another pick take it.
func TestSkippedPicks(t *testing.T) {
	_, s := setup(t, 2, selector.WithStrategy(selector.LeastLoaded()))
	for range 100 {
		pickOne(t, s).Done(selector.Outcome{Skipped: true})
	}
	got := shares(t, s, 1000)
	if a, b := got["n000"], got["n001"]; a < 300 || b < 300 {
		t.Fatalf("skipped picks left load behind: %v", got)
	}
}

// A filtered Select never hands out the trial of a node its filters drop.
func TestFilteredSelectTakesNoForeignProbe(t *testing.T) {
	clk := &clock{now: time.Unix(1000, 0)}
	r, s := setup(t, 2, selector.WithClock(clk.Now))
	if err := r.Register(context.Background(), service("greeter", "2.0.0", 2, 1)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for shares(t, s, 30)["n002"] == 0 {
		if time.Now().After(deadline) {
			t.Fatal("version 2 node not seen")
		}
	}
	s.Mark("greeter", &registry.Node{ID: "n002"}, errors.New("refused"))
	clk.Add(2 * time.Second)
	next, err := s.Select(context.Background(), "greeter", selector.WithFilter(selector.FilterVersion("1.0.0")))
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		p, err := next()
		if err != nil {
			t.Fatal(err)
		}
		if p.Node.ID == "n002" {
			t.Fatalf("filtered pick returned the version 2 node (probe %v)", p.Probe)
		}
		p.Done(selector.Outcome{Latency: time.Millisecond})
	}
}
