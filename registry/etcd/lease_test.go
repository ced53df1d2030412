package etcd

import (
	"errors"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/registrytest"
)

func TestLeaseTTL(t *testing.T) {
	cases := []struct {
		in   time.Duration
		want int64
	}{
		{0, 0},
		{-time.Second, 0},
		{time.Nanosecond, 2},
		{300 * time.Millisecond, 2},
		{time.Second, 2},
		{2 * time.Second, 2},
		{2*time.Second + time.Millisecond, 3},
		{15 * time.Second, 15},
		{90*time.Second + 500*time.Millisecond, 91},
	}
	for _, tc := range cases {
		if got := leaseTTL(tc.in); got != tc.want {
			t.Errorf("leaseTTL(%v) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

// stored returns the raw key-value of a node, nil if absent.
func stored(t *testing.T, cli *clientv3.Client, key string) *clientv3.GetResponse {
	t.Helper()
	resp, err := cli.Get(ctxT(t), key)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func leaseOf(t *testing.T, cli *clientv3.Client, key string) clientv3.LeaseID {
	t.Helper()
	resp := stored(t, cli, key)
	if len(resp.Kvs) != 1 {
		t.Fatalf("key %s: %d values", key, len(resp.Kvs))
	}
	return clientv3.LeaseID(resp.Kvs[0].Lease)
}

func grantedTTL(t *testing.T, cli *clientv3.Client, id clientv3.LeaseID) int64 {
	t.Helper()
	resp, err := cli.TimeToLive(ctxT(t), id)
	if err != nil {
		t.Fatal(err)
	}
	if resp.TTL < 0 {
		return -1 // expired or revoked
	}
	return resp.GrantedTTL
}

func TestRegisterLeases(t *testing.T) {
	prefix := testPrefix(t)
	r := newReg(t, nil, WithPrefix(prefix))
	cli := rawClient(t)
	w := watchState(t, r, registry.WatchService("leases"))

	s := svc("leases", "1.0.0", "n1")
	key := prefix + "leases/n1"

	// A TTL below etcd's minimum is rounded up, not refused.
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(300*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	first := leaseOf(t, cli, key)
	if first == 0 {
		t.Fatal("registered with a TTL but the key has no lease")
	}
	if got := grantedTTL(t, cli, first); got != 2 {
		t.Errorf("lease TTL = %d s, want 2 (300ms rounded up to etcd's minimum)", got)
	}

	// Heartbeats with the same TTL keep the lease: no new lease, no event.
	before := stored(t, cli, key).Header.Revision
	for range 5 {
		if err := r.Register(ctxT(t), s, registry.RegisterTTL(2*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if got := leaseOf(t, cli, key); got != first {
		t.Fatalf("heartbeat moved the node to lease %x, want %x", got, first)
	}
	if rev := stored(t, cli, key).Header.Revision; rev != before {
		t.Errorf("heartbeats of unchanged data wrote to etcd: revision %d -> %d", before, rev)
	}

	// Changed data: re-put on the same lease, one Update.
	s.Nodes[0].Metadata["i"] = "changed"
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	if got := leaseOf(t, cli, key); got != first {
		t.Fatalf("changed data moved the node to lease %x, want the same lease %x", got, first)
	}
	w.ev.Expect(t, 5*time.Second, registry.Create, "n1")
	got := w.ev.Expect(t, 5*time.Second, registry.Update, "n1")
	if got.Service.Nodes[0].Metadata["i"] != "changed" {
		t.Errorf("update carries %v", got.Service.Nodes[0].Metadata)
	}

	// Another TTL: a new lease; the old one is revoked.
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	second := leaseOf(t, cli, key)
	if second == first || grantedTTL(t, cli, second) != 10 {
		t.Fatalf("TTL change: lease %x (TTL %d), want a new lease of 10 s", second, grantedTTL(t, cli, second))
	}
	if ttl := grantedTTL(t, cli, first); ttl != -1 {
		t.Errorf("old lease %x still alive (TTL %d) after moving to a new one", first, ttl)
	}

	// TTL 0: no lease.
	if err := r.Register(ctxT(t), s); err != nil {
		t.Fatal(err)
	}
	if got := leaseOf(t, cli, key); got != 0 {
		t.Errorf("TTL 0: key on lease %x, want none", got)
	}
	if ttl := grantedTTL(t, cli, second); ttl != -1 {
		t.Errorf("lease %x still alive after moving to no lease", second)
	}

	// Back to a TTL, then Deregister: key deleted and lease revoked.
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	third := leaseOf(t, cli, key)
	if err := r.Deregister(ctxT(t), s); err != nil {
		t.Fatal(err)
	}
	if n := len(stored(t, cli, key).Kvs); n != 0 {
		t.Fatal("key still there after Deregister")
	}
	if ttl := grantedTTL(t, cli, third); ttl != -1 {
		t.Errorf("lease %x not revoked by Deregister", third)
	}
	w.ev.Expect(t, 5*time.Second, registry.Delete, "n1")

	// A negative TTL is invalid input.
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(-time.Second)); !errors.Is(err, registry.ErrInvalid) {
		t.Errorf("negative TTL: err = %v, want ErrInvalid", err)
	}
}

// A lease lost behind the registry's back (here revoked by another client,
// as after an expiry during a partition) is re-granted and the record put
// again at once, with a log line, without waiting for the next heartbeat.
func TestLeaseLostRegrants(t *testing.T) {
	prefix := testPrefix(t)
	lb := newLogBuf()
	r := newReg(t, lb, WithPrefix(prefix))
	cli := rawClient(t)
	s := svc("lost", "1.0.0", "n1")
	key := prefix + "lost/n1"
	// The client's keep-alive learns of the loss at its next keep-alive,
	// one third of the TTL later.
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(3*time.Second)); err != nil {
		t.Fatal(err)
	}
	old := leaseOf(t, cli, key)
	start := time.Now()
	if _, err := cli.Revoke(ctxT(t), old); err != nil {
		t.Fatal(err)
	}
	// No Register call from here on: the keeper alone restores the node,
	// well before the 3 s TTL would have ended.
	registrytest.Eventually(t, 2500*time.Millisecond, func() error {
		resp := stored(t, cli, key)
		if len(resp.Kvs) != 1 {
			return errors.New("key not restored")
		}
		if id := clientv3.LeaseID(resp.Kvs[0].Lease); id == old || id == 0 {
			return fmt.Errorf("key on lease %x", id)
		}
		return nil
	})
	t.Logf("lease revoked externally: record back on a new lease after %v", time.Since(start).Round(time.Millisecond))
	// The log line follows the put (the old lease is revoked in between).
	registrytest.Eventually(t, 2*time.Second, func() error {
		if !lb.Has("granting a new one", key) || !lb.Has("re-registered on a new lease", key) {
			return errors.New("the lease loss and the re-registration were not logged")
		}
		return nil
	})
	if ttl := grantedTTL(t, cli, leaseOf(t, cli, key)); ttl != 3 {
		t.Errorf("new lease TTL %d, want 3", ttl)
	}
}

// Someone deletes the key while the lease lives: the next heartbeat puts it
// back on the same lease.
func TestHeartbeatRestoresDeletedKey(t *testing.T) {
	prefix := testPrefix(t)
	r := newReg(t, nil, WithPrefix(prefix))
	cli := rawClient(t)
	s := svc("deleted", "1.0.0", "n1")
	key := prefix + "deleted/n1"
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(30*time.Second)); err != nil {
		t.Fatal(err)
	}
	lease := leaseOf(t, cli, key)
	if _, err := cli.Delete(ctxT(t), key); err != nil {
		t.Fatal(err)
	}
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(30*time.Second)); err != nil {
		t.Fatal(err)
	}
	if got := leaseOf(t, cli, key); got != lease {
		t.Errorf("restored on lease %x, want the same lease %x", got, lease)
	}
}

// Nodes not registered again within their TTL go away although the
// registry is alive and its keep-alive stream is healthy.
func TestNoHeartbeatExpires(t *testing.T) {
	prefix := testPrefix(t)
	lb := newLogBuf()
	r := newReg(t, lb, WithPrefix(prefix))
	w := watchState(t, r, registry.WatchService("expire"))
	start := time.Now()
	if err := r.Register(ctxT(t), svc("expire", "1.0.0", "n1", "n2"), registry.RegisterTTL(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	w.ev.Expect(t, 5*time.Second, registry.Delete, "n1")
	took := time.Since(start)
	t.Logf("TTL 2s, no heartbeat: Delete after %v", took.Round(time.Millisecond))
	if took > 3*time.Second {
		t.Errorf("Delete after %v, want about the 2 s TTL", took)
	}
	if !lb.Has("not registered again within its TTL") {
		t.Error("expiry not logged")
	}
	// The registrations and their keepers are gone.
	registrytest.Eventually(t, 5*time.Second, func() error {
		r.mu.Lock()
		defer r.mu.Unlock()
		if n := len(r.nodes); n != 0 {
			return fmt.Errorf("%d registrations still kept", n)
		}
		return nil
	})
}
