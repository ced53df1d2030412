package wire

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// ErrWriteTimeout: a write did not complete within its deadline, or made no
// progress within the writer's stall timeout (a peer that stopped reading).
var ErrWriteTimeout = errors.New("wire: write timed out")

// ErrWriteCanceled: the writer gave up because the caller's done channel
// closed.
var ErrWriteCanceled = errors.New("wire: write canceled")

// ErrBacklog: more than the Writer's limit is queued behind a write that
// does not progress, and the sender would not wait (Send without wait):
// the peer is not reading.
var ErrBacklog = errors.New("wire: peer not reading (queue full)")

// ErrNotQueued: the frame was never handed to the stream (the caller's wait
// for its turn ended, or the writer had already failed). Wrapped with the
// reason.
var ErrNotQueued = errors.New("wire: frame not sent")

type writeDeadliner interface{ SetWriteDeadline(time.Time) error }

// cancelSlice is how often a blocked write checks a caller's done channel.
const cancelSlice = 10 * time.Millisecond

// Writer writes whole frames to a stream from many goroutines, without
// making callers wait for each other. A caller that finds no write under
// way writes its frame at once, without a copy, and then, while frames
// were queued meanwhile, writes them out together; a caller that finds a
// write under way queues a copy of its frame and returns at once. So a
// lone caller's frame leaves at once, and concurrent callers share system
// calls (about one write per batch of callers that ran while the previous
// write was in the kernel).
//
// Every wait is bounded: the wait for room (past the limit of bytes queued
// behind a write that does not progress) by the caller's deadline and done
// channel; the writes of the caller that writes, its own frame and those
// queued behind it, by its deadline, done channel and the stall timeout
// (frames left when its bounds are nearly up are written by a goroutine
// bounded by the stall timeout).
// A write abandoned part way leaves the stream without framing: the Writer
// then fails for good, and so must the connection; frames queued and not
// written are then lost (compare their end offsets with Sent).
// It is safe for concurrent use.
type Writer struct {
	mu       sync.Mutex
	out      stream // used by the caller that is writing
	limit    int    // bytes queued behind a write under way before callers wait for room
	flushing bool
	buf      []byte // frames queued behind the write under way
	spare    []byte
	queued   int64         // stream offset past the last queued frame
	room     chan struct{} // closed when the write under way takes the queue, or ends
	err      error         // sticky
	cur      *yieldWait    // the yielding caller's wait; nil: none is yielding
	waits    sync.Pool     // of *yieldWait (one per yield: a caller taken over may wake late)

	sent   atomic.Int64 // bytes written to the stream
	failed atomic.Pointer[error]
}

// yieldWait is one yielding caller's wait: woken by its timer, or by the
// caller that takes its queue over.
type yieldWait struct {
	taken  chan struct{}
	timer  *time.Timer
	since  time.Time // when it began
	expect int       // frames it waits for
	joined int       // frames queued behind it so far
}

// DefaultQueueLimit bounds the bytes queued behind a write under way
// (NewWriter's limit 0); past it, callers wait for room (bounded by their
// deadline and done channel) or, with Send without wait, fail with
// ErrBacklog.
const DefaultQueueLimit = 1 << 20

// maxYield bounds how long frames queued behind a yielding caller wait for
// it: a caller that comes later writes them.
const maxYield = 100 * time.Microsecond

// yieldFor is how long a yielding caller lets others queue frames.
const yieldFor = 30 * time.Microsecond

// NewWriter returns a Writer on w. stall (0: none) bounds how long a write
// may make no progress; it needs a stream with SetWriteDeadline. limit
// bounds the bytes queued behind a write under way (0:
// DefaultQueueLimit).
func NewWriter(w io.Writer, stall time.Duration, limit int) *Writer {
	if limit <= 0 {
		limit = DefaultQueueLimit
	}
	return &Writer{out: newStream(w, stall), limit: limit}
}

// Sent returns how many bytes have been written to the stream. A frame whose
// end offset (from Write) is above Sent did not leave whole: a peer cannot
// have acted on it.
func (w *Writer) Sent() int64 { return w.sent.Load() }

// Err returns the error that failed the writer, or nil.
func (w *Writer) Err() error {
	if p := w.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// Write writes one frame, or queues it behind the write under way (then it
// returns at once: the writing caller writes it). end is the stream offset
// just past the frame. Past the limit of bytes queued, it waits for room until
// deadline (zero: none), done closes or expired fires (nil channels never
// do); the frame is then not sent and the error wraps ErrNotQueued, as it
// does when the writer has failed. The caller that writes is bounded, for
// its own frame and the frames queued meanwhile, by its deadline, done and
// the stall timeout (see writeOut); when a write fails
// the Writer fails for good and err says why (ErrWriteTimeout,
// ErrWriteCanceled, or the stream's error). Compare end with Sent to learn
// whether the frame left whole.
//
// With expect > 0 (the caller expects that many other callers to write
// soon: the callers of calls answered together with its own), a caller that
// would write first waits for them to queue their frames, then writes them
// all at once: one system call for a batch instead of one per frame. The
// wait ends when the expected frames are queued (the caller that completes
// them writes the batch at once), or after yieldFor (30 µs); frames never
// wait for a yielding caller for more than maxYield once another caller
// comes. (runtime.Gosched as the wait measured worse: the yielding
// goroutine went to the scheduler's global queue and waited there for
// milliseconds behind busy processors, doubling the 99th percentile.)
func (w *Writer) Write(frame []byte, deadline time.Time, done <-chan struct{}, expired <-chan time.Time, expect int) (end int64, err error) {
	return w.write(frame, deadline, done, expired, expect, true)
}

// Send is Write for a sender that neither yields nor learns offsets: with
// wait, it waits for room without a bound of its own (the caller writing is
// bounded by the stall timeout); without, past the limit it fails with
// ErrBacklog (and the Writer is not failed). deadline bounds its writes if
// it is the one writing. An error other than ErrBacklog means the stream
// is lost.
func (w *Writer) Send(frame []byte, wait bool, deadline time.Time) error {
	_, err := w.write(frame, deadline, nil, nil, 0, wait)
	return err
}

// Queue is Send without writing: frame is queued for the next Send, Write
// or Flush (a caller writing takes it too). Past the limit it is Send with
// wait: the queue is written out. It lets a reader that answers the
// requests it has buffered write their answers once (Flush when it has
// none left).
func (w *Writer) Queue(frame []byte) error {
	w.mu.Lock()
	if w.err == nil && !w.flushing && len(w.buf)+len(frame) <= w.limit {
		w.queued += int64(len(frame))
		w.buf = append(w.buf, frame...)
		w.mu.Unlock()
		return nil
	}
	w.mu.Unlock()
	return w.Send(frame, true, time.Time{})
}

// Flush writes out what is queued, unless a caller is writing already
// (then it does). It returns the Writer's error, if it failed.
func (w *Writer) Flush() error {
	w.mu.Lock()
	if w.err != nil || w.flushing || len(w.buf) == 0 {
		err := w.err
		w.mu.Unlock()
		return err
	}
	w.flushing = true
	p := w.buf
	w.buf = w.spare[:0]
	w.spare = nil
	w.wake()
	w.mu.Unlock()
	return w.writeOut(p, true, time.Time{}, nil)
}

// Queued returns the bytes queued and not yet being written.
func (w *Writer) Queued() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.buf)
}

func (w *Writer) write(frame []byte, deadline time.Time, done <-chan struct{}, expired <-chan time.Time, expect int, wait bool) (end int64, err error) {
	w.mu.Lock()
	for w.err == nil && w.flushing && len(w.buf) > 0 && len(w.buf)+len(frame) > w.limit {
		if !wait {
			w.mu.Unlock()
			return 0, ErrBacklog
		}
		if w.room == nil {
			w.room = make(chan struct{})
		}
		room := w.room
		w.mu.Unlock()
		select {
		case <-room:
		case <-done:
			return 0, errors.Join(ErrNotQueued, ErrWriteCanceled)
		case <-expired:
			return 0, errors.Join(ErrNotQueued, ErrWriteTimeout)
		}
		w.mu.Lock()
	}
	if w.err != nil {
		err := w.err
		w.mu.Unlock()
		return 0, errors.Join(ErrNotQueued, err)
	}
	w.queued += int64(len(frame))
	end = w.queued
	if yw := w.cur; yw != nil {
		// A caller is yielding: queue behind it; the one that completes
		// what it waits for, or comes after maxYield, writes the queue.
		w.buf = append(w.buf, frame...)
		if yw.joined++; yw.joined < yw.expect && time.Since(yw.since) < maxYield {
			w.mu.Unlock()
			return end, nil
		}
		yw.taken <- struct{}{} // buffered: sent once per yield
		w.cur = nil
		frame = nil // it is in the queue
	} else if w.flushing {
		w.buf = append(w.buf, frame...)
		w.mu.Unlock()
		return end, nil
	} else if expect > 0 {
		// Let the callers of the other calls just answered (likely about
		// to call again) queue their frames first, for at most yieldFor.
		yw, _ := w.waits.Get().(*yieldWait)
		if yw == nil {
			yw = &yieldWait{taken: make(chan struct{}, 1), timer: time.NewTimer(yieldFor)}
		} else {
			yw.timer.Reset(yieldFor)
		}
		yw.since, yw.expect, yw.joined = time.Now(), expect, 0
		w.flushing, w.cur = true, yw
		w.buf = append(w.buf, frame...)
		w.mu.Unlock()
		select {
		case <-yw.taken:
		case <-yw.timer.C:
		}
		w.mu.Lock()
		yw.timer.Stop()
		if w.cur != yw { // another caller took the queue
			select {
			case <-yw.taken: // sent after the timer woke this caller
			default:
			}
			w.waits.Put(yw)
			err := w.err
			w.mu.Unlock()
			if err != nil && end > w.sent.Load() {
				return end, err
			}
			return end, nil
		}
		w.waits.Put(yw)
		w.cur = nil
		frame = nil // it is in the queue
	}
	w.flushing = true
	p, owned := frame, false // owned: p is the writer's buffer, not the caller's
	if len(w.buf) > 0 {      // frames queued behind a yield
		p, owned = append(w.buf, frame...), true
		w.buf = w.spare[:0]
		w.spare = nil
	}
	w.wake()
	w.mu.Unlock()
	return end, w.writeOut(p, owned, deadline, done)
}

// writeRest is writeOut bounded by the stall timeout alone.
func (w *Writer) writeRest(p []byte, owned bool) { _ = w.writeOut(p, owned, time.Time{}, nil) }

// writeOut writes p, then the frames queued meanwhile, until none is left.
// The caller is the one writing (w.flushing) and does not hold w.mu. Its
// own bounds (deadline, done) apply to all of it, so no caller is held past
// them by others' frames (a peer that stops reading fails the writer at the
// writing caller's deadline, as a lone frame would); when those bounds are
// (nearly) up with frames left, the rest goes to a goroutine bounded by the
// stall timeout alone, rather than failing a stream that is fine.
func (w *Writer) writeOut(p []byte, owned bool, deadline time.Time, done <-chan struct{}) error {
	for {
		err := w.flush(p, deadline, done)
		w.mu.Lock()
		if owned && cap(p) <= shrinkBuf {
			w.spare = p[:0]
		}
		if err != nil || len(w.buf) == 0 {
			w.flushing = false
			w.wake()
			w.mu.Unlock()
			return err
		}
		p, owned = w.buf, true
		w.buf = w.spare[:0]
		w.spare = nil
		w.wake()
		w.mu.Unlock()
		if isClosed(done) || (!deadline.IsZero() && time.Until(deadline) < cancelSlice) {
			go w.writeRest(p, owned) // arguments, not captured: p stays off the heap
			return nil
		}
	}
}

// wake releases callers waiting for room, and Settle; w.mu is held.
func (w *Writer) wake() {
	if w.room != nil {
		close(w.room)
		w.room = nil
	}
}

// flush writes p whole within the bounds; the caller is the one writing.
func (w *Writer) flush(p []byte, deadline time.Time, done <-chan struct{}) error {
	n, err := w.out.write(p, deadline, done)
	w.sent.Add(int64(n))
	if err != nil {
		return w.fail(err)
	}
	return nil
}

// stream writes to an io.Writer within bounds: a deadline, a done channel
// and a stall timeout. It is not safe for concurrent use.
type stream struct {
	w     io.Writer
	bw    BoundedWriter  // set: w applies the bounds itself (TLS; see tls.go)
	dl    writeDeadliner // nil: the stream has no deadlines (and no bounds)
	stall time.Duration
	dlAt  time.Time // the write deadline set on the stream (zero: none)
}

func newStream(w io.Writer, stall time.Duration) stream {
	s := stream{w: w, stall: stall}
	s.bw, _ = w.(BoundedWriter)
	s.dl, _ = w.(writeDeadliner)
	if s.dl == nil {
		s.stall = 0
	}
	return s
}

// write writes p whole, unless the deadline passes (ErrWriteTimeout), done
// closes (ErrWriteCanceled) or no byte moves for the stall timeout
// (ErrWriteTimeout). It returns the bytes written.
//
// Setting a deadline on the stream costs a timer update, so one already set
// and still ahead is kept when it is earlier than needed; a write it ends
// early carries on after the checks below.
func (s *stream) write(p []byte, deadline time.Time, done <-chan struct{}) (int, error) {
	if s.bw != nil {
		return s.bw.WriteBounded(p, deadline, s.stall, done)
	}
	var progress time.Time // when the write last moved (for the stall bound)
	total := 0
	for len(p) > 0 {
		if s.dl != nil {
			d := deadline
			if s.stall > 0 || done != nil || !s.dlAt.IsZero() {
				now := time.Now()
				if progress.IsZero() {
					progress = now
				}
				if s.stall > 0 && (d.IsZero() || progress.Add(s.stall).Before(d)) {
					d = progress.Add(s.stall)
				}
				if done != nil && (d.IsZero() || now.Add(cancelSlice).Before(d)) {
					d = now.Add(cancelSlice)
				}
				if !d.IsZero() && !s.dlAt.IsZero() && !s.dlAt.After(d) && s.dlAt.After(now) {
					d = s.dlAt // earlier than needed, still ahead: keep it
				}
			}
			if !d.Equal(s.dlAt) {
				if err := s.dl.SetWriteDeadline(d); err != nil {
					return total, err
				}
				s.dlAt = d
			}
		}
		n, err := s.w.Write(p)
		total += n
		p = p[n:]
		if err == nil {
			continue
		}
		if !isTimeout(err) {
			return total, err
		}
		now := time.Now()
		if n > 0 || progress.IsZero() {
			progress = now
		}
		switch {
		case !deadline.IsZero() && !now.Before(deadline):
			return total, ErrWriteTimeout
		case isClosed(done):
			return total, ErrWriteCanceled
		case s.stall > 0 && !now.Before(progress.Add(s.stall)):
			return total, ErrWriteTimeout
		}
	}
	return total, nil
}

func (w *Writer) fail(err error) error {
	w.Fail(err)
	return err
}

// Fail fails the Writer for good (the stream was closed): queued frames
// are dropped, and callers waiting for room, or writing later, get err.
func (w *Writer) Fail(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
		w.failed.Store(&err)
		w.buf = nil
	}
	w.wake()
	w.mu.Unlock()
}

func isClosed(done <-chan struct{}) bool {
	if done == nil {
		return false
	}
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// Settle waits for the write under way, if any, and returns Sent. Call it
// after closing the stream: the result is then final.
func (w *Writer) Settle() int64 {
	w.mu.Lock()
	for w.flushing {
		if w.room == nil {
			w.room = make(chan struct{})
		}
		room := w.room
		w.mu.Unlock()
		<-room
		w.mu.Lock()
	}
	w.mu.Unlock()
	return w.sent.Load()
}
