package etcd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/beacon-go/beacon/registry"
)

// Backoff of the keeper's attempts to restore a lost lease.
const (
	retryMin = 50 * time.Millisecond
	retryMax = time.Second
	// restoreTimeout bounds one attempt to restore a lost lease.
	restoreTimeout = time.Second
)

// node is one registration made through this Registry: one key, its record,
// its lease and the keeper goroutine that keeps the lease alive, restores it
// when lost and removes the node when it is not registered again in time.
type node struct {
	key    string
	sem    chan struct{} // a lock that can be given up when a context ends
	wake   chan struct{} // (1) tells the keeper to read the state again
	ctx    context.Context
	cancel context.CancelFunc // ends the registration: keeper and keep-alive

	// deadline (Unix ns; 0: never) is when the node is removed unless
	// registered again. Register sets it before it waits for sem, so that
	// a heartbeat counts even while etcd (and so the lock) is slow.
	deadline atomic.Int64

	// Guarded by sem.
	val      []byte           // the record
	ttl      int64            // lease TTL, seconds; 0: no lease
	lease    clientv3.LeaseID // 0: none
	kaCh     <-chan *clientv3.LeaseKeepAliveResponse
	kaCancel context.CancelFunc
	written  bool // the record was written at least once
	lost     bool // the lease (or the first write) must be (re)established
	dead     bool // ended; the node is no longer in Registry.nodes
	failures int  // failed restore attempts in a row
}

func (n *node) lock(ctx context.Context) bool {
	select {
	case n.sem <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (n *node) unlock() { <-n.sem }

// extend records a heartbeat: the node lives ttl seconds from now (forever
// with 0), and the keeper learns of it.
func (n *node) extend(ttl int64) {
	var d int64
	if ttl > 0 {
		d = time.Now().Add(time.Duration(ttl) * time.Second).UnixNano()
	}
	n.deadline.Store(d)
	n.poke()
}

// expired reports whether the node's deadline has passed.
func (n *node) expired(now time.Time) bool {
	d := n.deadline.Load()
	return d != 0 && now.UnixNano() >= d
}

func (n *node) poke() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// getNode returns the live registration of key, creating it (and starting
// its keeper) if needed.
func (r *Registry) getNode(key string) (*node, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, registry.ErrClosed
	}
	if n := r.nodes[key]; n != nil {
		return n, nil
	}
	n := &node{key: key, sem: make(chan struct{}, 1), wake: make(chan struct{}, 1)}
	n.ctx, n.cancel = context.WithCancel(r.ctx)
	r.nodes[key] = n
	r.wg.Add(1)
	go r.keep(n)
	return n, nil
}

func (r *Registry) lookupNode(key string) *node {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nodes[key]
}

// endLocked ends a registration: it leaves the map, its keeper and
// keep-alive stop. The caller holds n.sem.
func (r *Registry) endLocked(n *node) {
	n.dead = true
	r.mu.Lock()
	if r.nodes[n.key] == n {
		delete(r.nodes, n.key)
	}
	r.mu.Unlock()
	n.cancel()
}

// heartbeat returns the registration of key, created if needed, with its
// deadline extended by ttl.
func (r *Registry) heartbeat(key string, ttl int64) (*node, error) {
	n, err := r.getNode(key)
	if err != nil {
		return nil, err
	}
	n.extend(ttl)
	return n, nil
}

func (r *Registry) registerNode(ctx context.Context, n *node, val []byte, ttl int64) error {
	for {
		if !n.lock(ctx) {
			return r.fail(ctx, "register "+n.key, ctx.Err())
		}
		if n.dead { // ended while we waited: start over with a new one
			n.unlock()
			var err error
			if n, err = r.heartbeat(n.key, ttl); err != nil {
				return err
			}
			continue
		}
		err := r.registerLocked(ctx, n, val, ttl)
		if err != nil && !n.written && n.ttl == 0 {
			// Nothing to keep alive and nothing written: forget it.
			r.endLocked(n)
		}
		n.unlock()
		n.poke()
		if err != nil {
			return r.fail(ctx, "register "+n.key, err)
		}
		return nil
	}
}

func (r *Registry) registerLocked(ctx context.Context, n *node, val []byte, ttl int64) error {
	prevTTL := n.ttl
	n.val, n.ttl = val, ttl
	ctx, cancel := r.reqCtx(ctx)
	defer cancel()
	if !n.written || n.lost || prevTTL != ttl {
		wasLost, old := n.written && n.lost, n.lease
		err := r.establishLocked(ctx, n)
		if err == nil && wasLost {
			r.log.Info("etcd registry: re-registered on a new lease", "key", n.key, "lease", leaseHex(n.lease), "old_lease", leaseHex(old))
		}
		return err
	}
	// Heartbeat: one transaction that re-puts the record on the same lease
	// only if it changed (or was deleted by someone else).
	put := []clientv3.OpOption{}
	if n.lease != 0 {
		put = append(put, clientv3.WithLease(n.lease))
	}
	resp, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(n.key), "=", string(val)),
			clientv3.Compare(clientv3.LeaseValue(n.key), "=", n.lease)).
		Else(clientv3.OpPut(n.key, string(val), put...)).
		Commit()
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		old := n.lease
		r.log.Warn("etcd registry: lease lost; granting a new one", "key", n.key, "lease", leaseHex(old))
		if err := r.establishLocked(ctx, n); err != nil {
			return err
		}
		r.log.Info("etcd registry: re-registered on a new lease", "key", n.key, "lease", leaseHex(n.lease), "old_lease", leaseHex(old))
		return nil
	}
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		r.log.Debug("etcd registry: record changed or missing; put it again", "key", n.key, "lease", leaseHex(n.lease))
	}
	return nil
}

// establishLocked grants a new lease (unless the TTL is 0), puts the record
// on it, starts its keep-alive and revokes the previous lease. On failure
// the node is marked lost for the keeper to retry. The caller holds n.sem.
func (r *Registry) establishLocked(ctx context.Context, n *node) error {
	n.lost = true
	var id clientv3.LeaseID
	var put []clientv3.OpOption
	if n.ttl > 0 {
		g, err := r.cli.Grant(ctx, n.ttl)
		if err != nil {
			return err
		}
		id = g.ID
		put = append(put, clientv3.WithLease(id))
	}
	if _, err := r.cli.Put(ctx, n.key, string(n.val), put...); err != nil {
		if id != 0 {
			_, _ = r.cli.Revoke(ctx, id) // best effort; unused, it expires anyway
		}
		return err
	}
	var ch <-chan *clientv3.LeaseKeepAliveResponse
	var kaCancel context.CancelFunc
	if id != 0 {
		var kctx context.Context
		kctx, kaCancel = context.WithCancel(n.ctx)
		var err error
		if ch, err = r.cli.KeepAlive(kctx, id); err != nil {
			kaCancel()
			return err
		}
	}
	old, oldCancel := n.lease, n.kaCancel
	n.lease, n.kaCh, n.kaCancel = id, ch, kaCancel
	n.written, n.lost, n.failures = true, false, 0
	if oldCancel != nil {
		oldCancel()
	}
	if old != 0 {
		// The key has moved to the new lease, so revoking the old one
		// deletes nothing. It may be gone already.
		if _, err := r.cli.Revoke(ctx, old); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			r.log.Debug("etcd registry: revoke old lease", "key", n.key, "lease", leaseHex(old), "err", err)
		}
	}
	return nil
}

func (r *Registry) deregisterNode(ctx context.Context, key string) error {
	n := r.lookupNode(key)
	if n != nil {
		if !n.lock(ctx) {
			return fmt.Errorf("etcd: deregister %s: %w", key, ctx.Err())
		}
		defer n.unlock()
		if n.dead {
			n = nil
		}
	}
	rctx, cancel := r.reqCtx(ctx)
	defer cancel()
	_, err := r.cli.Delete(rctx, key)
	if n != nil {
		lease := n.lease
		r.endLocked(n)
		if lease != 0 && err == nil {
			if _, rerr := r.cli.Revoke(rctx, lease); rerr != nil && !errors.Is(rerr, rpctypes.ErrLeaseNotFound) {
				r.log.Debug("etcd registry: revoke lease", "key", key, "lease", leaseHex(lease), "err", rerr)
			}
		}
	}
	if err != nil {
		return r.fail(ctx, "deregister "+key, err)
	}
	return nil
}

// keep is the keeper of one registration. It drains the keep-alive channel
// and restores the lease when it is lost: when the channel closes (lease
// expired or revoked, stream given up) or when no keep-alive answer came for
// a whole TTL (etcd may have expired the lease meanwhile). It removes the
// node when its deadline passes.
func (r *Registry) keep(n *node) {
	defer r.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var (
		closed    <-chan *clientv3.LeaseKeepAliveResponse // a keep-alive channel seen closed
		current   <-chan *clientv3.LeaseKeepAliveResponse // the channel lastAlive is about
		lastAlive time.Time                               // last keep-alive answer (or lease grant)
		retry     time.Duration
	)
	for {
		if !n.lock(n.ctx) {
			return
		}
		if n.dead {
			n.unlock()
			return
		}
		now := time.Now()
		if n.kaCh != current {
			current, lastAlive = n.kaCh, now
		}
		ttl := time.Duration(n.ttl) * time.Second
		switch {
		case n.lost || n.kaCh == nil:
		case closed == n.kaCh:
			n.lost = true
			r.log.Warn("etcd registry: lease lost (keep-alive ended); granting a new one",
				"key", n.key, "lease", leaseHex(n.lease))
		case now.Sub(lastAlive) > ttl:
			n.lost = true
			r.log.Warn("etcd registry: no keep-alive answer for a whole TTL; lease presumed lost, granting a new one",
				"key", n.key, "lease", leaseHex(n.lease), "ttl", ttl)
		}
		closed = nil
		if n.expired(now) {
			r.expireLocked(n)
			n.unlock()
			return
		}
		if n.lost && n.ttl > 0 {
			start := time.Now()
			switch {
			case r.restoreLocked(n):
				retry = 0
				current, lastAlive = n.kaCh, time.Now()
			case time.Since(start) >= restoreTimeout/2:
				// The attempt waited for a connection: try again soon,
				// a reconnect lets the next one through at once.
				retry = retryMin
			default: // etcd answered with an error: back off
				retry = min(max(2*retry, retryMin), retryMax)
			}
		}
		ch, waiting := n.kaCh, n.lost && n.ttl > 0
		n.unlock()

		wait := time.Hour
		if d := n.deadline.Load(); d != 0 {
			wait = max(time.Until(time.Unix(0, d)), 0)
		}
		switch {
		case waiting:
			wait = min(wait, retry)
		case ch != nil:
			wait = min(wait, max(time.Until(lastAlive.Add(ttl+time.Millisecond)), 0))
		}
		timer.Reset(wait)
		select {
		case <-n.ctx.Done():
			return
		case <-n.wake:
		case <-timer.C:
		case _, ok := <-ch:
			if ok {
				lastAlive = time.Now()
			} else {
				closed = ch
			}
		}
	}
}

// restoreLocked makes one attempt to grant a new lease and put the record.
// Attempts are short (restoreTimeout): during a leader election etcd drops
// proposals and the request hangs until the deadline, while a new attempt
// a moment later succeeds; and Register waits for the attempt to finish.
func (r *Registry) restoreLocked(n *node) bool {
	ctx, cancel := context.WithTimeout(n.ctx, min(r.reqTO, restoreTimeout))
	defer cancel()
	old, attempts := n.lease, n.failures+1
	if err := r.establishLocked(ctx, n); err != nil {
		n.failures++
		if n.ctx.Err() == nil {
			level := slog.LevelDebug // the first failure says it; the rest would flood
			if n.failures == 1 {
				level = slog.LevelWarn
			}
			if isPermission(err) { // the credentials, not etcd's health
				err = fmt.Errorf("%w: %w", registry.ErrPermission, err)
				if n.failures == 1 {
					level = slog.LevelError
				}
			}
			r.log.Log(context.Background(), level, "etcd registry: re-registering failed; retrying until etcd answers or the TTL ends",
				"key", n.key, "attempt", n.failures, "err", err)
		}
		return false
	}
	r.log.Info("etcd registry: re-registered on a new lease", "key", n.key, "lease", leaseHex(n.lease), "old_lease", leaseHex(old),
		"attempts", attempts)
	return true
}

// expireLocked removes a node that was not registered again within its TTL.
func (r *Registry) expireLocked(n *node) {
	lease := n.lease
	r.endLocked(n)
	r.log.Info("etcd registry: node not registered again within its TTL; removing it", "key", n.key, "ttl", time.Duration(n.ttl)*time.Second)
	if lease == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(r.ctx, r.reqTO)
	defer cancel()
	if _, err := r.cli.Revoke(ctx, lease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) && r.ctx.Err() == nil {
		r.log.Warn("etcd registry: revoke expired lease (it will expire by itself)", "key", n.key, "lease", leaseHex(lease), "err", err)
	}
}

func leaseHex(id clientv3.LeaseID) string { return fmt.Sprintf("%x", int64(id)) }
