package client_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/bits"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/beacon-go/beacon/internal/wire"
)

// The floor: what this machine does with the same bytes and no library. A
// Beacon call's request and response frames (the very bytes Beacon writes
// for benchReq), exchanged over loopback TCP with nothing but a length
// prefix read and an ID copied: no codec, no selector, no deadlines.
//
//   - floor-pingpong: one connection per calling goroutine, write the
//     request, read the response (at c=1 the fastest a round trip can be).
//   - floor-mux: one connection shared by every caller, one reader
//     goroutine that hands each response to its caller by ID, and one
//     writer goroutine that sends everything queued in one write (the
//     fastest a multiplexed client can be); the server answers every frame
//     it has read before writing once.
//
// BenchmarkCall runs both beside Beacon, net/http and grpc-go.
func benchFloor(b *testing.B, conc int) {
	reqFrame, rspFrame := floorFrames(b)
	b.Run(fmt.Sprintf("floor-pingpong/c=%d", conc), func(b *testing.B) {
		addr, stop := floorServer(b, rspFrame)
		defer stop()
		conns := make(chan net.Conn, conc)
		for range conc {
			nc, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			defer nc.Close()
			conns <- nc
		}
		var mu sync.Mutex
		var spare []net.Conn
		runEach(b, conc, func() func() error {
			mu.Lock()
			defer mu.Unlock()
			var nc net.Conn
			select {
			case nc = <-conns:
			default: // a goroutine of a second round (b.N grown): reuse
				nc, spare = spare[0], spare[1:]
			}
			spare = append(spare, nc)
			req := append([]byte(nil), reqFrame...)
			buf := make([]byte, 256)
			return func() error {
				if _, err := nc.Write(req); err != nil {
					return err
				}
				_, err := readFrame(nc, buf)
				return err
			}
		})
	})
	b.Run(fmt.Sprintf("floor-mux/c=%d", conc), func(b *testing.B) {
		addr, stop := floorServer(b, rspFrame)
		defer stop()
		m, err := newMuxFloor(addr, reqFrame)
		if err != nil {
			b.Fatal(err)
		}
		defer m.close()
		runEach(b, conc, func() func() error { return m.call })
	})
}

// floorFrames returns Beacon's request and response frames for benchReq.
func floorFrames(b *testing.B) (req, rsp []byte) {
	body, _ := json.Marshal(benchReq)
	req, err := wire.AppendRequest(nil, 1, "Greeter.Hello", "application/json", 5*time.Second, nil, body)
	if err != nil {
		b.Fatal(err)
	}
	out, _ := json.Marshal(&HelloRsp{Msg: "Hello Ann", Node: "bench"})
	return req, wire.AppendResponse(nil, 1, 0, 0, "application/json", "", nil, out)
}

// readFrame reads one length-prefixed frame into buf (grown if needed).
func readFrame(r io.Reader, buf []byte) ([]byte, error) {
	if _, err := io.ReadFull(r, buf[:4]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(buf))
	if n > len(buf)-4 {
		return nil, fmt.Errorf("floor: frame of %d bytes", n)
	}
	_, err := io.ReadFull(r, buf[4:4+n])
	return buf[:4+n], err
}

// floorServer answers every frame with rsp (its ID set to the request's),
// writing once for all the frames it has read.
func floorServer(b *testing.B, rsp []byte) (string, func()) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
			wg.Go(func() {
				r := bufio.NewReaderSize(nc, 64<<10)
				buf := make([]byte, 256)
				var out []byte
				for {
					f, err := readFrame(r, buf)
					if err != nil {
						return
					}
					out = append(out, rsp...)
					copy(out[len(out)-len(rsp)+5:], f[5:13]) // the call ID
					if r.Buffered() == 0 {
						if _, err := nc.Write(out); err != nil {
							return
						}
						out = out[:0]
					}
				}
			})
		}
	})
	return ln.Addr().String(), func() {
		ln.Close()
		mu.Lock()
		for _, nc := range conns {
			nc.Close()
		}
		mu.Unlock()
		wg.Wait()
	}
}

// muxFloor is the minimal multiplexed client: slots of waiting callers
// indexed by call ID, a queue the writer goroutine sends in one write, and
// a reader goroutine.
type muxFloor struct {
	nc    net.Conn
	req   []byte
	free  chan uint64
	slots []chan struct{}
	wg    sync.WaitGroup

	mu      sync.Mutex
	queue   []byte
	spare   []byte
	wake    chan struct{}
	writing bool
	err     error
}

func newMuxFloor(addr string, req []byte) (*muxFloor, error) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	m := &muxFloor{nc: nc, req: req, free: make(chan uint64, 1024), slots: make([]chan struct{}, 1024), wake: make(chan struct{}, 1)}
	for i := range m.slots {
		m.slots[i] = make(chan struct{}, 1)
		m.free <- uint64(i)
	}
	m.wg.Go(m.writeLoop)
	m.wg.Go(m.readLoop)
	return m, nil
}

func (m *muxFloor) call() error {
	id := <-m.free
	m.mu.Lock()
	if m.err != nil {
		m.mu.Unlock()
		return m.err
	}
	m.queue = append(m.queue, m.req...)
	binary.BigEndian.PutUint64(m.queue[len(m.queue)-len(m.req)+5:], id)
	if !m.writing {
		m.writing = true
		m.wake <- struct{}{}
	}
	m.mu.Unlock()
	<-m.slots[id]
	m.free <- id
	m.mu.Lock()
	err := m.err
	m.mu.Unlock()
	return err
}

func (m *muxFloor) writeLoop() {
	for range m.wake {
		m.mu.Lock()
		for len(m.queue) > 0 {
			batch := m.queue
			m.queue, m.spare = m.spare[:0], nil
			m.mu.Unlock()
			_, err := m.nc.Write(batch)
			m.mu.Lock()
			m.spare = batch
			if err != nil {
				m.err = err
				break
			}
		}
		m.writing = false
		m.mu.Unlock()
	}
}

func (m *muxFloor) readLoop() {
	r := bufio.NewReaderSize(m.nc, 64<<10)
	buf := make([]byte, 256)
	for {
		f, err := readFrame(r, buf)
		if err != nil {
			m.mu.Lock()
			if m.err == nil {
				m.err = err
			}
			m.mu.Unlock()
			for _, s := range m.slots {
				select {
				case s <- struct{}{}:
				default:
				}
			}
			return
		}
		id := binary.BigEndian.Uint64(f[5:13])
		if id < uint64(len(m.slots)) {
			m.slots[id] <- struct{}{}
		}
	}
}

func (m *muxFloor) close() {
	m.nc.Close()
	close(m.wake)
	m.wg.Wait()
}

// latency is a log-linear histogram of call durations: 8 buckets per power
// of two (12.5% resolution), cheap enough to record every call.
type latency [64 * 8]uint64

func (h *latency) add(d time.Duration) {
	v := uint64(max(d, 0))
	if v < 16 {
		h[v]++
		return
	}
	l := bits.Len64(v)
	h[l*8+int(v>>(l-4))&7]++
}

func (h *latency) merge(o *latency) {
	for i := range h {
		h[i] += o[i]
	}
}

// quantile returns the upper bound of the bucket holding quantile q.
func (h *latency) quantile(q float64) time.Duration {
	var total uint64
	for _, n := range h {
		total += n
	}
	want := uint64(q * float64(total))
	var seen uint64
	for i, n := range h {
		seen += n
		if seen > want && n > 0 {
			if i < 16 {
				return time.Duration(i)
			}
			l, sub := i/8, i%8
			return time.Duration(uint64(9+sub) << (l - 4))
		}
	}
	return 0
}

// cpuTime returns the CPU time this process has used, user and system, in
// ns, or -1.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return -1
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// writeSyscalls returns how many write system calls this process has made
// (/proc/self/io syscw: client and server together), or -1.
func writeSyscalls() int64 {
	p, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(p)) {
		if v, ok := strings.CutPrefix(line, "syscw: "); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return -1
			}
			return n
		}
	}
	return -1
}

// TestCallAllocs keeps a call lean: client and server together (one
// process), metadata and interceptors off, at most 10 allocations per call
// (issue 15; 5-6 when written, 27 before), the response value included.
func TestCallAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not stable under the race detector")
	}
	e := newEnv(t, 1)
	ctx := context.Background()
	call := func() {
		var rsp HelloRsp
		if err := e.cli.Call(ctx, "greeter", "Greeter.Hello", benchReq, &rsp); err != nil {
			t.Fatal(err)
		}
	}
	for range 100 { // connections, pools and the handler's cost settle
		call()
	}
	if n := testing.AllocsPerRun(500, call); n > 10 {
		t.Fatalf("%.1f allocations per call, client and server together; want at most 10", n)
	} else {
		t.Logf("%.1f allocations per call", n)
	}
}
