package server

import (
	"context"
	"sync"
	"time"
)

// stream is one wire request in flight, and its handler's context: one
// allocation per request instead of context.WithTimeout's timer context,
// timer and cancel function, a goroutine's closure and the response
// metadata holder.
//
// It ends (Err non-nil, Done closed) at its deadline, on the client's
// Cancel frame, or when its connection's context ends (the connection
// closed: cause ErrConnClosed; the server stopped: ErrStopped), and when
// its request is finished. The done channel and the deadline's timer are
// made only when someone asks for Done (or AfterFunc): a handler that never
// selects on its context costs neither; Err reads the clock instead.
//
// context.Cause works as with the standard contexts: the connection's
// cause when the connection ended it, and Err otherwise (see Value).
type stream struct {
	parent   context.Context // the connection's context: values and cause
	cause    any             // the standard library's cancel-cause key (Server.causeKey)
	deadline time.Time
	id       uint64 // the call's ID on its connection

	mu    sync.Mutex
	done  chan struct{} // made by Done
	timer *time.Timer   // made by Done when there is a deadline
	err   error
	own   bool // err was set by the stream itself (deadline, Cancel), not by the connection
	after []*afterFunc

	respMeta // response metadata (SetResponseMetadata)
}

type afterFunc struct{ f func() }

func newStream(parent context.Context, causeKey any, id uint64, timeout time.Duration, now time.Time) *stream {
	s := &stream{parent: parent, cause: causeKey, id: id}
	if timeout > 0 {
		s.deadline = now.Add(timeout)
	}
	return s
}

func (s *stream) Deadline() (time.Time, bool) { return s.deadline, !s.deadline.IsZero() }

func (s *stream) Done() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.armLocked()
	return s.done
}

// armLocked makes the done channel and the deadline's timer; s.mu is held.
func (s *stream) armLocked() {
	if s.done != nil {
		return
	}
	s.done = make(chan struct{})
	if s.err == nil {
		s.checkLocked(time.Time{})
	}
	if s.err != nil {
		close(s.done)
		return
	}
	if !s.deadline.IsZero() {
		s.timer = time.AfterFunc(time.Until(s.deadline), func() { s.end(context.DeadlineExceeded, true) })
	}
	if p := s.parent.Done(); p != nil {
		// The connection's end reaches the stream through conn.endStreams;
		// a stream made after it ended learns it here.
		select {
		case <-p:
			s.endLocked(s.parent.Err(), false)
		default:
		}
	}
}

// checkLocked ends the stream if its deadline passed or its connection's
// context ended; now zero: read the clock. s.mu is held.
func (s *stream) checkLocked(now time.Time) {
	if s.err != nil {
		return
	}
	if err := s.parent.Err(); err != nil {
		s.endLocked(err, false)
		return
	}
	if !s.deadline.IsZero() {
		if now.IsZero() {
			now = time.Now()
		}
		if !now.Before(s.deadline) {
			s.endLocked(context.DeadlineExceeded, true)
		}
	}
}

func (s *stream) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checkLocked(time.Time{})
	return s.err
}

// Value answers the response metadata key with the stream, and the
// standard library's cancel-cause key with nil when the stream ended on
// its own (so context.Cause returns Err, as for a context.WithTimeout);
// everything else is the connection context's.
func (s *stream) Value(k any) any {
	switch k.(type) {
	case rspMetaKey:
		return s
	}
	if k == s.cause && s.cause != nil {
		s.mu.Lock()
		s.checkLocked(time.Time{})
		own := s.err != nil && s.own
		s.mu.Unlock()
		if own {
			return nil
		}
	}
	return s.parent.Value(k)
}

// AfterFunc runs f in its own goroutine once the stream ends; stop keeps
// it from running (as context.AfterFunc). Implementing it lets
// context.WithCancel and friends derive from a stream without a goroutine.
func (s *stream) AfterFunc(f func()) (stop func() bool) {
	a := &afterFunc{f: f}
	s.mu.Lock()
	s.armLocked()
	if s.err != nil {
		s.mu.Unlock()
		go f()
		return func() bool { return false }
	}
	s.after = append(s.after, a)
	s.mu.Unlock()
	return func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		for i, x := range s.after {
			if x == a {
				s.after = append(s.after[:i], s.after[i+1:]...)
				return true
			}
		}
		return false
	}
}

// end ends the stream with err (own: by its deadline or a Cancel, not by
// its connection), if it has not ended.
func (s *stream) end(err error, own bool) {
	s.mu.Lock()
	s.endLocked(err, own)
	s.mu.Unlock()
}

func (s *stream) endLocked(err error, own bool) {
	if s.err != nil {
		return
	}
	s.err, s.own = err, own
	if s.done != nil {
		close(s.done)
	}
	if s.timer != nil {
		s.timer.Stop()
	}
	for _, a := range s.after {
		go a.f()
	}
	s.after = nil
}

// String names the context, for debugging.
func (s *stream) String() string { return "server.requestContext" }

// cancelCauseKey returns the key context.Cause asks a context for (the
// standard library's private cancel-cause key), found by asking once. With
// it, a stream that ended on its own (deadline, Cancel) reports its own
// error as its cause even after its connection ended too; without it (nil:
// a standard library that asks otherwise) Cause still works, reporting the
// connection's cause once that ended.
func cancelCauseKey() any {
	p := &keyProbe{Context: context.Background()}
	_ = context.Cause(p)
	return p.key
}

type keyProbe struct {
	context.Context
	key any
}

func (p *keyProbe) Err() error { return context.Canceled }

func (p *keyProbe) Value(k any) any {
	if p.key == nil {
		p.key = k
	}
	return nil
}
