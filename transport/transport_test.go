package transport_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/metadata"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/selector"
	"github.com/beacon-go/beacon/server"
	"github.com/beacon-go/beacon/status"
	"github.com/beacon-go/beacon/transport"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.DiscardHandler)

// jsonl is a second transport written against the seam alone, as a gRPC or
// any other transport would be: one JSON request per line, one JSON
// response per line, a connection per call.
type frame struct {
	Endpoint    string            `json:"endpoint,omitempty"`
	ContentType string            `json:"ct,omitempty"`
	Metadata    map[string]string `json:"md,omitempty"`
	Body        []byte            `json:"body,omitempty"`
	Deadline    time.Time         `json:"deadline,omitzero"`
	Status      int               `json:"status,omitempty"`
	Detail      string            `json:"detail,omitempty"`
	NotRun      bool              `json:"not_run,omitempty"`
}

type jsonlServer struct {
	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

func (s *jsonlServer) Serve(ln net.Listener, h transport.Handler) error {
	s.mu.Lock()
	s.ln, s.conns = ln, map[net.Conn]bool{}
	s.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.conns[c] = true
		s.mu.Unlock()
		s.wg.Go(func() {
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			var in frame
			if err := json.NewDecoder(c).Decode(&in); err != nil {
				return
			}
			req := transport.Request{Endpoint: in.Endpoint, ContentType: in.ContentType, Metadata: in.Metadata, Body: in.Body, Deadline: in.Deadline}
			var rsp transport.Response
			h.Serve(context.Background(), &req, &rsp)
			json.NewEncoder(c).Encode(frame{ContentType: rsp.ContentType, Metadata: rsp.Metadata, Body: rsp.Body, Status: rsp.Status, Detail: rsp.Detail, NotRun: rsp.NotRun})
		})
	}
}

func (s *jsonlServer) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.ln.Close()
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		<-done
		return ctx.Err()
	}
}

type jsonlCaller struct{}

func (jsonlCaller) Call(ctx context.Context, addr string, req *transport.Request, rsp *transport.Response) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return &transport.Error{Addr: addr, Op: "dial", NotRun: true, Err: err}
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if !req.Deadline.IsZero() {
		c.SetDeadline(req.Deadline)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := json.NewEncoder(c).Encode(frame{Endpoint: req.Endpoint, ContentType: req.ContentType, Metadata: req.Metadata, Body: req.Body, Deadline: req.Deadline}); err != nil {
		return &transport.Error{Addr: addr, Op: "write", Err: err}
	}
	var out frame
	if err := json.NewDecoder(bufio.NewReader(c)).Decode(&out); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &transport.Error{Addr: addr, Op: "read", Err: err}
	}
	*rsp = transport.Response{Status: out.Status, Detail: out.Detail, ContentType: out.ContentType, Metadata: out.Metadata, Body: out.Body, NotRun: out.NotRun}
	return nil
}

func (jsonlCaller) Close() error { return nil }

type Req struct {
	Name string `json:"name"`
}

type Rsp struct {
	Msg    string `json:"msg"`
	Tenant string `json:"tenant"`
}

// TestSecondTransport: a transport written against package transport alone
// serves a server's handlers (with its interceptors), is registered with
// its protocol, and is called by name with the client's selection,
// retries (a dead node of that protocol is skipped over) and metadata
// unchanged; a client without a Caller for it fails at once with
// ErrProtocol.
func TestSecondTransport(t *testing.T) {
	reg := memory.New()
	defer reg.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	auth := func(ctx context.Context, req any, info *server.HandlerInfo, next server.HandlerFunc) (any, error) {
		if md, _ := metadata.FromIncomingContext(ctx); md.Get("tenant") == "" {
			return nil, status.New(status.Unauthorized, "no tenant")
		}
		return next(ctx, req)
	}
	s, err := server.New(server.Name("greeter"), server.ID("j1"), server.Address("127.0.0.1:0"), server.Registry(reg),
		server.DrainGrace(time.Millisecond), server.Logger(quiet), server.Transport("jsonl", &jsonlServer{}), server.WithInterceptors(auth))
	if err != nil {
		t.Fatal(err)
	}
	server.HandleFunc(s, "Greeter.Hello", func(ctx context.Context, req *Req, rsp *Rsp) error {
		md, _ := metadata.FromIncomingContext(ctx)
		rsp.Msg, rsp.Tenant = "Hello "+req.Name, md.Get("tenant")
		return server.SetResponseMetadata(ctx, metadata.New("x-node", "j1"))
	})
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Stop(ctx)
	if got := s.Service().Nodes[0].Metadata[registry.MetaProtocol]; got != "jsonl" {
		t.Fatalf("node protocol %q, want jsonl", got)
	}
	// A dead node of the same protocol: the client must go around it.
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()
	reg.Register(ctx, &registry.Service{Name: "greeter", Nodes: []*registry.Node{{ID: "dead", Address: deadAddr, Metadata: map[string]string{registry.MetaProtocol: "jsonl"}}}})

	sel := selector.New(reg, selector.WithLogger(quiet), selector.WithProtocols(registry.ProtocolBeacon, "jsonl"), selector.WithStrategy(selector.RoundRobin()))
	defer sel.Close()
	c := client.New(sel, client.WithCaller("jsonl", jsonlCaller{}), client.Logger(quiet),
		client.WithDefaultBackoff(client.ExponentialBackoff(time.Millisecond, time.Millisecond)))
	defer c.Close()
	for i := range 6 {
		var got metadata.MD
		rsp := new(Rsp)
		err := c.Call(metadata.AppendToOutgoingContext(ctx, "tenant", "acme"), "greeter", "Greeter.Hello", &Req{Name: "Ann"}, rsp, client.ResponseMetadata(&got))
		if err != nil || rsp.Msg != "Hello Ann" || rsp.Tenant != "acme" || got.Get("x-node") != "j1" {
			t.Fatalf("call %d: %+v %v %v", i, rsp, got, err)
		}
	}
	if err := c.Call(ctx, "greeter", "Greeter.Hello", &Req{}, new(Rsp)); status.Code(err) != status.Unauthorized {
		t.Fatalf("without a tenant: %v, want 401 from the server's interceptor", err)
	}

	plain := client.New(sel, client.Logger(quiet))
	defer plain.Close()
	if err := plain.Call(ctx, "greeter", "Greeter.Hello", &Req{}, new(Rsp)); !errors.Is(err, client.ErrProtocol) {
		t.Fatalf("a client without the jsonl caller: %v, want ErrProtocol", err)
	}
}
