package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// ErrIdle: no frame started within the reader's idle timeout. The stream is
// intact: Next may be called again.
var ErrIdle = errors.New("wire: connection idle")

// ErrFrameTimeout: a frame started but its bytes did not all arrive within
// the reader's frame timeout (a peer trickling bytes). Framing is lost.
var ErrFrameTimeout = errors.New("wire: frame not completed in time")

const (
	minBuf    = 4 << 10  // a reader's first buffer
	shrinkBuf = 64 << 10 // a buffer grown past this is dropped once drained
)

type readDeadliner interface{ SetReadDeadline(time.Time) error }

// Reader reads frames from a stream. Its buffer starts at 4 KiB and grows
// only as a frame's bytes arrive, so a peer that announces a large frame
// and sends little costs little; a buffer grown by a large frame is dropped
// once the frame is consumed. It is not safe for concurrent use.
type Reader struct {
	r          io.Reader
	dl         readDeadliner // nil: the stream has no deadlines
	max        int
	idle       time.Duration // 0: wait for a frame for ever
	frameLimit time.Duration // 0: no bound on a started frame
	buf        []byte        // len(buf) is the storage; data is buf[start:end]
	start, end int
	dlAt       time.Time // the read deadline set on the stream (zero: none)
}

// ReaderOption configures a Reader.
type ReaderOption func(*Reader)

// IdleTimeout makes Next return ErrIdle when no frame starts within d.
// It needs a stream with SetReadDeadline (a net.Conn).
func IdleTimeout(d time.Duration) ReaderOption { return func(r *Reader) { r.idle = d } }

// FrameTimeout bounds how long a started frame (and the preface) may take to
// arrive whole; Next then returns ErrFrameTimeout. It needs a stream with
// SetReadDeadline.
func FrameTimeout(d time.Duration) ReaderOption { return func(r *Reader) { r.frameLimit = d } }

// NewReader returns a Reader that rejects frames longer than maxFrame bytes
// (DefaultMaxFrame when 0).
func NewReader(r io.Reader, maxFrame int, opts ...ReaderOption) *Reader {
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrame
	}
	rd := &Reader{r: r, max: maxFrame}
	rd.dl, _ = r.(readDeadliner)
	for _, o := range opts {
		o(rd)
	}
	return rd
}

// Buffered returns the reader's buffer size in bytes (tests, accounting).
func (r *Reader) Buffered() int { return len(r.buf) }

// HasFrame reports whether a whole frame is buffered: Next will not read
// from the stream (a reader answering requests inline flushes its answers
// before a Next that would wait for bytes).
func (r *Reader) HasFrame() bool {
	if r.end-r.start < lenPrefix {
		return false
	}
	n := int(binary.BigEndian.Uint32(r.buf[r.start:]))
	return n <= r.max && r.end-r.start >= lenPrefix+n
}

// Unread returns the bytes read from the stream and not consumed (after
// ErrBadPreface: what the peer sent instead, to hand it to another
// protocol). It is valid until the next call on r.
func (r *Reader) Unread() []byte { return r.buf[r.start:r.end] }

// ReadPreface reads and checks the connection preface, within the frame
// timeout. On ErrBadPreface the bytes stay unread (see Unread).
func (r *Reader) ReadPreface() error {
	if err := r.fill(len(Preface), r.deadline(r.frameLimit), true); err != nil {
		return err
	}
	if string(r.buf[r.start:r.start+len(Preface)]) != Preface {
		return ErrBadPreface
	}
	r.start += len(Preface)
	return nil
}

// Next reads the next frame into f.
//
// Errors: ErrIdle (no frame started within the idle timeout; call Next
// again to keep waiting), a *TooLargeError (the frame was skipped; the
// stream is usable), and otherwise a fatal error after which the stream must
// be closed: ErrMalformed, ErrFrameTimeout, or the stream's error (io.EOF
// when it ended cleanly between frames).
func (r *Reader) Next(f *Frame) error {
	if r.end == r.start {
		r.release()
		if err := r.fill(1, r.deadline(r.idle), false); err != nil {
			if isTimeout(err) {
				return ErrIdle
			}
			return err
		}
	}
	// The frame's deadline (from its start) is needed only if its bytes
	// are not all buffered: the clock is read then.
	var frameDeadline time.Time
	if r.frameLimit > 0 && r.dl != nil && !r.HasFrame() {
		frameDeadline = time.Now().Add(r.frameLimit)
	}
	if err := r.fill(lenPrefix, frameDeadline, true); err != nil {
		return err
	}
	n := int(binary.BigEndian.Uint32(r.buf[r.start:]))
	if n < frameHeader {
		return fmt.Errorf("%w: %d-byte frame", ErrMalformed, n)
	}
	if n > r.max {
		return r.skip(n, frameDeadline)
	}
	if err := r.fill(lenPrefix+n, frameDeadline, true); err != nil {
		return err
	}
	b := r.buf[r.start+lenPrefix : r.start+lenPrefix+n]
	r.start += lenPrefix + n
	return parse(b, f)
}

// skip discards an oversized frame after reading its kind and ID.
func (r *Reader) skip(n int, deadline time.Time) error {
	if err := r.fill(lenPrefix+frameHeader, deadline, true); err != nil {
		return err
	}
	e := &TooLargeError{Kind: r.buf[r.start+lenPrefix], ID: binary.BigEndian.Uint64(r.buf[r.start+lenPrefix+1:]), Size: n, Limit: r.max}
	left := lenPrefix + n
	for {
		k := min(left, r.end-r.start)
		r.start += k
		left -= k
		if left == 0 {
			return e
		}
		r.start, r.end = 0, 0
		if err := r.fill(1, deadline, true); err != nil {
			return err
		}
	}
}

// release drops a buffer grown past shrinkBuf once it is drained.
func (r *Reader) release() {
	r.start, r.end = 0, 0
	if len(r.buf) > shrinkBuf {
		r.buf = nil
	}
}

func (r *Reader) deadline(d time.Duration) time.Time {
	if d <= 0 || r.dl == nil {
		return time.Time{}
	}
	return time.Now().Add(d)
}

// fill reads until need bytes are buffered, growing the buffer only as
// bytes arrive. started tells that a frame (or the preface) has begun: a
// timeout or EOF then means a lost frame.
func (r *Reader) fill(need int, deadline time.Time, started bool) error {
	for r.end-r.start < need {
		if r.end == len(r.buf) {
			r.makeRoom(need)
		}
		if r.dl != nil {
			if err := r.arm(deadline); err != nil {
				return err
			}
		}
		k, err := r.r.Read(r.buf[r.end:])
		r.end += k
		if err != nil {
			if r.end-r.start >= need {
				return nil
			}
			if isTimeout(err) && !deadline.IsZero() && time.Now().Before(deadline) {
				continue // an earlier deadline left by arm: ours has not passed
			}
			switch {
			case started && isTimeout(err):
				return ErrFrameTimeout
			case started && err == io.EOF:
				return io.ErrUnexpectedEOF
			case err == io.EOF && r.end > r.start:
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// arm makes the stream's read deadline no later than deadline (zero: none).
// Setting a deadline costs a timer update, so one that is set already and
// still ahead is kept when it is earlier than needed: a read it ends early
// is retried by fill.
func (r *Reader) arm(deadline time.Time) error {
	switch {
	case deadline.IsZero():
		if r.dlAt.IsZero() {
			return nil
		}
	case !r.dlAt.IsZero() && !r.dlAt.After(deadline) && time.Until(r.dlAt) > 0:
		return nil
	}
	r.dlAt = deadline
	return r.dl.SetReadDeadline(deadline)
}

// makeRoom compacts the buffer and, when that is not enough, grows it by
// doubling, never beyond what the pending frame needs plus one read-ahead.
func (r *Reader) makeRoom(need int) {
	if r.start > 0 {
		r.end = copy(r.buf, r.buf[r.start:r.end])
		r.start = 0
		if r.end < len(r.buf) {
			return
		}
	}
	size := max(2*len(r.buf), minBuf)
	size = min(size, max(need, r.end+1)+minBuf)
	nb := make([]byte, size)
	copy(nb, r.buf[:r.end])
	r.buf = nb
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }
