package etcd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"

	"github.com/beacon-go/beacon/registry"
)

// watcher follows one prefix of Beacon's layout and the go-zero keys that
// go with it (WithGoZero): one etcd watch per span, each resumed from its
// own revision. Its state is what it has reported so far, so that a re-list
// after a compaction can report exactly the difference. The state keeps,
// per node, hashes of its record and what a Delete event reports, not the
// record: records go to the reader in events (decoded for it alone, so it
// may modify them), and the watcher keeps about 100 bytes a node.
type watcher struct {
	r      *Registry
	q      *registry.Queue
	spans  []span           // key ranges watched
	state  map[string]entry // etcd key -> node
	revs   []int64          // per span, the next revision to watch from
	ctx    context.Context  // ends with Stop, the watch's context, or Close
	cancel context.CancelFunc
}

// entry is what a watcher keeps of a node it reported.
type entry struct {
	raw     uint64 // valueSum of the record's bytes: the same bytes again are no change
	sum     uint64 // recordSum of the decoded record: the same data, written otherwise, neither
	version string // for the Delete event
	address string
}

func entryOf(raw uint64, s *registry.Service) entry {
	return entry{raw: raw, sum: recordSum(s), version: s.Version, address: s.Nodes[0].Address}
}

// gone returns the Delete event's service of the node at etcd key: its
// name, version, ID and address (registry.Event promises the name and the
// ID), and for a go-zero node its metadata too.
func (w *watcher) gone(key string, e entry) *registry.Service {
	for _, sp := range w.spans {
		if sp.gz != nil && strings.HasPrefix(key, sp.prefix) {
			if s, err := decodeGoZero(*sp.gz, key, []byte(e.address)); err == nil {
				return s
			}
			return &registry.Service{Name: sp.gz.name, Nodes: []*registry.Node{{ID: key[len(sp.prefix):], Address: e.address}}}
		}
	}
	name, id, _ := strings.Cut(strings.TrimPrefix(key, w.r.prefix), "/")
	return &registry.Service{Name: name, Version: e.version, Nodes: []*registry.Node{{ID: id, Address: e.address}}}
}

// newWatcher returns a watcher of spans whose state was listed at rev.
func (r *Registry) newWatcher(spans []span, state map[string]entry, rev int64) *watcher {
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
	var (
		state   map[string]entry
		creates []*registry.Service
	)
	rev, err := r.listRecords(ctx, spans, &decoder{whole: true},
		func() { state, creates = make(map[string]entry), nil },
		func(key string, kv *mvccpb.KeyValue, s *registry.Service) {
			state[key] = entryOf(valueSum(kv.Value), s)
			creates = append(creates, s)
		})
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

	// The current nodes, in key order; however many, they do not count
	// against registry.MaxQueued.
	now := time.Now()
	evs := make([]*registry.Event, len(creates))
	for i, s := range creates {
		evs[i] = &registry.Event{Type: registry.Create, Service: s, Timestamp: now}
	}
	w.q.PushInitial(evs)
	go w.run()
	return w.q, nil
}

// push queues an event; s is the reader's from then on.
func (w *watcher) push(t registry.EventType, s *registry.Service, now time.Time) {
	w.q.Push(&registry.Event{Type: t, Service: s, Timestamp: now})
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

// requireLeader is the outgoing metadata of clientv3.WithRequireLeader,
// made once (gRPC only reads it).
var requireLeader = metadata.Pairs(rpctypes.MetadataRequireLeaderKey, rpctypes.MetadataHasLeader)

// watchOnce watches every span from its revision until one watch ends. It
// reports whether it ended because a revision was compacted and whether it
// delivered anything.
func (w *watcher) watchOnce() (compacted, progressed bool, err error) {
	// RequireLeader (clientv3.WithRequireLeader, with metadata shared by
	// every watch): a member cut off from its cluster ends the watch
	// instead of going silent, and the client moves to another member.
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(w.ctx, requireLeader))
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
		// No WithPrevKV: it would double the bytes of every event, and the
		// state has what the previous values would tell.
		wch := w.r.cli.Watch(ctx, sp.prefix, clientv3.WithPrefix(),
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

// apply turns one etcd event of span sp into at most one registry event.
// Its cost is that of the event's record: one decode at most (none for a
// value over MaxRecordSize, for bad bytes seen before, or for the same
// bytes again), whatever the size of the state.
func (w *watcher) apply(sp span, ev *clientv3.Event, now time.Time) {
	key := string(ev.Kv.Key)
	old, had := w.state[key]
	switch ev.Type {
	case clientv3.EventTypePut:
		raw := valueSum(ev.Kv.Value)
		if had && old.raw == raw {
			return // the same record written again
		}
		s, err := w.decodeEvent(sp, ev.Kv, raw)
		if err != nil {
			if had { // no longer a valid node
				delete(w.state, key)
				w.push(registry.Delete, w.gone(key, old), now)
			}
			return
		}
		e := entryOf(raw, s)
		w.state[key] = e
		switch {
		case !had:
			w.push(registry.Create, s, now)
		case e.sum != old.sum:
			w.push(registry.Update, s, now)
		}
	case clientv3.EventTypeDelete:
		w.r.forgetBad(ev.Kv.Key)
		if had {
			delete(w.state, key)
			w.push(registry.Delete, w.gone(key, old), now)
		}
	}
}

// decodeEvent decodes the record of a put, skipping (before decoding)
// values over MaxRecordSize and bad values written again.
func (w *watcher) decodeEvent(sp span, kv *mvccpb.KeyValue, raw uint64) (*registry.Service, error) {
	if len(kv.Value) > MaxRecordSize {
		err := fmt.Errorf("%w: value of %d bytes, more than %d", registry.ErrMalformed, len(kv.Value), MaxRecordSize)
		w.r.badRecords().Report(string(kv.Key), uint64(kv.ModRevision), 0, len(kv.Value), err)
		return nil, err
	}
	bad := w.r.badRecords()
	if bad.Has(string(kv.Key)) && bad.Known(string(kv.Key), uint64(kv.ModRevision), raw) {
		return nil, registry.ErrMalformed
	}
	s, err := w.r.decodeIn(sp, nil, kv.Key, kv.Value)
	if err != nil {
		w.r.malformed(kv.Key, kv.ModRevision, kv.Value, err)
		return nil, err
	}
	w.r.forgetBad(kv.Key)
	return s, nil
}

// resync lists the spans again and reports the difference to the state:
// Create and Update events in key order, then Delete events in key order,
// all with one timestamp (registry.Diff's order).
func (w *watcher) resync() error {
	var (
		state   map[string]entry
		changes []*registry.Event
	)
	rev, err := w.r.listRecords(w.ctx, w.spans, &decoder{whole: true},
		func() { state, changes = make(map[string]entry), nil },
		func(key string, kv *mvccpb.KeyValue, s *registry.Service) {
			e := entryOf(valueSum(kv.Value), s)
			state[key] = e
			switch old, had := w.state[key]; {
			case !had:
				changes = append(changes, &registry.Event{Type: registry.Create, Service: s})
			case old.sum != e.sum:
				changes = append(changes, &registry.Event{Type: registry.Update, Service: s})
			}
		})
	if err != nil {
		return err
	}
	now := time.Now()
	for _, ev := range changes {
		w.push(ev.Type, ev.Service, now)
	}
	for _, key := range slices.Sorted(maps.Keys(w.state)) {
		if _, ok := state[key]; !ok {
			w.push(registry.Delete, w.gone(key, w.state[key]), now)
		}
	}
	w.state = state
	w.setRev(rev + 1)
	return nil
}
