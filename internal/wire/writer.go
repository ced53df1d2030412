package wire

import (
	"bufio"
	"io"
	"sync"
	"sync/atomic"
)

// Writer writes whole frames to a stream from many goroutines. Frames are
// buffered and the last writer in line flushes, so concurrent calls share
// system calls while a lone writer's frame goes out at once. It is safe for
// concurrent use; after an error every later Write fails too.
type Writer struct {
	mu      sync.Mutex
	bw      *bufio.Writer
	waiting atomic.Int32
}

// NewWriter returns a Writer on w with a 32 KiB buffer.
func NewWriter(w io.Writer) *Writer { return &Writer{bw: bufio.NewWriterSize(w, 32<<10)} }

// Write writes one frame, flushing unless another writer is waiting for the
// lock (that one, or the last of them, flushes). It blocks while the stream
// does.
func (w *Writer) Write(frame []byte) error {
	w.waiting.Add(1)
	w.mu.Lock()
	defer w.mu.Unlock()
	_, err := w.bw.Write(frame)
	if w.waiting.Add(-1) == 0 && err == nil {
		err = w.bw.Flush()
	}
	return err
}
