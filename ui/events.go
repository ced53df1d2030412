package ui

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/beacon-go/beacon/internal/backoff"
	"github.com/beacon-go/beacon/registry"
)

// Event is one registry event as the event stream sends it (SSE event
// "registry", with its ID as the SSE id, so a page that reconnects gets what
// it missed).
type Event struct {
	ID       uint64            `json:"id"`
	Type     string            `json:"type"` // create, update, delete
	Time     time.Time         `json:"time"`
	Service  string            `json:"service"`
	Version  string            `json:"version"`
	Node     string            `json:"node"`
	Address  string            `json:"address"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// HealthEvent says that the dashboard's selector ejected a node or took it
// back (SSE event "health").
type HealthEvent struct {
	Service string `json:"service"`
	Node    string `json:"node"`
	Ejected bool   `json:"ejected"`
}

// WatchStatus says whether the registry watch runs (SSE event "watch"):
// sent when a stream starts and whenever it changes.
type WatchStatus struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// message is one SSE message, encoded once for every stream.
type message struct {
	id   uint64 // 0: not a registry event
	data []byte // "event: ...\ndata: ...\n\n", with the id line
}

// hub fans the registry watch out to the event streams and keeps the last
// events for streams that start later.
type hub struct {
	mu     sync.Mutex
	ring   []message // the last registry events, oldest first
	max    int
	nextID uint64
	status message
	subs   map[chan message]struct{}
	closed bool
}

func newHub(history int) *hub {
	h := &hub{max: history, nextID: 1, subs: map[chan message]struct{}{}}
	h.status = encode("watch", 0, WatchStatus{OK: false, Error: "starting"})
	return h
}

func encode(event string, id uint64, v any) message {
	data, err := json.Marshal(v)
	if err != nil {
		data, _ = json.Marshal(map[string]string{"error": err.Error()})
	}
	// JSON has no raw newlines, so the data fits one "data:" line.
	b := fmt.Appendf(nil, "event: %s\n", event)
	if id != 0 {
		b = fmt.Appendf(b, "id: %d\n", id)
	}
	b = append(b, "data: "...)
	b = append(b, data...)
	b = append(b, "\n\n"...)
	return message{id: id, data: b}
}

// publish sends a message to every stream; a stream too slow to take it is
// dropped (its page reconnects and gets what it missed from the history).
func (h *hub) publishLocked(m message) {
	for c := range h.subs {
		select {
		case c <- m:
		default:
			delete(h.subs, c)
			close(c)
		}
	}
}

func (h *hub) event(ev *registry.Event) {
	e := Event{Type: ev.Type.String(), Time: ev.Timestamp, Service: ev.Service.Name, Version: ev.Service.Version}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	if len(ev.Service.Nodes) > 0 && ev.Service.Nodes[0] != nil {
		n := ev.Service.Nodes[0]
		e.Node, e.Address, e.Metadata = n.ID, n.Address, n.Metadata
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	e.ID = h.nextID
	h.nextID++
	m := encode("registry", e.ID, e)
	if len(h.ring) == h.max {
		copy(h.ring, h.ring[1:])
		h.ring = h.ring[:h.max-1]
	}
	h.ring = append(h.ring, m)
	h.publishLocked(m)
}

func (h *hub) health(service, node string, ejected bool) {
	m := encode("health", 0, HealthEvent{Service: service, Node: node, Ejected: ejected})
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.closed {
		h.publishLocked(m)
	}
}

func (h *hub) watchStatus(err error) {
	st := WatchStatus{OK: err == nil}
	if err != nil {
		st.Error = err.Error()
	}
	m := encode("watch", 0, st)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed || string(m.data) == string(h.status.data) {
		return
	}
	h.status = m
	h.publishLocked(m)
}

// subscribe returns a channel of the messages after the registry event
// with ID after (0: the whole history), the history and watch status
// already in it; nil when the hub is closed or max streams run.
func (h *hub) subscribe(after uint64, max int) chan message {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed || len(h.subs) >= max {
		return nil
	}
	if after >= h.nextID {
		after = 0 // an ID of an earlier server (restarted): all we have
	}
	c := make(chan message, h.max+64)
	c <- h.status
	for _, m := range h.ring {
		if m.id > after {
			c <- m
		}
	}
	h.subs[c] = struct{}{}
	return c
}

func (h *hub) unsubscribe(c chan message) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[c]; ok {
		delete(h.subs, c)
		close(c)
	}
}

// close ends every stream; later subscriptions fail.
func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for c := range h.subs {
		delete(h.subs, c)
		close(c)
	}
}

// watch follows the whole registry until the server closes, starting a
// new watch (after a backoff) whenever one fails. A new watch reports the
// current nodes first, as creates: the log shows them again.
func (s *Server) watch() {
	b := backoff.New(100*time.Millisecond, 10*time.Second)
	for s.ctx.Err() == nil {
		w, err := s.reg.Watch(s.ctx)
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			s.o.log.Warn("ui: registry watch", "err", err)
			s.hub.watchStatus(fmt.Errorf("registry watch: %w", err))
			backoff.Sleep(s.ctx, b.Next())
			continue
		}
		s.hub.watchStatus(nil)
		for {
			ev, err := w.Next()
			if err != nil {
				if s.ctx.Err() == nil {
					s.o.log.Warn("ui: registry watch ended", "err", err)
					s.hub.watchStatus(fmt.Errorf("registry watch ended: %w", err))
				}
				break
			}
			b.Reset()
			if ev != nil && ev.Service != nil {
				s.hub.event(ev)
			}
		}
		w.Stop()
		backoff.Sleep(s.ctx, b.Next())
	}
}

// events serves the event stream (text/event-stream): the watch status,
// the registry events after the Last-Event-ID the browser sends when it
// reconnects (all those kept, at first), then every event as it happens.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	var after uint64
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		after, _ = strconv.ParseUint(v, 10, 64)
	}
	c := s.hub.subscribe(after, s.o.maxStreams)
	if c == nil {
		httpError(w, http.StatusServiceUnavailable, "too many event streams, or shutting down")
		return
	}
	defer s.hub.unsubscribe(c)
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	write := func(b []byte) bool {
		rc.SetWriteDeadline(time.Now().Add(10 * time.Second)) // a page that stops reading holds nothing for long
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !write([]byte("retry: 1000\n\n")) {
		return
	}
	tick := time.NewTicker(s.o.keepAlive)
	defer tick.Stop()
	for {
		select {
		case m, ok := <-c:
			if !ok {
				return
			}
			if !write(m.data) {
				return
			}
		case <-tick.C:
			if !write([]byte(": keep-alive\n\n")) {
				return
			}
		case <-r.Context().Done():
			return
		}
	}
}
