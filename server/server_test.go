package server

import (
	"context"
	"errors"
	"net"
	"testing"

	"go.uber.org/goleak"

	"github.com/beacon-go/beacon/codec"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type Req struct {
	Name  string `json:"name"`
	Inner struct {
		N int `json:"n,omitempty"`
	} `json:"inner"`
	Skip string `json:"-"`
}
type Rsp struct{ Msg string }

type good struct{}

func (good) Hello(ctx context.Context, req *Req, rsp *Rsp) error {
	rsp.Msg = "hi " + req.Name
	return nil
}
func (good) helper(ctx context.Context, req *Req, rsp *Rsp) error { return nil }

type none struct{}

func (none) Other() {}

func TestHandlersOf(t *testing.T) {
	hs, err := handlersOf(good{})
	if err != nil || len(hs) != 1 || hs[0].name != "good.Hello" {
		t.Fatalf("handlers %v, %v; want exactly good.Hello", hs, err)
	}
	e := hs[0].endpoint
	if e.Request.Name != "Req" || len(e.Request.Values) != 2 || e.Request.Values[0].Name != "name" ||
		e.Request.Values[1].Name != "inner" || e.Request.Values[1].Values[0].Name != "n" {
		t.Fatalf("request shape %+v", e.Request)
	}
	req, err := hs[0].decode(codec.JSON{}, []byte(`{"name":"Ann"}`))
	if err != nil {
		t.Fatal(err)
	}
	rsp, err := hs[0].call(context.Background(), req)
	if err != nil || rsp.(*Rsp).Msg != "hi Ann" {
		t.Fatalf("serve: %v %v", rsp, err)
	}
	var de *decodeError
	if _, err := hs[0].decode(codec.JSON{}, []byte(`{"name":`)); !errors.As(err, &de) {
		t.Fatalf("garbage body: %v, want a decodeError", err)
	}
	for _, bad := range []any{nil, none{}, 42} {
		if _, err := handlersOf(bad); !errors.Is(err, ErrBadHandler) {
			t.Errorf("handlersOf(%T) = %v, want ErrBadHandler", bad, err)
		}
	}
}

func TestAddRules(t *testing.T) {
	s, err := New(Name("x"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Handle(good{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Handle(good{}); !errors.Is(err, ErrBadHandler) {
		t.Fatalf("same endpoint twice: %v", err)
	}
	if err := HandleFunc(s, "", func(context.Context, *Req, *Rsp) error { return nil }); !errors.Is(err, ErrBadHandler) {
		t.Fatalf("empty endpoint name: %v", err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := HandleFunc(s, "Late.Hello", good{}.Hello); !errors.Is(err, ErrRunning) {
		t.Fatalf("Handle after Start: %v", err)
	}
	if err := s.Start(context.Background()); !errors.Is(err, ErrRunning) {
		t.Fatalf("second Start: %v", err)
	}
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(context.Background()); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	empty, _ := New(Name("y"))
	if err := empty.Start(context.Background()); !errors.Is(err, ErrNoHandlers) {
		t.Fatalf("Start without handlers: %v", err)
	}
}

func TestAdvertiseAddr(t *testing.T) {
	tests := []struct {
		in   string
		want func(string) bool
	}{
		{"127.0.0.1:8080", func(s string) bool { return s == "127.0.0.1:8080" }},
		{"[::1]:8080", func(s string) bool { return s == "[::1]:8080" }},
		{"0.0.0.0:8080", func(s string) bool {
			h, p, err := net.SplitHostPort(s)
			return err == nil && p == "8080" && net.ParseIP(h) != nil && !net.ParseIP(h).IsUnspecified()
		}},
		{"[::]:9", func(s string) bool {
			h, _, _ := net.SplitHostPort(s)
			return net.ParseIP(h) != nil && !net.ParseIP(h).IsUnspecified()
		}},
	}
	for _, tc := range tests {
		addr, err := net.ResolveTCPAddr("tcp", tc.in)
		if err != nil {
			t.Fatal(err)
		}
		if got := advertiseAddr(addr); !tc.want(got) {
			t.Errorf("advertiseAddr(%s) = %s", tc.in, got)
		}
	}
}
