package kubernetes

import (
	"context"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// expireLoop hides nodes when their Lease expires (no API event says so)
// and collects the objects of nodes expired for longer than the collection
// delay. It ends when the registry closes.
func (r *Registry) expireLoop() {
	defer close(r.loopDone)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		r.mu.Lock()
		var next time.Time
		for _, t := range r.expiry {
			if next.IsZero() || t.Before(next) {
				next = t
			}
		}
		for _, gs := range r.garbage {
			for _, g := range gs {
				if next.IsZero() || g.at.Before(next) {
					next = g.at
				}
			}
		}
		r.mu.Unlock()
		wait := time.Hour
		if !next.IsZero() {
			// A Lease's renew time has microseconds; wake just after.
			wait = max(next.Sub(r.o.now())+time.Millisecond, time.Millisecond)
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
		select {
		case <-r.stop:
			return
		case <-r.wake:
			continue
		case <-timer.C:
		}
		now := r.o.now()
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return
		}
		for name, t := range r.expiry {
			if !t.After(now) {
				r.recomputeLocked(name, now)
			}
		}
		due := r.dueGarbageLocked(now)
		r.mu.Unlock()
		for _, g := range due {
			r.collect(g)
		}
	}
}

// collect deletes an expired node's Lease and EndpointSlice, each only if
// unchanged since it was judged expired (a node that came back keeps its
// objects). Several registries may try; all but one find nothing to do.
func (r *Registry) collect(g *garbage) {
	ctx, cancel := context.WithTimeout(r.bg, 10*time.Second)
	defer cancel()
	log := r.log.With("service", g.service, "node", g.node, "endpointslice", g.slice, "cause", g.cause)
	if g.hasLease {
		err := r.api.delete(ctx, resLeases, g.lease, &metav1.Preconditions{UID: &g.leaseUID, ResourceVersion: &g.leaseRV})
		if err != nil && !apierrors.IsNotFound(err) {
			if apierrors.IsConflict(err) {
				log.Debug("kubernetes registry: expired node came back; not collected")
			} else {
				log.Debug("kubernetes registry: cannot collect an expired node's Lease", "err", err)
			}
			return
		}
	}
	err := r.api.delete(ctx, resEndpointSlices, g.slice, &metav1.Preconditions{UID: &g.sliceUID, ResourceVersion: &g.sliceRV})
	switch {
	case err == nil:
		log.Info("kubernetes registry: collected an expired node")
	case apierrors.IsNotFound(err), apierrors.IsConflict(err):
	default:
		log.Debug("kubernetes registry: cannot collect an expired node's EndpointSlice", "err", err)
	}
}
