package wire

import (
	"errors"
	"io"
	"runtime"
	"sync/atomic"
	"time"
)

// ErrWriteTimeout: a write did not complete within its deadline, or made no
// progress within the writer's stall timeout (a peer that stopped reading).
var ErrWriteTimeout = errors.New("wire: write timed out")

// ErrWriteCanceled: the writer gave up because the caller's done channel
// closed.
var ErrWriteCanceled = errors.New("wire: write canceled")

// ErrNotQueued: the frame was never handed to the stream (the caller's wait
// for its turn ended, or the writer had already failed). Wrapped with the
// reason.
var ErrNotQueued = errors.New("wire: frame not sent")

type writeDeadliner interface{ SetWriteDeadline(time.Time) error }

// cancelSlice is how often a blocked write checks a caller's done channel.
const cancelSlice = 10 * time.Millisecond

// Writer writes whole frames to a stream from many goroutines. Frames are
// buffered and the last writer in line flushes, so concurrent calls share
// system calls while a lone writer's frame goes out at once, without a copy.
//
// Every wait is bounded: the wait for one's turn by the caller's deadline and
// done channel, the write itself by the deadline, the done channel and the
// stall timeout. A write abandoned part way leaves the stream without
// framing: the Writer then fails for good, and so must the connection.
// It is safe for concurrent use.
type Writer struct {
	sem     chan struct{} // holds a token while a writer owns the stream
	spawn   func(func())
	waiting atomic.Int32
	pending atomic.Bool // buf holds frames nobody has flushed

	// Owned by the token holder.
	out      stream
	buf      []byte
	queued   int64 // stream offset past the last queued frame
	err      error // sticky
	yielding bool  // a writer let others queue first and will flush

	sent   atomic.Int64 // bytes written to the stream
	failed atomic.Pointer[error]
}

// NewWriter returns a Writer on w. stall (0: none) bounds how long a write
// may make no progress; it needs a stream with SetWriteDeadline. spawn, if
// not nil, runs the Writer's background flush (so its owner can wait for
// it on close); nil: a plain goroutine.
func NewWriter(w io.Writer, stall time.Duration, spawn func(func())) *Writer {
	if spawn == nil {
		spawn = func(f func()) { go f() }
	}
	return &Writer{sem: make(chan struct{}, 1), out: newStream(w, stall), spawn: spawn}
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

// Write writes one frame. It waits for its turn until deadline (zero: none),
// done closes or expired fires (nil channels never do); the frame is then
// not sent and the error wraps ErrNotQueued. Once its turn comes the frame
// is queued: end is the stream offset just past it. It is then flushed,
// unless another writer is waiting (the last of them flushes) or one that
// yielded will flush. With yield (the caller knows of other calls in
// flight, whose callers are likely about to write), the writer that would
// flush first lets the goroutines ready to run queue their frames
// (runtime.Gosched), then writes them all at once: one system call for a
// batch instead of one per frame. The flush is bounded by the deadline,
// done and the stall timeout; when it fails the Writer fails for good and
// err says why (ErrWriteTimeout, ErrWriteCanceled, or the stream's error).
// Compare end with Sent to learn whether the frame left whole.
func (w *Writer) Write(frame []byte, deadline time.Time, done <-chan struct{}, expired <-chan time.Time, yield bool) (end int64, err error) {
	w.waiting.Add(1)
	select {
	case w.sem <- struct{}{}:
	default:
		select {
		case w.sem <- struct{}{}:
		case <-done:
			w.giveUp()
			return 0, errors.Join(ErrNotQueued, ErrWriteCanceled)
		case <-expired:
			w.giveUp()
			return 0, errors.Join(ErrNotQueued, ErrWriteTimeout)
		}
	}
	last := w.waiting.Add(-1) == 0
	if w.err != nil {
		<-w.sem
		return 0, errors.Join(ErrNotQueued, w.err)
	}
	w.queued += int64(len(frame))
	end = w.queued
	if !last || w.yielding || yield {
		w.buf = append(w.buf, frame...)
		w.pending.Store(true)
		if !last || w.yielding {
			<-w.sem
			return end, nil
		}
		w.yielding = true
		<-w.sem
		runtime.Gosched()
		w.sem <- struct{}{} // the holders meanwhile only queue, or flush bounded
		w.yielding = false
		if len(w.buf) > 0 {
			err = w.flush(w.buf, deadline, done)
			w.drained()
		} else if w.err != nil && end > w.sent.Load() {
			err = w.err // a background flush failed with the frame
		}
		<-w.sem
		return end, err
	}
	defer func() { <-w.sem }()
	if len(w.buf) == 0 {
		return end, w.flush(frame, deadline, done)
	}
	w.buf = append(w.buf, frame...)
	err = w.flush(w.buf, deadline, done)
	w.drained()
	return end, err
}

// giveUp leaves the line. When the one who left was the writer that a
// holder counted on to flush, the frames queued so far are flushed in the
// background (bounded by the stall timeout).
func (w *Writer) giveUp() {
	if w.waiting.Add(-1) == 0 && w.pending.Load() {
		w.spawn(func() { _ = w.Flush() })
	}
}

// Flush writes out buffered frames, waiting for its turn without a bound
// (the holder of the stream is bounded by the stall timeout).
func (w *Writer) Flush() error {
	w.sem <- struct{}{}
	defer func() { <-w.sem }()
	if w.err != nil || len(w.buf) == 0 {
		return w.err
	}
	err := w.flush(w.buf, time.Time{}, nil)
	w.drained()
	return err
}

func (w *Writer) drained() {
	w.pending.Store(false)
	if cap(w.buf) > shrinkBuf {
		w.buf = nil
	} else {
		w.buf = w.buf[:0]
	}
}

// flush writes p whole within the bounds; the caller holds the token.
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
	w.err = err
	w.failed.Store(&err)
	return err
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

// Settle waits for the writer in progress, if any, and returns Sent. Call it
// after closing the stream: the result is then final.
func (w *Writer) Settle() int64 {
	w.sem <- struct{}{}
	n := w.sent.Load()
	<-w.sem
	return n
}
