package etcd

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/beacon-go/beacon/internal/testserver"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/registrytest"
)

// Fault tests against real etcd processes of their own. Service-level fault
// tests (server and client packages) come in phase 2.

const (
	faultTTL      = 2 * time.Second
	faultInterval = 500 * time.Millisecond // heartbeat interval, as a server would use
)

// heartbeats registers s every faultInterval, as a server does, until
// stopped. Failures are counted, not fatal (etcd may be down on purpose).
type heartbeats struct {
	ok, failed atomic.Int64
	stop       chan struct{}
	wg         sync.WaitGroup
}

func startHeartbeats(t *testing.T, r *Registry, s *registry.Service) *heartbeats {
	h := &heartbeats{stop: make(chan struct{})}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		tick := time.NewTicker(faultInterval)
		defer tick.Stop()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), faultInterval)
			err := r.Register(ctx, s, registry.RegisterTTL(faultTTL))
			cancel()
			if err != nil {
				h.failed.Add(1)
			} else {
				h.ok.Add(1)
			}
			select {
			case <-h.stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(h.Stop)
	return h
}

func (h *heartbeats) Stop() {
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	h.wg.Wait()
}

// waitBeats waits until n more heartbeats succeeded.
func (h *heartbeats) waitBeats(t *testing.T, n int64, wait time.Duration) {
	t.Helper()
	want := h.ok.Load() + n
	registrytest.Eventually(t, wait, func() error {
		if got := h.ok.Load(); got < want {
			return fmt.Errorf("%d of %d heartbeats succeeded (%d failed)", got, want, h.failed.Load())
		}
		return nil
	})
}

func ids(prefix string, n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("%s%d", prefix, i))
	}
	return out
}

func deletes(s *state) []string {
	s.drain()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, ev := range s.all {
		if ev.Type == registry.Delete {
			out = append(out, ev.Service.Nodes[0].ID)
		}
	}
	return out
}

// SIGKILL of the leader of a 3-member cluster: no registration is lost and
// the watch carries on.
func TestFaultLeaderKill(t *testing.T) {
	c := testserver.MustStartEtcdCluster(t, 3)
	eps := c.Endpoints()
	prefix := testPrefix(t)
	lb := newLogBuf()
	reg := newReg(t, lb, WithAddrs(eps...), WithPrefix(prefix))
	obs := newReg(t, nil, WithAddrs(eps...), WithPrefix(prefix))
	w := watchState(t, obs, registry.WatchService("ha"))

	nodes := ids("n", 5)
	h := startHeartbeats(t, reg, svc("ha", "1.0.0", nodes...))
	w.waitFor(t, 10*time.Second, fmt.Sprint(nodes), hasIDs(nodes...))

	leader, err := c.WaitLeader(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	leader.Kill()
	killed := time.Now()
	t.Logf("killed leader %s (SIGKILL)", leader.Name())

	// A registration after the kill reaches the watcher.
	var wrote time.Duration
	registrytest.Eventually(t, 15*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := reg.Register(ctx, svc("ha", "1.0.0", "after"), registry.RegisterTTL(30*time.Second)); err != nil {
			return err
		}
		wrote = time.Since(killed)
		return nil
	})
	w.waitFor(t, 10*time.Second, "with the node registered after the kill", hasIDs(append(nodes, "after")...))
	t.Logf("first write after the kill succeeded after %v; the watcher saw it after %v",
		wrote.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))

	// Heartbeats go on across more than two TTLs; nothing ever expires.
	h.waitBeats(t, int64(3*faultTTL/faultInterval), 20*time.Second)
	if d := deletes(w); len(d) != 0 {
		t.Errorf("watcher saw nodes deleted after the leader was killed: %v", d)
	}
	got, err := obs.GetService(ctxT(t), "ha")
	if err != nil {
		t.Fatal(err)
	}
	if n := len(nodeIDs(got)); n != 6 {
		t.Errorf("GetService after the kill: %d nodes, want 6", n)
	}
	t.Logf("heartbeats: %d ok, %d failed", h.ok.Load(), h.failed.Load())
}

// etcd stopped for longer than the TTL, then restarted: the registry grants
// new leases and puts the records again within about one heartbeat, and a
// watcher (of another client) reports the nodes again.
func TestFaultEtcdRestart(t *testing.T) {
	e := testserver.MustStartEtcd(t)
	prefix := testPrefix(t)
	lb := newLogBuf()
	reg := newReg(t, lb, WithAddrs(e.Endpoints()...), WithPrefix(prefix))
	obs := newReg(t, nil, WithAddrs(e.Endpoints()...), WithPrefix(prefix))
	cli := rawClient(t, e.Endpoints()...)
	w := watchState(t, obs, registry.WatchService("restart"))

	nodes := ids("n", 2)
	h := startHeartbeats(t, reg, svc("restart", "1.0.0", nodes...))
	w.waitFor(t, 10*time.Second, fmt.Sprint(nodes), hasIDs(nodes...))
	oldLeases := map[string]int64{}
	for _, id := range nodes {
		resp, err := cli.Get(ctxT(t), prefix+"restart/"+id)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("get %s: %v", id, err)
		}
		oldLeases[id] = resp.Kvs[0].Lease
	}

	// Kill, not Stop: with client streams open, etcd's graceful shutdown
	// waits for them for its request timeout (about 7 s) before it exits,
	// which blurs when the outage starts.
	e.Kill()
	// The outage itself: longer than the TTL (not a wait for an event).
	time.Sleep(faultTTL + time.Second)
	if err := e.Restart(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()

	var restored time.Duration
	registrytest.Eventually(t, 10*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		for _, id := range nodes {
			resp, err := cli.Get(ctx, prefix+"restart/"+id)
			if err != nil {
				return err
			}
			if len(resp.Kvs) != 1 {
				return fmt.Errorf("%s missing", id)
			}
			if resp.Kvs[0].Lease == oldLeases[id] {
				return fmt.Errorf("%s still on its old lease", id)
			}
			if ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil || ttl.TTL <= 0 {
				return fmt.Errorf("%s on a dead lease: %v", id, err)
			}
		}
		restored = time.Since(restarted)
		return nil
	})
	w.waitFor(t, 10*time.Second, "with the nodes back", hasIDs(nodes...))
	t.Logf("etcd down %v (TTL %v, heartbeat %v): records on new leases %v after the restart, watcher state complete after %v",
		faultTTL+time.Second, faultTTL, faultInterval, restored.Round(time.Millisecond), time.Since(restarted).Round(time.Millisecond))
	t.Logf("watcher saw %d Delete events meanwhile (etcd keeps leases across a restart)", len(deletes(w)))
	if restored > faultInterval+time.Second {
		t.Errorf("re-registration took %v after the restart; want about one heartbeat (%v) plus reconnecting", restored, faultInterval)
	}
	if !lb.Has("lease lost") && !lb.Has("granting a new one") {
		t.Error("the lease loss was not logged")
	}
	// Stable again: heartbeats succeed and nothing flaps.
	h.waitBeats(t, 4, 10*time.Second)
	got, err := obs.GetService(ctxT(t), "restart")
	if err != nil || len(nodeIDs(got)) != 2 {
		t.Fatalf("GetService after the restart: %v %v", describe(got), err)
	}
}

// A registrant that crashes (closed without deregistering: its keep-alives
// stop) disappears from another client's watcher within TTL + 1 s.
func TestFaultCrashedRegistrant(t *testing.T) {
	prefix := testPrefix(t)
	crashed := newReg(t, nil, WithPrefix(prefix))
	obs := newReg(t, nil, WithPrefix(prefix))
	w := watchState(t, obs, registry.WatchService("crash"))
	if err := crashed.Register(ctxT(t), svc("crash", "1.0.0", "n1", "n2"), registry.RegisterTTL(faultTTL)); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, 5*time.Second, "[n1 n2]", hasIDs("n1", "n2"))
	// Keep the lease alive for a while through the keep-alive stream alone
	// (heartbeats included), so that the crash happens mid-lease.
	h := startHeartbeats(t, crashed, svc("crash", "1.0.0", "n1", "n2"))
	h.waitBeats(t, 3, 5*time.Second)
	h.Stop()
	if err := crashed.Close(); err != nil {
		t.Fatal(err)
	}
	gone := time.Now()
	w.waitFor(t, faultTTL+time.Second, "empty", hasIDs())
	took := time.Since(gone)
	t.Logf("crashed registrant (TTL %v): watcher saw both Deletes %v after the crash", faultTTL, took.Round(time.Millisecond))
}
