package selector_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/beacon-go/beacon/selector"
)

func TestHealth(t *testing.T) {
	now := time.Unix(1000, 0)
	_, s := setup(t, 2, selector.WithStrategy(selector.RoundRobin()), selector.WithClock(func() time.Time { return now }),
		selector.WithEjection(time.Second, 10*time.Second))
	if h := s.Health("greeter"); h != nil {
		t.Fatalf("health before any select: %+v", h)
	}
	next, err := s.Select(context.Background(), "greeter")
	if err != nil {
		t.Fatal(err)
	}
	a, _ := next()
	b, _ := next()
	if a.Node.ID == b.Node.ID {
		t.Fatalf("round robin picked %s twice", a.Node.ID)
	}
	h := s.Health("greeter")
	if len(h) != 2 || h[0].ID != "n000" || h[1].ID != "n001" || h[0].InFlight != 1 || h[1].InFlight != 1 || h[0].Weight != 1 {
		t.Fatalf("health with one call in flight on each node: %+v", h)
	}
	a.Done(selector.Outcome{Latency: 3 * time.Millisecond})
	b.Done(selector.Outcome{Err: errors.New("dial refused")})
	for _, n := range s.Health("greeter") {
		switch n.ID {
		case a.Node.ID:
			if n.Ejected || n.InFlight != 0 || n.Latency != 3*time.Millisecond {
				t.Fatalf("healthy node: %+v", n)
			}
		case b.Node.ID:
			if !n.Ejected || n.Probing || n.Incidents != 1 || !n.Until.Equal(now.Add(time.Second)) || n.InFlight != 0 {
				t.Fatalf("ejected node: %+v", n)
			}
		}
	}
	if h := s.Health("other"); h != nil {
		t.Fatalf("health of a service never selected: %+v", h)
	}
}
