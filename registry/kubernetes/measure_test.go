package kubernetes

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/rest"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/registrytest"
)

// Measuring tests print figures (for the README) and assert nothing about
// timing. Run with: BEACON_MEASURE=1 go test -run Measure -v ./registry/kubernetes/

func percentiles(d []time.Duration) string {
	s := slices.Clone(d)
	slices.Sort(s)
	p := func(q float64) time.Duration {
		return s[min(len(s)-1, int(q*float64(len(s))))].Round(10 * time.Microsecond)
	}
	return fmt.Sprintf("p50 %v, p90 %v, p99 %v, max %v (n=%d)", p(0.50), p(0.90), p(0.99), s[len(s)-1].Round(10*time.Microsecond), len(s))
}

func measuring(t *testing.T) {
	if os.Getenv("BEACON_MEASURE") == "" {
		t.Skip("a measurement: set BEACON_MEASURE=1")
	}
}

// Register in one registry -> Create in another registry's watcher; a
// heartbeat of unchanged data; an EndpointSlice written by another client
// (as the EndpointSlice controller would) -> Create; GetService from the
// informers' cache; the start of a registry (informers synced); a crashed
// node's expiry after its TTL.
func TestMeasureLatency(t *testing.T) {
	measuring(t)
	ns := namespace(t)
	// Above client-go's client-side rate limit (DefaultQPS 50): 200
	// registrations in a loop would measure the limiter.
	fast := rest.CopyConfig(adminCfg)
	fast.QPS, fast.Burst = 5000, 5000
	a, _ := newRegistry(t, ns, WithConfig(fast))
	b, _ := newRegistry(t, ns)
	startB := time.Now()
	ev := registrytest.Watch(t, b, registry.WatchService("lat"))
	t.Logf("first Watch (informers started and synced): %v", time.Since(startB).Round(time.Millisecond))

	const n = 200
	var toWatch, beat, get, slice []time.Duration
	for i := range n {
		s := one("lat", fmt.Sprintf("n%03d", i), fmt.Sprintf("10.9.%d.%d:8080", i/250, i%250+1))
		start := time.Now()
		if err := a.Register(ctxT(t), s, registry.RegisterTTL(30*time.Second)); err != nil {
			t.Fatal(err)
		}
		ev.Expect(t, wait, registry.Create, s.Nodes[0].ID)
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
	for i := range 50 {
		start := time.Now()
		createSlice(t, admin, ns, fmt.Sprintf("lat-%d", i), "lat", []discoveryv1.EndpointPort{port("http", 8080)},
			discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("10.8.0.%d", i+1)}, TargetRef: nil})
		ev.Expect(t, wait, registry.Create, fmt.Sprintf("10.8.0.%d", i+1))
		slice = append(slice, time.Since(start))
	}
	t.Logf("Register -> other registry's watcher Create: %s", percentiles(toWatch))
	t.Logf("heartbeat (Register of unchanged data, 2 requests): %s", percentiles(beat))
	t.Logf("GetService of %d nodes (cache + copy): %s", n, percentiles(get))
	t.Logf("EndpointSlice created by another client -> watcher Create: %s", percentiles(slice))

	// A crash: TTL 2 s, nothing deregisters.
	w, _ := newRegistry(t, ns)
	s := one("crash-lat", "c1", "10.7.0.1:1")
	start := time.Now()
	if err := w.Register(ctxT(t), s, registry.RegisterTTL(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	w.Close()
	cev := registrytest.Watch(t, b, registry.WatchService("crash-lat"))
	cev.Expect(t, wait, registry.Create, "c1")
	cev.Expect(t, wait, registry.Delete, "c1")
	t.Logf("crashed node (TTL 2 s) -> Delete in a watcher: %v after its last Register", time.Since(start).Round(time.Millisecond))
	rss, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", apiserver.PID()))
	for _, line := range strings.Split(string(rss), "\n") {
		if strings.HasPrefix(line, "VmRSS") || strings.HasPrefix(line, "VmHWM") {
			t.Logf("kube-apiserver %s", strings.Join(strings.Fields(line), " "))
		}
	}
}
