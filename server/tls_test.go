package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/beacon-go/beacon/internal/testcert"
	"github.com/beacon-go/beacon/internal/wire"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/tlsconfig"
)

// logBuffer records log lines from many goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type tlsFixture struct {
	ca      *testcert.CA
	srvCfg  *tls.Config // mutual TLS
	cliCert tls.Certificate
	logs    *logBuffer
	s       *Server
	addr    string
}

func newTLSFixture(t *testing.T, opts ...Option) *tlsFixture {
	t.Helper()
	dir := t.TempDir()
	f := &tlsFixture{ca: testcert.NewCA(t, "CA"), logs: &logBuffer{}}
	cert, key := f.ca.Server(t, "node").Write(t, dir, "server")
	ca := f.ca.Write(t, dir, "ca")
	f.cliCert = f.ca.Client(t, "caller").TLS(t)
	var err error
	if f.srvCfg, err = (tlsconfig.Files{Cert: cert, Key: key, CA: ca, ClientAuth: true}).Server(); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts = append([]Option{Name("greeter"), Address("127.0.0.1:0"), TLS(f.srvCfg), Logger(log)}, opts...)
	if f.s, err = New(opts...); err != nil {
		t.Fatal(err)
	}
	if err := f.s.Handle(good{}); err != nil {
		t.Fatal(err)
	}
	if err := f.s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.s.Stop(context.Background()) })
	f.addr = f.s.Addr().String()
	return f
}

func (f *tlsFixture) clientConfig(withCert bool) *tls.Config {
	cfg := &tls.Config{RootCAs: f.ca.Pool(), ServerName: "127.0.0.1"}
	if withCert {
		cfg.Certificates = []tls.Certificate{f.cliCert}
	}
	return cfg
}

func TestTLSOption(t *testing.T) {
	f := newTLSFixture(t)
	if md := f.s.Service().Nodes[0].Metadata; md[registry.MetaTLS] != "true" || md[registry.MetaProtocol] != registry.ProtocolBeacon {
		t.Fatalf("metadata %v", md)
	}
	cert := f.ca.Server(t, "node").TLS(t)
	for _, tc := range []struct {
		name   string
		cfg    *tls.Config
		noHTTP bool
		err    error
		protos []string
	}{
		{"no certificate", &tls.Config{}, false, ErrTLSConfig, nil},
		{"ALPN added", &tls.Config{Certificates: []tls.Certificate{cert}}, false, nil, []string{"h2", "http/1.1"}},
		{"ALPN kept", &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"x"}}, false, nil, []string{"x"}},
		{"no ALPN without HTTP", &tls.Config{Certificates: []tls.Certificate{cert}}, true, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(Name("x"), TLS(tc.cfg), HTTP(!tc.noHTTP))
			if !errors.Is(err, tc.err) {
				t.Fatalf("New: %v, want %v", err, tc.err)
			}
			if err != nil {
				return
			}
			if !slices.Equal(s.o.tls.NextProtos, tc.protos) {
				t.Fatalf("NextProtos %q, want %q", s.o.tls.NextProtos, tc.protos)
			}
			if tc.name == "ALPN added" && (tc.cfg.NextProtos != nil || s.o.tls == tc.cfg) {
				t.Fatal("the caller's config was changed, not cloned")
			}
		})
	}
	// Without TLS no tls key is published.
	s, err := New(Name("x"), Address("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	s.Handle(good{})
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer s.Stop(context.Background())
	if _, ok := s.Service().Nodes[0].Metadata[registry.MetaTLS]; ok {
		t.Fatal("a plaintext node publishes tls")
	}
}

// Peers that are not TLS clients, or not accepted ones, are told why in a
// form they read, closed, and logged at debug level only.
func TestTLSRefusals(t *testing.T) {
	f := newTLSFixture(t, FrameTimeout(300*time.Millisecond))
	for _, tc := range []struct {
		name   string
		send   []byte
		tls    *tls.Config
		expect func(t *testing.T, got []byte, err error)
		logged string
	}{
		{"port probe", nil, nil, nil, ""},
		{"plaintext Beacon client", []byte(wire.Preface), nil, func(t *testing.T, got []byte, err error) {
			var fr wire.Frame
			r := wire.NewReader(bytes.NewReader(got), 1<<20)
			if err := r.Next(&fr); err != nil || fr.Kind != wire.KindResponse || fr.Status != wire.StatusTLSRequired ||
				fr.Flags&wire.FlagNotRun == 0 || !strings.Contains(string(fr.Detail), "requires TLS") {
				t.Fatalf("reply %q: %v %+v", got, err, fr)
			}
		}, "plaintext Beacon client"},
		{"plain HTTP", []byte("POST /Greeter.Hello HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"), nil, func(t *testing.T, got []byte, err error) {
			if !strings.HasPrefix(string(got), "HTTP/1.0 400 ") || !strings.Contains(string(got), "HTTP request to an HTTPS server") {
				t.Fatalf("reply %q", got)
			}
		}, "plain HTTP request"},
		{"garbage", []byte{0, 1, 2, 3, 4, 5, 6, 7}, nil, nil, "unknown protocol"},
		{"stalled handshake", []byte{0x16}, nil, nil, "TLS handshake failed"},
		{"client without a certificate", nil, f.clientConfig(false), func(t *testing.T, got []byte, err error) {
			if err == nil || !strings.Contains(err.Error(), "certificate required") {
				t.Fatalf("client read: %v", err)
			}
		}, "TLS handshake failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(f.logs.String())
			nc, err := net.Dial("tcp", f.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
			start := time.Now()
			var got []byte
			switch {
			case tc.tls != nil:
				tc := tls.Client(nc, tc.tls)
				if err = tc.Handshake(); err == nil {
					_, err = tc.Write([]byte(wire.Preface))
				}
				if err == nil {
					got, err = io.ReadAll(tc)
				}
			case tc.send == nil:
				nc.Close()
			default:
				if _, err := nc.Write(tc.send); err != nil {
					t.Fatal(err)
				}
				got, err = io.ReadAll(nc)
				if err != nil {
					t.Fatalf("the node did not close the connection: %v", err)
				}
			}
			if tc.expect != nil {
				tc.expect(t, got, err)
			}
			if time.Since(start) > 2*time.Second {
				t.Fatalf("closed after %v", time.Since(start))
			}
			deadline := time.Now().Add(2 * time.Second)
			for tc.logged != "" && !strings.Contains(f.logs.String()[before:], tc.logged) && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			logs := f.logs.String()[before:]
			if !strings.Contains(logs, tc.logged) {
				t.Fatalf("logs %q, want %q", logs, tc.logged)
			}
			if strings.Contains(logs, "level=WARN") || strings.Contains(logs, "level=ERROR") {
				t.Fatalf("logged above debug: %s", logs)
			}
		})
	}
	// Mutual TLS works on the same server, and its handshake is not held
	// by a stalled one: handshakes run in the connections' goroutines.
	stalled, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	start := time.Now()
	nc, err := tls.Dial("tcp", f.addr, f.clientConfig(true))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := nc.Write([]byte(wire.Preface)); err != nil {
		t.Fatal(err)
	}
	var fr wire.Frame
	if err := wire.NewReader(nc, 1<<20).Next(&fr); err != nil || fr.Kind != wire.KindSettings {
		t.Fatalf("mTLS: %v %+v", err, fr)
	}
	if d := time.Since(start); d > 250*time.Millisecond {
		t.Fatalf("the handshake took %v beside a stalled one", d)
	}
}

// Stop does not wait for a handshake that does not come.
func TestTLSStopDuringHandshake(t *testing.T) {
	f := newTLSFixture(t)
	nc, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.Write([]byte{0x16, 3, 1})
	time.Sleep(20 * time.Millisecond)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f.s.Stop(ctx)
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Stop took %v", d)
	}
}
