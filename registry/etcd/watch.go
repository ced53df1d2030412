package etcd

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/beacon-go/beacon/registry"
)

// watcher follows one prefix. Its state is what it has reported so far, so
// that a re-list after a compaction can report exactly the difference.
type watcher struct {
	r      *Registry
	q      *registry.Queue
	prefix string           // etcd key prefix watched
	state  registry.NodeSet // key relative to the registry prefix -> node
	rev    int64            // next revision to watch from
	ctx    context.Context  // ends with Stop, the watch's context, or Close
	cancel context.CancelFunc
}

// Watch lists the prefix of one service (WatchService) or of all services
// and returns a Watcher that reports the current nodes as Create events,
// then every change (see the package doc). The initial listing is bounded by
// ctx and the request timeout; if it fails, Watch returns an error wrapping
// registry.ErrUnavailable. The watch runs until Stop, until ctx is done, or
// until Close; it survives disconnects and compactions on its own.
func (r *Registry) Watch(ctx context.Context, opts ...registry.WatchOption) (registry.Watcher, error) {
	o, err := registry.WatchArgs(ctx, opts...)
	if err != nil {
		return nil, err
	}
	if r.isClosed() {
		return nil, registry.ErrClosed
	}
	w := &watcher{r: r, prefix: r.prefix}
	if o.Service != "" {
		w.prefix += o.Service + "/"
	}
	state, rev, err := r.listSet(ctx, w.prefix)
	if err != nil {
		return nil, r.fail(ctx, "watch", err)
	}
	w.state, w.rev = state, rev+1
	w.ctx, w.cancel = context.WithCancel(r.ctx)
	w.q = registry.NewQueue(ctx, w.cancel)

	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		w.q.Stop()
		return nil, registry.ErrClosed
	}
	r.wg.Add(1)
	r.mu.Unlock()

	for _, ev := range registry.Diff(nil, w.state, time.Now()) {
		w.push(ev.Type, ev.Service, ev.Timestamp)
	}
	go w.run()
	return w.q, nil
}

func (w *watcher) push(t registry.EventType, s *registry.Service, now time.Time) {
	// A copy: the reader may modify the event, the state must not change.
	w.q.Push(&registry.Event{Type: t, Service: s.Copy(), Timestamp: now})
}

func (w *watcher) run() {
	defer w.r.wg.Done()
	defer w.q.Stop()
	defer w.cancel()
	var (
		retry time.Duration
		fails int // interruptions in a row; only the first is logged above Debug
	)
	for {
		compacted, progressed, err := w.watchOnce()
		if w.ctx.Err() != nil {
			return
		}
		if progressed {
			retry, fails = 0, 0
		}
		fails++
		level := slog.LevelDebug
		if fails == 1 {
			level = slog.LevelInfo
		}
		if compacted {
			w.r.log.Warn("etcd registry: watch revision compacted; listing again", "prefix", w.prefix, "rev", w.rev, "err", err)
			if err := w.resync(); err == nil {
				retry, fails = 0, 0
				continue
			} else if w.ctx.Err() == nil {
				w.r.log.Log(context.Background(), level, "etcd registry: re-listing after compaction failed; retrying", "prefix", w.prefix, "err", err)
			}
		} else if isPermission(err) {
			if fails == 1 {
				level = slog.LevelError
			}
			w.r.log.Log(context.Background(), level, "etcd registry: watch refused: permission denied; retrying", "prefix", w.prefix, "rev", w.rev, "err", err)
		} else {
			w.r.log.Log(context.Background(), level, "etcd registry: watch interrupted; resuming from the last revision", "prefix", w.prefix, "rev", w.rev, "err", err)
		}
		retry = min(max(2*retry, retryMin), retryMax)
		t := time.NewTimer(retry)
		select {
		case <-w.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// watchOnce watches from w.rev until the watch ends. It reports whether it
// ended because w.rev was compacted and whether it delivered anything.
func (w *watcher) watchOnce() (compacted, progressed bool, err error) {
	// RequireLeader: a member cut off from its cluster ends the watch
	// instead of going silent, and the client moves to another member.
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(w.ctx))
	defer cancel()
	wch := w.r.cli.Watch(ctx, w.prefix, clientv3.WithPrefix(), clientv3.WithPrevKV(),
		clientv3.WithRev(w.rev), clientv3.WithProgressNotify())
	for resp := range wch {
		if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
			return true, progressed, resp.Err()
		}
		if err := resp.Err(); err != nil {
			return false, progressed, err
		}
		progressed = true
		if resp.IsProgressNotify() {
			w.rev = max(w.rev, resp.Header.Revision+1)
			continue
		}
		now := time.Now()
		for _, ev := range resp.Events {
			w.apply(ev, now)
			w.rev = max(w.rev, ev.Kv.ModRevision+1)
		}
	}
	return false, progressed, errors.New("watch channel closed")
}

// apply turns one etcd event into at most one registry event.
func (w *watcher) apply(ev *clientv3.Event, now time.Time) {
	rel := string(ev.Kv.Key[len(w.r.prefix):])
	old, had := w.state[rel]
	switch ev.Type {
	case clientv3.EventTypePut:
		if ev.PrevKv != nil && bytes.Equal(ev.PrevKv.Value, ev.Kv.Value) {
			return // same record written again: a heartbeat or a re-put
		}
		s, err := decode(rel, ev.Kv.Value)
		if err != nil {
			w.r.malformed(ev.Kv.Key, err)
			if had { // no longer a valid node
				delete(w.state, rel)
				w.push(registry.Delete, old, now)
			}
			return
		}
		w.state[rel] = s
		switch {
		case !had:
			w.push(registry.Create, s, now)
		case !registry.SameNode(old, s):
			w.push(registry.Update, s, now)
		}
	case clientv3.EventTypeDelete:
		if had {
			delete(w.state, rel)
			w.push(registry.Delete, old, now)
		}
	}
}

// resync lists the prefix again and reports the difference to the state.
func (w *watcher) resync() error {
	state, rev, err := w.r.listSet(w.ctx, w.prefix)
	if err != nil {
		return err
	}
	for _, ev := range registry.Diff(w.state, state, time.Now()) {
		w.push(ev.Type, ev.Service, ev.Timestamp)
	}
	w.state, w.rev = state, rev+1
	return nil
}
