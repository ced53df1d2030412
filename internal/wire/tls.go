package wire

import (
	"io"
	"time"
)

// StatusTLSRequired is the status of the response frame (ID 0, FlagNotRun)
// that a TLS-only server writes in plaintext to a client that opened the
// connection with Preface instead of a TLS handshake, before closing it: the
// client reports that the node requires TLS instead of a bare EOF. (HTTP's
// 426 Upgrade Required.)
const StatusTLSRequired = 426

// BoundedWriter is a stream that applies a write's bounds itself: the
// deadline (zero: none), the stall timeout (0: none: no byte moving for that
// long fails the write) and the done channel (nil: never). Writer
// hand their bounds to such a stream instead of setting write deadlines on
// it. A TLS connection is one: a record cut short by a deadline cannot be
// resumed, so the bounds must apply beneath TLS, where Stream resumes the
// writes that a deadline (set only to check the bounds) cut short. Errors
// are those of Stream.Write.
type BoundedWriter interface {
	WriteBounded(p []byte, deadline time.Time, stall time.Duration, done <-chan struct{}) (int, error)
}

// Stream writes to a stream with write deadlines (a net.Conn) within bounds,
// like Writer do: it sets deadlines only to check the bounds and
// resumes a write that one cut short while no bound was passed. It is the
// layer beneath a BoundedWriter. It is not safe for concurrent use.
type Stream struct{ s stream }

// NewStream returns a Stream on w (bounds need w to have SetWriteDeadline;
// without it, writes are unbounded).
func NewStream(w io.Writer) *Stream { return &Stream{s: stream{w: w, dl: deadliner(w)}} }

func deadliner(w io.Writer) writeDeadliner {
	dl, _ := w.(writeDeadliner)
	return dl
}

// Write writes p whole within the bounds: it fails with ErrWriteTimeout when
// the deadline passes or no byte moves for stall, with ErrWriteCanceled when
// done closes, or with the stream's error. It returns the bytes written.
func (st *Stream) Write(p []byte, deadline time.Time, stall time.Duration, done <-chan struct{}) (int, error) {
	if st.s.dl == nil {
		stall = 0
	}
	st.s.stall = stall
	return st.s.write(p, deadline, done)
}

// Forget tells the Stream that another party changed the stream's write
// deadline: the next Write sets the one it needs, even none.
func (st *Stream) Forget() { st.s.dlAt = time.Unix(0, 1) }
