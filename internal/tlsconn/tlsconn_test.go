package tlsconn_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/beacon-go/beacon/internal/testcert"
	"github.com/beacon-go/beacon/internal/tlsconn"
	"github.com/beacon-go/beacon/internal/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pair returns a handshaken client and server Conn over loopback TCP with
// small socket buffers, so that large writes block.
func pair(t *testing.T) (cli, srv *tlsconn.Conn) {
	t.Helper()
	ca := testcert.NewCA(t, "CA")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sraw, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []net.Conn{raw, sraw} {
		c.(*net.TCPConn).SetReadBuffer(64 << 10)
		c.(*net.TCPConn).SetWriteBuffer(64 << 10)
	}
	cli = tlsconn.Client(raw, &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1"})
	srv = tlsconn.Server(sraw, &tls.Config{Certificates: []tls.Certificate{ca.Server(t, "node").TLS(t)}})
	t.Cleanup(func() { cli.Close(); srv.Close() })
	deadline := time.Now().Add(5 * time.Second)
	errs := make(chan error, 1)
	go func() { errs <- srv.Handshake(deadline) }()
	if err := cli.Handshake(deadline); err != nil {
		t.Fatal(err)
	}
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	return cli, srv
}

// slowRead reads n bytes from c, pausing 50 ms first and again every
// 128 KiB (the writer blocks meanwhile), and returns them.
func slowRead(c net.Conn, n int, out chan<- []byte) {
	var got bytes.Buffer
	buf := make([]byte, 8<<10)
	time.Sleep(50 * time.Millisecond)
	next := 128 << 10
	for got.Len() < n {
		k, err := c.Read(buf)
		got.Write(buf[:k])
		if err != nil {
			break
		}
		if got.Len() >= next {
			next += 128 << 10
			time.Sleep(20 * time.Millisecond)
		}
	}
	out <- got.Bytes()
}

// A wire.Writer with a done channel cuts blocked writes every few
// milliseconds to check it; beneath TLS they resume, and the frame arrives
// whole.
func TestBoundedWriteResumes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		stall time.Duration
		done  bool
	}{
		{"done channel", 0, true},
		{"stall timeout", time.Second, false},
		{"both", time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cli, srv := pair(t)
			frame := bytes.Repeat([]byte("0123456789abcdef"), 1<<15) // 512 KiB
			out := make(chan []byte, 1)
			go slowRead(srv, len(frame), out)
			w := wire.NewWriter(cli, tc.stall, 0)
			var done chan struct{}
			if tc.done {
				done = make(chan struct{})
			}
			end, err := w.Write(frame, time.Now().Add(10*time.Second), done, nil, 0)
			if err != nil || end != int64(len(frame)) || w.Sent() != end {
				t.Fatalf("write: end %d, sent %d, %v", end, w.Sent(), err)
			}
			if got := <-out; !bytes.Equal(got, frame) {
				t.Fatalf("read %d bytes, not the frame", len(got))
			}
		})
	}
}

// Why: a plain *tls.Conn under the same Writer loses the connection at the
// first deadline set to check the done channel.
func TestPlainTLSConnFails(t *testing.T) {
	cli, srv := pair(t)
	frame := make([]byte, 512<<10)
	out := make(chan []byte, 1)
	go slowRead(srv, len(frame), out)
	_, err := wire.NewWriter(cli.Conn, 0, 0).Write(frame, time.Now().Add(time.Second), make(chan struct{}), nil, 0)
	cli.Close()
	<-out
	if err == nil {
		t.Fatal("a plain tls.Conn survived a write cut short by a deadline: tlsconn's bounded writes would be needless")
	}
	t.Logf("plain tls.Conn: %v", err)
}

// The bounds still end a write exactly as on plaintext: a peer that does
// not read fails it after the stall timeout or the deadline, and a closed
// done channel cancels it.
func TestBoundedWriteFails(t *testing.T) {
	for _, tc := range []struct {
		name     string
		stall    time.Duration
		deadline time.Duration
		cancel   time.Duration
		want     error
	}{
		{"stall", 100 * time.Millisecond, 0, 0, wire.ErrWriteTimeout},
		{"deadline", 0, 100 * time.Millisecond, 0, wire.ErrWriteTimeout},
		{"canceled", 0, 0, 100 * time.Millisecond, wire.ErrWriteCanceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cli, _ := pair(t)
			var deadline time.Time
			if tc.deadline > 0 {
				deadline = time.Now().Add(tc.deadline)
			}
			done := make(chan struct{})
			if tc.cancel > 0 {
				timer := time.AfterFunc(tc.cancel, func() { close(done) })
				defer timer.Stop()
			}
			start := time.Now()
			_, err := wire.NewWriter(cli, tc.stall, 0).Write(make([]byte, 8<<20), deadline, done, nil, 0)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if d := time.Since(start); d < 90*time.Millisecond || d > 2*time.Second {
				t.Fatalf("failed after %v", d)
			}
		})
	}
}

// The server's outbox writes beneath TLS too; frames from many senders
// arrive whole and in one piece each.
func TestWriterSendTLS(t *testing.T) {
	cli, srv := pair(t)
	ob := wire.NewWriter(srv, time.Second, 1<<20)
	frame := bytes.Repeat([]byte{7}, 64<<10)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			if err := ob.Send(frame, true, time.Time{}); err != nil {
				t.Error(err)
			}
		})
	}
	out := make(chan []byte, 1)
	go slowRead(cli, 16*len(frame), out)
	wg.Wait()
	if got := <-out; len(got) != 16*len(frame) {
		t.Fatalf("read %d bytes", len(got))
	}
}

// Bounded writes wait for no handshake: before it, they fail at once.
func TestNotReady(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := tlsconn.Server(a, &tls.Config{})
	defer c.Close()
	if _, err := c.WriteBounded([]byte("x"), time.Time{}, time.Second, nil); !errors.Is(err, tlsconn.ErrNotReady) {
		t.Fatalf("err = %v", err)
	}
}

// Sniffed bytes are read again by the handshake; Close does not wait for a
// peer that does not read.
func TestSniffAndClose(t *testing.T) {
	cli, srv := pair(t)
	_ = cli
	// Fill the socket buffers: the server's peer does not read.
	go func() {
		_, _ = srv.WriteBounded(make([]byte, 4<<20), time.Now().Add(5*time.Second), 0, nil)
	}()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	srv.Close()
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Close took %v", d)
	}

	ca := testcert.NewCA(t, "CA")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	errs := make(chan error, 1)
	go func() {
		nc, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1"})
		if err == nil {
			_, err = io.WriteString(nc, "hi")
			nc.Close()
		}
		errs <- err
	}()
	raw, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	s := tlsconn.Server(raw, &tls.Config{Certificates: []tls.Certificate{ca.Server(t, "node").TLS(t)}})
	defer s.Close()
	first, err := s.Sniff(time.Now().Add(5 * time.Second))
	if err != nil || first[0] != 0x16 {
		t.Fatalf("sniffed %q, %v", first, err)
	}
	if err := s.Handshake(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 2)
	if _, err := io.ReadFull(s, b); err != nil || string(b) != "hi" {
		t.Fatalf("read %q, %v", b, err)
	}
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
}
