package etcd

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/beacon-go/beacon/registry"
)

// watcher follows one prefix of Beacon's layout and the go-zero keys that
// go with it (WithGoZero): one etcd watch per span, each resumed from its
// own revision. Its state is what it has reported so far, so that a re-list
// after a compaction can report exactly the difference.
type watcher struct {
	r      *Registry
	q      *registry.Queue
	spans  []span           // key ranges watched
	state  registry.NodeSet // etcd key -> node
	revs   []int64          // per span, the next revision to watch from
	ctx    context.Context  // ends with Stop, the watch's context, or Close
	cancel context.CancelFunc
}

// newWatcher returns a watcher of spans whose state was listed at rev.
func (r *Registry) newWatcher(spans []span, state registry.NodeSet, rev int64) *watcher {
	w := &watcher{r: r, spans: spans, state: state, revs: make([]int64, len(spans))}
	w.setRev(rev + 1)
	return w
}

func (w *watcher) setRev(rev int64) {
	for i := range w.revs {
		w.revs[i] = rev
	}
}

// prefix names what the watcher watches, for log lines.
func (w *watcher) prefix() string {
	if len(w.spans) == 1 {
		return w.spans[0].prefix
	}
	ps := make([]string, len(w.spans))
	for i, sp := range w.spans {
		ps[i] = sp.prefix
	}
	return strings.Join(ps, ",")
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
	spans := r.spans(o.Service)
	state, rev, err := r.listSet(ctx, spans)
	if err != nil {
		return nil, r.fail(ctx, "watch", err)
	}
	w := r.newWatcher(spans, state, rev)
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
			w.r.log.Warn("etcd registry: watch revision compacted; listing again", "prefix", w.prefix(), "rev", w.revs, "err", err)
			if err := w.resync(); err == nil {
				retry, fails = 0, 0
				continue
			} else if w.ctx.Err() == nil {
				w.r.log.Log(context.Background(), level, "etcd registry: re-listing after compaction failed; retrying", "prefix", w.prefix(), "err", err)
			}
		} else if isPermission(err) {
			if fails == 1 {
				level = slog.LevelError
			}
			w.r.log.Log(context.Background(), level, "etcd registry: watch refused: permission denied; retrying", "prefix", w.prefix(), "rev", w.revs, "err", err)
		} else {
			w.r.log.Log(context.Background(), level, "etcd registry: watch interrupted; resuming from the last revision", "prefix", w.prefix(), "rev", w.revs, "err", err)
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

// watchOnce watches every span from its revision until one watch ends. It
// reports whether it ended because a revision was compacted and whether it
// delivered anything.
func (w *watcher) watchOnce() (compacted, progressed bool, err error) {
	// RequireLeader: a member cut off from its cluster ends the watch
	// instead of going silent, and the client moves to another member.
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(w.ctx))
	type spanResp struct {
		i    int
		resp clientv3.WatchResponse
		ok   bool
	}
	var (
		merged = make(chan spanResp)
		wg     sync.WaitGroup
	)
	defer func() {
		cancel() // the client closes the watch channels
		wg.Wait()
	}()
	for i, sp := range w.spans {
		wch := w.r.cli.Watch(ctx, sp.prefix, clientv3.WithPrefix(), clientv3.WithPrevKV(),
			clientv3.WithRev(w.revs[i]), clientv3.WithProgressNotify())
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				resp, ok := <-wch
				select {
				case merged <- spanResp{i, resp, ok}:
				case <-ctx.Done():
					for range wch { // drain until the client closes it
					}
					return
				}
				if !ok {
					return
				}
			}
		}()
	}
	for {
		var m spanResp
		select {
		case m = <-merged:
		case <-ctx.Done():
			return false, progressed, ctx.Err()
		}
		if !m.ok {
			return false, progressed, errors.New("watch channel closed")
		}
		resp := m.resp
		if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
			return true, progressed, resp.Err()
		}
		if err := resp.Err(); err != nil {
			return false, progressed, err
		}
		progressed = true
		if resp.IsProgressNotify() {
			w.revs[m.i] = max(w.revs[m.i], resp.Header.Revision+1)
			continue
		}
		now := time.Now()
		for _, ev := range resp.Events {
			w.apply(w.spans[m.i], ev, now)
			w.revs[m.i] = max(w.revs[m.i], ev.Kv.ModRevision+1)
		}
	}
}

// apply turns one etcd event into at most one registry event.
func (w *watcher) apply(sp span, ev *clientv3.Event, now time.Time) {
	key := string(ev.Kv.Key)
	old, had := w.state[key]
	switch ev.Type {
	case clientv3.EventTypePut:
		if ev.PrevKv != nil && bytes.Equal(ev.PrevKv.Value, ev.Kv.Value) {
			return // same record written again: a heartbeat or a re-put
		}
		s, err := sp.decode(key, ev.Kv.Value)
		if err != nil {
			w.r.malformed(ev.Kv.Key, err)
			if had { // no longer a valid node
				delete(w.state, key)
				w.push(registry.Delete, old, now)
			}
			return
		}
		w.state[key] = s
		switch {
		case !had:
			w.push(registry.Create, s, now)
		case !registry.SameNode(old, s):
			w.push(registry.Update, s, now)
		}
	case clientv3.EventTypeDelete:
		if had {
			delete(w.state, key)
			w.push(registry.Delete, old, now)
		}
	}
}

// resync lists the prefix again and reports the difference to the state.
func (w *watcher) resync() error {
	state, rev, err := w.r.listSet(w.ctx, w.spans)
	if err != nil {
		return err
	}
	for _, ev := range registry.Diff(w.state, state, time.Now()) {
		w.push(ev.Type, ev.Service, ev.Timestamp)
	}
	w.state = state
	w.setRev(rev + 1)
	return nil
}
