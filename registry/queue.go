package registry

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// MaxQueued is how many undelivered events a Queue holds. A watcher whose
// reader falls this far behind is stopped with an error matching
// ErrWatcherStopped (and ErrOverflow) rather than growing without bound or
// dropping events silently; the reader re-watches to resynchronise.
const MaxQueued = 1 << 16

// ErrOverflow: a watcher's reader fell more than MaxQueued events behind.
var ErrOverflow = errors.New("registry: watcher fell behind")

// Queue is an ordered event queue that implements Watcher; it is the
// building block backends use for their watchers. Push never blocks. It is
// safe for concurrent use.
type Queue struct {
	mu     sync.Mutex
	items  []*Event
	head   int
	first  int // events of PushInitial not read yet (the first ones queued)
	err    error
	notify chan struct{}
	done   chan struct{}
	onStop func()
	stopAF func() bool
}

// NewQueue returns a Queue that stops when ctx is done or Stop is called.
// onStop, if not nil, runs once when the queue stops, without the queue's
// lock held (backends use it to unsubscribe). onStop may run inside Push
// (when the queue overflows), so it must not take a lock that is held while
// calling Push.
func NewQueue(ctx context.Context, onStop func()) *Queue {
	q := &Queue{notify: make(chan struct{}, 1), done: make(chan struct{}), onStop: onStop}
	// Under the lock: with ctx already done, the func runs at once in
	// another goroutine, and StopWith must see stopAF set.
	q.mu.Lock()
	q.stopAF = context.AfterFunc(ctx, func() { q.StopWith(ErrWatcherStopped) })
	q.mu.Unlock()
	return q
}

// Push appends ev. It returns false, dropping ev, when the queue is stopped.
func (q *Queue) Push(ev *Event) bool {
	q.mu.Lock()
	if q.err != nil {
		q.mu.Unlock()
		return false
	}
	if len(q.items)-q.head-q.first >= MaxQueued {
		q.mu.Unlock()
		q.StopWith(fmt.Errorf("%w: %w: more than %d events queued", ErrWatcherStopped, ErrOverflow, MaxQueued))
		return false
	}
	if q.head > 0 && q.head == len(q.items) {
		clear(q.items)
		q.items, q.head = q.items[:0], 0
	}
	q.items = append(q.items, ev)
	q.mu.Unlock()
	select {
	case q.notify <- struct{}{}:
	default:
	}
	return true
}

// PushInitial queues the events that report the state when a watch
// opens, ahead of anything else. They do not count against MaxQueued, which
// bounds how far a reader may fall behind the changes that follow: a watch
// of a registry with more nodes than MaxQueued must not fail at once. Call
// it before any Push; it returns false when the queue is stopped.
func (q *Queue) PushInitial(evs []*Event) bool {
	q.mu.Lock()
	if q.err != nil {
		q.mu.Unlock()
		return false
	}
	q.items = append(q.items, evs...)
	q.first += len(evs)
	q.mu.Unlock()
	if len(evs) > 0 {
		select {
		case q.notify <- struct{}{}:
		default:
		}
	}
	return true
}

// Next returns the next event, blocking until there is one or the queue
// stops. Events queued before Stop are not delivered after it.
func (q *Queue) Next() (*Event, error) {
	for {
		q.mu.Lock()
		if q.err != nil {
			err := q.err
			q.mu.Unlock()
			return nil, err
		}
		if q.head < len(q.items) {
			ev := q.items[q.head]
			q.items[q.head] = nil
			q.head++
			q.first = max(0, q.first-1)
			q.mu.Unlock()
			return ev, nil
		}
		q.mu.Unlock()
		select {
		case <-q.notify:
		case <-q.done:
		}
	}
}

// TryNext returns the next event without waiting; ok is false when none is
// queued. Once the queue has stopped it returns the error that Next returns
// (events queued before the stop are not delivered, as with Next).
func (q *Queue) TryNext() (ev *Event, ok bool, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err != nil {
		return nil, false, q.err
	}
	if q.head < len(q.items) {
		ev = q.items[q.head]
		q.items[q.head] = nil
		q.head++
		q.first = max(0, q.first-1)
		return ev, true, nil
	}
	return nil, false, nil
}

// Ready returns a channel that receives after events are pushed, for a
// reader that waits in a select (alongside Done) instead of in Next: after
// a receive it calls TryNext until nothing is queued. A receive may find
// nothing new. Next consumes the same signals: read with one or the other.
func (q *Queue) Ready() <-chan struct{} { return q.notify }

// Stop stops the queue; Next returns ErrWatcherStopped.
func (q *Queue) Stop() { q.StopWith(ErrWatcherStopped) }

// StopWith stops the queue; Next returns err, which should match
// ErrWatcherStopped. Only the first call has an effect.
func (q *Queue) StopWith(err error) {
	q.mu.Lock()
	if q.err != nil {
		q.mu.Unlock()
		return
	}
	q.err = err
	q.items, q.head, q.first = nil, 0, 0
	close(q.done)
	stopAF := q.stopAF
	q.mu.Unlock()
	stopAF()
	if q.onStop != nil {
		q.onStop()
	}
}

// Done is closed when the queue stops.
func (q *Queue) Done() <-chan struct{} { return q.done }
