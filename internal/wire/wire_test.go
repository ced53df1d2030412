package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRoundTrip(t *testing.T) {
	var b []byte
	b, err := AppendRequest(b, 7, "Greeter.Hello", "application/json", 3*time.Second, nil, []byte(`{"name":"Ann"}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != RequestSize("Greeter.Hello", "application/json", nil, len(`{"name":"Ann"}`)) {
		t.Fatalf("RequestSize = %d, frame is %d bytes", RequestSize("Greeter.Hello", "application/json", nil, 14), len(b))
	}
	b = AppendResponse(b, 7, 503, FlagNotRun, "application/json", "boom", nil, []byte(`{}`))
	b = AppendSettings(b, Settings{MaxStreams: 10, MaxFrame: 2048})
	b = AppendCancel(b, 9)
	b = AppendGoAway(b)
	r := NewReader(bytes.NewReader(b), 0)
	var f Frame
	if err := r.Next(&f); err != nil || f.Kind != KindRequest || f.ID != 7 || string(f.Endpoint) != "Greeter.Hello" ||
		string(f.ContentType) != "application/json" || f.Timeout != 3*time.Second || string(f.Body) != `{"name":"Ann"}` {
		t.Fatalf("request = %+v, %v", f, err)
	}
	if err := r.Next(&f); err != nil || f.Kind != KindResponse || f.Status != 503 || f.Flags != FlagNotRun || string(f.Detail) != "boom" || string(f.Body) != "{}" {
		t.Fatalf("response = %+v, %v", f, err)
	}
	if err := r.Next(&f); err != nil || f.Kind != KindSettings || f.Settings != (Settings{MaxStreams: 10, MaxFrame: 2048}) {
		t.Fatalf("settings = %+v, %v", f, err)
	}
	if err := r.Next(&f); err != nil || f.Kind != KindCancel || f.ID != 9 {
		t.Fatalf("cancel = %+v, %v", f, err)
	}
	if err := r.Next(&f); err != nil || f.Kind != KindGoAway {
		t.Fatalf("goaway = %+v, %v", f, err)
	}
	if err := r.Next(&f); err != io.EOF {
		t.Fatalf("end: %v, want EOF", err)
	}
}

func TestRejects(t *testing.T) {
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"too short", []byte{0, 0, 0, 2, 1, 0}, ErrMalformed},
		{"unknown kind", append([]byte{0, 0, 0, 9, 9}, make([]byte, 8)...), ErrMalformed},
		{"endpoint overruns", append([]byte{0, 0, 0, 11, 1}, append(make([]byte, 8), 0xff, 0xff)...), ErrMalformed},
		{"short settings", append([]byte{0, 0, 0, 10, KindSettings}, make([]byte, 9)...), ErrMalformed},
		{"cut in the middle", []byte{0, 0, 0, 20, 1, 0}, io.ErrUnexpectedEOF},
	}
	for _, tc := range cases {
		var f Frame
		if err := NewReader(bytes.NewReader(tc.in), 1024).Next(&f); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
}

// An oversized frame is reported with its ID and skipped; the frames after
// it still read.
func TestTooLargeFrameIsSkipped(t *testing.T) {
	big, _ := AppendRequest(nil, 42, "A.B", "", 0, nil, make([]byte, 10_000))
	small, _ := AppendRequest(nil, 43, "A.B", "", 0, nil, []byte("ok"))
	r := NewReader(bytes.NewReader(append(big, small...)), 1024)
	var f Frame
	err := r.Next(&f)
	var tl *TooLargeError
	if !errors.As(err, &tl) || !errors.Is(err, ErrFrameTooLarge) || tl.ID != 42 || tl.Kind != KindRequest || tl.Limit != 1024 || tl.Size != len(big)-4 {
		t.Fatalf("err = %v (%+v), want a TooLargeError for ID 42", err, tl)
	}
	if err := r.Next(&f); err != nil || f.ID != 43 || string(f.Body) != "ok" {
		t.Fatalf("next frame = %+v, %v", f, err)
	}
}

// A peer that announces a 4 MiB frame and sends a few bytes costs a few KiB,
// not 4 MiB; the buffer grows with what arrives and shrinks once drained.
func TestBufferGrowsAsBytesArrive(t *testing.T) {
	hdr := []byte{0, 0x40, 0, 0, KindRequest} // 4 MiB announced
	r := NewReader(io.MultiReader(bytes.NewReader(hdr), bytes.NewReader(make([]byte, 100))), 8<<20)
	var f Frame
	if err := r.Next(&f); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("err = %v", err)
	}
	if r.Buffered() > 8<<10 {
		t.Fatalf("buffer is %d bytes after 105 bytes of a 4 MiB frame", r.Buffered())
	}

	big, _ := AppendRequest(nil, 1, "A.B", "", 0, nil, make([]byte, 1<<20))
	small, _ := AppendRequest(nil, 2, "A.B", "", 0, nil, nil)
	r = NewReader(bytes.NewReader(append(big, small...)), 8<<20)
	if err := r.Next(&f); err != nil || len(f.Body) != 1<<20 {
		t.Fatalf("big frame: %v", err)
	}
	if err := r.Next(&f); err != nil || f.ID != 2 {
		t.Fatalf("small frame: %v", err)
	}
	if err := r.Next(&f); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
	if r.Buffered() > shrinkBuf {
		t.Fatalf("buffer of %d bytes kept after the big frame was drained", r.Buffered())
	}
}

func TestPreface(t *testing.T) {
	r := NewReader(bytes.NewReader([]byte(Preface)), 0)
	if err := r.ReadPreface(); err != nil {
		t.Fatal(err)
	}
	r = NewReader(bytes.NewReader([]byte("GET / HTTP/1.1\r\n")), 0)
	if err := r.ReadPreface(); !errors.Is(err, ErrBadPreface) {
		t.Fatalf("err = %v, want ErrBadPreface", err)
	}
}

func TestIdleAndFrameTimeouts(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	r := NewReader(a, 0, IdleTimeout(30*time.Millisecond), FrameTimeout(50*time.Millisecond))
	var f Frame
	if err := r.Next(&f); !errors.Is(err, ErrIdle) {
		t.Fatalf("idle: %v", err)
	}
	// Still usable after ErrIdle.
	frame, _ := AppendRequest(nil, 5, "A.B", "", 0, nil, nil)
	go b.Write(frame)
	if err := r.Next(&f); err != nil || f.ID != 5 {
		t.Fatalf("after idle: %+v, %v", f, err)
	}
	// A frame that starts and stalls ends with ErrFrameTimeout.
	go b.Write(frame[:7])
	start := time.Now()
	if err := r.Next(&f); !errors.Is(err, ErrFrameTimeout) {
		t.Fatalf("stalled frame: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("frame timeout took %v", d)
	}
}

// A writer blocked on a peer that never reads returns at its deadline and
// when its done channel closes; waiters for its turn return too, and the
// writer then fails for good. Sent tells which frames left whole.
func TestWriterBlockedByPeer(t *testing.T) {
	for _, how := range []string{"deadline", "done", "stall"} {
		t.Run(how, func(t *testing.T) {
			a, b := net.Pipe() // unbuffered: every write blocks until read
			defer a.Close()
			defer b.Close()
			stall := time.Duration(0)
			if how == "stall" {
				stall = 50 * time.Millisecond
			}
			w := NewWriter(a, stall, 0)
			var deadline time.Time
			var done chan struct{}
			switch how {
			case "deadline":
				deadline = time.Now().Add(50 * time.Millisecond)
			case "done":
				done = make(chan struct{})
				time.AfterFunc(50*time.Millisecond, func() { close(done) })
			}
			waiter := make(chan error, 1)
			start := time.Now()
			go func() {
				time.Sleep(10 * time.Millisecond) // queue behind the blocked writer
				_, err := w.Write([]byte("second"), time.Now().Add(time.Second), nil, time.After(time.Second), 0)
				waiter <- err
			}()
			end, err := w.Write([]byte("first frame"), deadline, done, nil, 0)
			if err == nil || end != int64(len("first frame")) || w.Sent() >= end {
				t.Fatalf("Write = %d, %v; sent %d", end, err, w.Sent())
			}
			if d := time.Since(start); d > time.Second {
				t.Fatalf("blocked write returned after %v", d)
			}
			// The second frame was queued behind the blocked write (Write
			// returned at once) and never left: its end is past Sent; or,
			// had it come after the failure, it was not queued.
			if err := <-waiter; err != nil && !errors.Is(err, ErrNotQueued) {
				t.Fatalf("waiter: %v, want its frame queued, or ErrNotQueued", err)
			}
			if w.Sent() >= end+int64(len("second")) {
				t.Fatal("queued frame counted as sent")
			}
			if w.Err() == nil {
				t.Fatal("writer not failed after an abandoned write")
			}
		})
	}
}

func TestWriterCoalesces(t *testing.T) {
	var out bytes.Buffer
	w := NewWriter(&out, 0, 0)
	for i := range 3 {
		end, err := w.Write([]byte("abc"), time.Time{}, nil, nil, i%2)
		if err != nil || end != int64(3*(i+1)) {
			t.Fatalf("Write %d = %d, %v", i, end, err)
		}
	}
	if out.String() != "abcabcabc" || w.Sent() != 9 || w.Settle() != 9 {
		t.Fatalf("out %q sent %d", out.String(), w.Sent())
	}
}

func FuzzReader(f *testing.F) {
	req, _ := AppendRequest(nil, 1, "A.B", "application/json", time.Second, nil, []byte("{}"))
	f.Add(req)
	f.Add(AppendResponse(nil, 2, 0, 0, "application/json", "", nil, []byte("{}")))
	reqMD, _ := AppendRequest(nil, 4, "A.B", "", 0, map[string]string{"k": "v", "authorization": "Bearer x"}, []byte("{}"))
	f.Add(reqMD)
	f.Add(AppendResponse(nil, 4, 500, 0, "", "x", map[string]string{"k": "v"}, nil))
	f.Add(AppendGoAway(nil))
	f.Add(AppendSettings(nil, Settings{MaxStreams: 1, MaxFrame: 1}))
	f.Add(AppendCancel(nil, 3))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data), 1<<10)
		var fr Frame
		for {
			err := r.Next(&fr)
			if err != nil && !errors.Is(err, ErrFrameTooLarge) {
				break
			}
		}
		if r.Buffered() > 1<<10+2*minBuf {
			t.Fatalf("buffer of %d bytes for a 1 KiB limit", r.Buffered())
		}
	})
}

// Writer.Send (as the server uses it): concurrent senders' frames all arrive whole; senders do not wait
// for a peer that stops reading (only the one writing does, until the stall
// timeout), a sender that will not wait gets ErrBacklog past the limit, and
// once the write stalls every sender learns it.
func TestWriterSend(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	o := NewWriter(a, 200*time.Millisecond, 64)
	got := make(chan int, 1)
	go func() {
		r := NewReader(b, 0)
		var f Frame
		n := 0
		for r.Next(&f) == nil {
			n++
			if n == 50 {
				break
			}
		}
		got <- n
	}()
	done := make(chan error, 50)
	for i := range 50 {
		go func() { done <- o.Send(AppendCancel(nil, uint64(i)), true, time.Time{}) }()
	}
	for range 50 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if n := <-got; n != 50 {
		t.Fatalf("%d whole frames arrived, want 50", n)
	}

	// Nobody reads b any more.
	start := time.Now()
	writerDone := make(chan error, 1)
	go func() { writerDone <- o.Send(AppendCancel(nil, 1), true, time.Time{}) }() // becomes the writer and blocks
	giveUp := time.Now().Add(time.Second)
	for o.Queued() != 0 || time.Now().Before(start.Add(20*time.Millisecond)) {
		if time.Now().After(giveUp) {
			t.Fatal("writer did not start")
		}
		time.Sleep(time.Millisecond)
	}
	for range 4 { // queued behind the writer, returning at once
		if err := o.Send(AppendCancel(nil, 2), false, time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := o.Send(AppendCancel(nil, 3), false, time.Time{}); !errors.Is(err, ErrBacklog) {
		t.Fatalf("past the limit: %v, want ErrBacklog", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Fatalf("senders waited %v for a peer that does not read", d)
	}
	waiter := make(chan error, 1)
	go func() { waiter <- o.Send(AppendCancel(nil, 4), true, time.Time{}) }()
	if err := <-writerDone; !errors.Is(err, ErrWriteTimeout) {
		t.Fatalf("stalled writer: %v", err)
	}
	if err := <-waiter; !errors.Is(err, ErrWriteTimeout) {
		t.Fatalf("waiting sender: %v", err)
	}
}

func TestMetadataFrames(t *testing.T) {
	md := map[string]string{"authorization": "Bearer x", "traceparent": "00-01-02-01", "empty": ""}
	req, err := AppendRequest(nil, 9, "A.B", "application/json", time.Second, md, []byte("{}"))
	if err != nil {
		t.Fatal(err)
	}
	if len(req) != RequestSize("A.B", "application/json", md, 2) {
		t.Fatalf("RequestSize %d, frame %d", RequestSize("A.B", "application/json", md, 2), len(req))
	}
	plain, _ := AppendRequest(nil, 10, "A.B", "", 0, nil, nil)
	rsp := AppendResponse(nil, 9, 418, 0, "", "teapot", md, []byte("body"))
	r := NewReader(bytes.NewReader(append(append(req, plain...), rsp...)), 1<<20)
	var f Frame
	if err := r.Next(&f); err != nil || f.Kind != KindRequestMeta || string(f.Body) != "{}" || fmt.Sprint(f.Meta.Map()) != fmt.Sprint(md) {
		t.Fatalf("request %+v %v, meta %v", f, err, f.Meta.Map())
	}
	if err := r.Next(&f); err != nil || f.Kind != KindRequest || f.Meta.Len() != 0 || f.Meta.Map() != nil {
		t.Fatalf("plain request %+v %v", f, err)
	}
	if err := r.Next(&f); err != nil || f.Flags&FlagMetadata == 0 || string(f.Body) != "body" || string(f.Detail) != "teapot" || fmt.Sprint(f.Meta.Map()) != fmt.Sprint(md) {
		t.Fatalf("response %+v %v", f, err)
	}
	// Truncated metadata blocks are malformed, never a panic.
	for cut := 1; cut < 30; cut++ {
		b := append([]byte(nil), req...)
		b = b[:len(b)-2-cut] // drop the body and part of the block
		binary.BigEndian.PutUint32(b, uint32(len(b)-4))
		if err := NewReader(bytes.NewReader(b), 1<<20).Next(&f); !errors.Is(err, ErrMalformed) {
			t.Fatalf("cut %d: %v, want ErrMalformed", cut, err)
		}
	}
	if _, err := AppendRequest(nil, 1, "A.B", "", 0, map[string]string{strings.Repeat("k", 256): ""}, nil); !errors.Is(err, ErrMalformed) {
		t.Fatalf("a 256-byte key: %v", err)
	}
}

// Concurrent writers, yielding or not, each get their frame out whole and
// once, and Sent counts them all.
func TestWriterConcurrent(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	w := NewWriter(a, time.Second, 0)
	const writers, frames = 16, 1000
	got := make(chan map[string]int, 1)
	go func() {
		seen := map[string]int{}
		r := NewReader(b, 0)
		var f Frame
		for range writers * frames {
			if err := r.Next(&f); err != nil {
				break
			}
			seen[string(f.Body)]++
		}
		got <- seen
	}()
	var wg sync.WaitGroup
	var total atomic.Int64
	for i := range writers {
		wg.Go(func() {
			for j := range frames {
				frame := AppendResponse(nil, uint64(j), 0, 0, "", "", nil, fmt.Appendf(nil, "%d/%d", i, j))
				total.Add(int64(len(frame)))
				if _, err := w.Write(frame, time.Now().Add(5*time.Second), nil, nil, j%4); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	seen := <-got
	b.Close()
	if len(seen) != writers*frames {
		t.Fatalf("%d distinct frames read, want %d", len(seen), writers*frames)
	}
	for k, n := range seen {
		if n != 1 {
			t.Fatalf("frame %s read %d times", k, n)
		}
	}
	if w.Settle() != total.Load() {
		t.Fatalf("sent %d, want %d", w.Sent(), total.Load())
	}
}

// A caller writing the frames queued behind its own is held no longer than
// its own deadline by a peer that stops reading (an earlier version wrote
// them bounded by the stall timeout alone: a call held 30 s past its 300 ms
// deadline in TestNeverReadingPeerHoldsNoCall).
func TestWriterOthersFramesWithinOwnDeadline(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	w := NewWriter(a, 5*time.Second, 0)
	own := []byte("own frame")
	queued := make(chan struct{})
	go func() { // queues behind the write under way
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			w.mu.Lock()
			writing := w.flushing
			w.mu.Unlock()
			if writing {
				break
			}
		}
		w.Write([]byte("another caller's frame"), time.Now().Add(5*time.Second), nil, nil, 0)
		close(queued)
	}()
	go func() { // reads the first frame once the second is queued, then nothing more
		<-queued
		io.ReadFull(b, make([]byte, len(own)))
	}()
	start := time.Now()
	_, err := w.Write(own, start.Add(200*time.Millisecond), nil, nil, 0)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Write returned after %v (err %v), past its 200ms deadline", d, err)
	}
}
