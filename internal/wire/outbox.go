package wire

import (
	"errors"
	"io"
	"sync"
	"time"
)

// ErrBacklog: more than the outbox's limit is queued and the sender would
// not wait: the peer is not reading.
var ErrBacklog = errors.New("wire: peer not reading (outbox full)")

// Outbox sends frames on a stream without making senders wait for the peer.
// Send queues a copy of the frame, and the sender that finds no write under
// way writes out the queue until it is empty (a lone frame goes out at once,
// without a copy), so concurrent senders share system calls and only one
// goroutine ever blocks on a peer that stops reading. Past limit queued
// bytes, Send waits for room (bounded by the stall timeout of the writer at
// work) or fails with ErrBacklog, as the caller chooses. A write that makes
// no progress for the stall timeout, or fails, fails the outbox for good.
// It is safe for concurrent use.
type Outbox struct {
	mu       sync.Mutex
	out      stream // used by the sender that writes (flushing)
	limit    int
	buf      []byte // queued frames
	spare    []byte
	flushing bool
	room     chan struct{} // closed when queued bytes are taken for writing
	err      error
}

// NewOutbox returns an Outbox on w; stall bounds a write that makes no
// progress (it needs SetWriteDeadline), limit the bytes queued.
func NewOutbox(w io.Writer, stall time.Duration, limit int) *Outbox {
	return &Outbox{out: newStream(w, stall), limit: limit}
}

// Send queues frame and, unless another sender is writing, writes out the
// queue, within deadline (zero: only the stall timeout) when this sender is
// the one writing. With wait, a sender finding more than the limit queued
// waits for room; without, it fails with ErrBacklog (and the outbox is not
// failed). An error other than ErrBacklog means the stream is lost.
func (o *Outbox) Send(frame []byte, wait bool, deadline time.Time) error {
	return o.send(frame, wait, deadline, false)
}

// Queue is Send without writing: frame is queued for the next Send or
// Flush (a sender that is writing takes it too). Past the limit it is Send
// (with wait): the queue is written out. It lets a reader that answers the
// requests it has buffered write their answers once (Flush when it has
// none left).
func (o *Outbox) Queue(frame []byte) error {
	return o.send(frame, true, time.Time{}, true)
}

// Flush writes out what is queued, unless another sender is writing it.
func (o *Outbox) Flush() error { return o.send(nil, true, time.Time{}, false) }

func (o *Outbox) send(frame []byte, wait bool, deadline time.Time, later bool) error {
	o.mu.Lock()
	for o.err == nil && len(o.buf) > 0 && len(o.buf)+len(frame) > o.limit {
		if !o.flushing {
			later = false // queued by Queue and nobody writing: write it all now
			break
		}
		if !wait {
			o.mu.Unlock()
			return ErrBacklog
		}
		if o.room == nil {
			o.room = make(chan struct{})
		}
		room := o.room
		o.mu.Unlock()
		<-room
		o.mu.Lock()
	}
	if o.err != nil {
		err := o.err
		o.mu.Unlock()
		return err
	}
	if o.flushing || (later && len(o.buf)+len(frame) <= o.limit) {
		o.buf = append(o.buf, frame...)
		o.mu.Unlock()
		return nil
	}
	if len(frame) == 0 && len(o.buf) == 0 {
		o.mu.Unlock()
		return nil
	}
	o.flushing = true
	p, owned := frame, false // owned: p is the outbox's buffer, not the caller's
	if len(o.buf) > 0 {
		p, owned = append(o.buf, frame...), true
		o.buf = o.spare[:0]
		o.spare = nil
	}
	for {
		o.wake()
		o.mu.Unlock()
		_, err := o.out.write(p, deadline, nil)
		o.mu.Lock()
		if owned && cap(p) <= shrinkBuf {
			o.spare = p[:0]
		}
		if err != nil {
			o.err = err
			o.buf = nil
			break
		}
		if len(o.buf) == 0 {
			break
		}
		p, owned = o.buf, true
		o.buf = o.spare[:0]
		o.spare = nil
	}
	o.flushing = false
	err := o.err
	o.wake()
	o.mu.Unlock()
	return err
}

// Fail fails the outbox (the stream was closed): queued frames are dropped
// and waiting senders return err.
func (o *Outbox) Fail(err error) {
	o.mu.Lock()
	if o.err == nil {
		o.err = err
		o.buf = nil
	}
	o.wake()
	o.mu.Unlock()
}

// Queued returns the bytes waiting to be written.
func (o *Outbox) Queued() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.buf)
}

// wake releases senders waiting for room; o.mu is held.
func (o *Outbox) wake() {
	if o.room != nil {
		close(o.room)
		o.room = nil
	}
}
