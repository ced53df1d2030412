package consul

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/registrytest"
)

// percentile returns the p-th percentile (0-100) of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p / 100)
	return sorted[i]
}

// TestFigureRegisterToWatch measures the time from the start of Register on
// one Registry to the Create event at a watcher on another Registry (its
// own connections), over 200 registrations: all nodes of one service (each
// answer of the shared health query grows to 200 entries, about 600 KB of
// consul JSON), and 20 services of 10 nodes watched by one all-services
// watcher. The goal is p99 <= 20 ms; the figures are logged, not
// asserted.
func TestFigureRegisterToWatch(t *testing.T) {
	if testing.Short() {
		t.Skip("measuring test: skipped with -short")
	}
	tests := []struct {
		name     string
		services int
		nodes    int
		watchAll bool
	}{
		{"one service of 200 nodes, service watcher", 1, 200, false},
		{"20 services of 10 nodes, all-services watcher", 20, 10, true},
	}
	for _, tc := range tests {
		registrant := newRegistry(t)
		watcher := newRegistry(t)
		base := uniqueName(t)
		var opts []registry.WatchOption
		if !tc.watchAll {
			opts = append(opts, registry.WatchService(base+"-0"))
		}
		ev := registrytest.Watch(t, watcher, opts...)
		lat := make([]time.Duration, 0, tc.services*tc.nodes)
		for i := range tc.services * tc.nodes {
			name := fmt.Sprintf("%s-%d", base, i%tc.services)
			s := service(name, "1.0.0", i, 1)
			defer registrant.Deregister(context.Background(), s)
			start := time.Now()
			if err := registrant.Register(ctxT(t), s, registry.RegisterTTL(30*time.Second)); err != nil {
				t.Fatal(err)
			}
			ev.Expect(t, 5*time.Second, registry.Create, s.Nodes[0].ID)
			lat = append(lat, time.Since(start))
		}
		ev.Stop()
		slices.Sort(lat)
		t.Logf("%s: register -> remote watcher Create over %d registrations: p50 %v, p90 %v, p99 %v, max %v (goal p99 <= 20ms)",
			tc.name, len(lat), percentile(lat, 50), percentile(lat, 90), percentile(lat, 99), lat[len(lat)-1])
	}
}

// TestFigureCrashToHidden measures, over a few crashed registrants, the time
// from the last heartbeat to the Delete at a watcher and to GetService no
// longer showing the node.
func TestFigureCrashToHidden(t *testing.T) {
	if testing.Short() {
		t.Skip("measuring test: skipped with -short")
	}
	const (
		ttl    = time.Second
		trials = 5
	)
	watcher := newRegistry(t)
	var toDelete, toHidden []time.Duration
	for i := range trials {
		registrant, err := New(ctxT(t), WithAddrs(agent.Addr()), WithLogger(testLogger(t)))
		if err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("%s-%d", uniqueName(t), i)
		s := service(name, "1", 0, 1)
		id := s.Nodes[0].ID
		ev := registrytest.Watch(t, watcher, registry.WatchService(name))
		var last time.Time
		for range 3 {
			if err := registrant.Register(ctxT(t), s, registry.RegisterTTL(ttl)); err != nil {
				t.Fatal(err)
			}
			last = time.Now()
			time.Sleep(ttl / 4) // heartbeat interval
		}
		ev.Expect(t, 5*time.Second, registry.Create, id)
		registrant.Close() // crash
		ev.Expect(t, ttl+5*time.Second, registry.Delete, id)
		toDelete = append(toDelete, time.Since(last))
		registrytest.Eventually(t, ttl+5*time.Second, func() error {
			if _, err := watcher.GetService(ctxT(t), name); err == nil {
				return fmt.Errorf("%s still visible", id)
			}
			return nil
		})
		toHidden = append(toHidden, time.Since(last))
		ev.Stop()
	}
	slices.Sort(toDelete)
	slices.Sort(toHidden)
	t.Logf("last heartbeat -> watcher Delete (TTL %v, %d crashes): min %v, median %v, max %v", ttl, trials, toDelete[0], toDelete[trials/2], toDelete[trials-1])
	t.Logf("last heartbeat -> hidden from GetService: min %v, median %v, max %v (bound TTL + 1s = %v)", toHidden[0], toHidden[trials/2], toHidden[trials-1], ttl+time.Second)
}
