package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/beacon-go/beacon/codec"
	"github.com/beacon-go/beacon/status"
)

// Receivers of every kind, for TestHandleCalls: each has Hello, which says
// who answered and what it saw, Fail, which returns an error, and Panic.
type (
	dPtr struct {
		mu    sync.Mutex
		calls int
		tag   string
	}
	dValue struct {
		tag  string
		big  [5]int // more than registers hold
		tail string
	}
	dMap   map[string]string
	dFunc  func() string
	dInt   int
	dEmpty struct{}
	// Embedded: methods promoted from a value, a pointer and an interface.
	dEmbedValue     struct{ dValue }
	dEmbedPtr       struct{ *dPtr }
	dEmbedInterface struct{ dIface }
	dEmbedOuter     struct {
		pad [3]string
		dEmbedPtr
	}
	// dGeneric: a generic type's methods are called through wrappers.
	dGeneric[T any] struct{ v T }
)

type dIface interface {
	Hello(ctx context.Context, req *Req, rsp *Rsp) error
}

var errFail = status.New(status.Forbidden, "failed on purpose")

func (d *dPtr) Hello(ctx context.Context, req *Req, rsp *Rsp) error {
	d.mu.Lock()
	d.calls++
	d.mu.Unlock()
	rsp.Msg = d.tag + ":" + req.Name + ":" + ctx.Value(ctxKey{}).(string)
	return nil
}
func (d *dPtr) Fail(ctx context.Context, req *Req, rsp *Rsp) error  { return errFail }
func (d *dPtr) Panic(ctx context.Context, req *Req, rsp *Rsp) error { panic("boom " + req.Name) }

func (d dValue) Hello(ctx context.Context, req *Req, rsp *Rsp) error {
	rsp.Msg = fmt.Sprintf("%s:%s:%s:%v:%s", d.tag, req.Name, ctx.Value(ctxKey{}), d.big, d.tail)
	d.tag = "changed" // a copy: never seen again
	return nil
}
func (d dValue) Fail(ctx context.Context, req *Req, rsp *Rsp) error { return errFail }
func (d dValue) Panic(ctx context.Context, req *Req, rsp *Rsp) error {
	var m map[string]int
	m["x"] = 1 // a runtime error
	return nil
}

func (d dMap) Hello(ctx context.Context, req *Req, rsp *Rsp) error {
	rsp.Msg = d["tag"] + ":" + req.Name + ":" + ctx.Value(ctxKey{}).(string)
	return nil
}
func (d dFunc) Hello(ctx context.Context, req *Req, rsp *Rsp) error {
	rsp.Msg = d() + ":" + req.Name + ":" + ctx.Value(ctxKey{}).(string)
	return nil
}
func (d dInt) Hello(ctx context.Context, req *Req, rsp *Rsp) error {
	rsp.Msg = fmt.Sprint(int(d)) + ":" + req.Name + ":" + ctx.Value(ctxKey{}).(string)
	return nil
}
func (dEmpty) Hello(ctx context.Context, req *Req, rsp *Rsp) error {
	rsp.Msg = "empty:" + req.Name + ":" + ctx.Value(ctxKey{}).(string)
	return nil
}
func (d *dGeneric[T]) Hello(ctx context.Context, req *Req, rsp *Rsp) error {
	rsp.Msg = fmt.Sprint(d.v) + ":" + req.Name + ":" + ctx.Value(ctxKey{}).(string)
	return nil
}

type ctxKey struct{}

// TestHandleCalls runs handlers of every receiver kind as the server does
// (decode, interceptors, call, recovery), concurrently for -race: answers,
// errors, panics, and the check of the request type interceptors pass.
func TestHandleCalls(t *testing.T) {
	big := [5]int{1, 2, 3, 4, 5}
	ptr := &dPtr{tag: "ptr"}
	tests := []struct {
		name   string
		h      any
		prefix string // Hello's endpoint prefix
		want   string // Hello's answer to "Ann" (without the context's value)
		direct bool
		more   bool // has Fail and Panic
	}{
		{"pointer receiver", ptr, "dPtr", "ptr:Ann", true, true},
		{"value receiver", dValue{tag: "val", big: big, tail: "t"}, "dValue", "val:Ann:ctx:[1 2 3 4 5]:t", true, true},
		{"value receiver through a pointer", &dValue{tag: "vp", big: big, tail: "t"}, "dValue", "vp:Ann:ctx:[1 2 3 4 5]:t", true, true},
		{"map receiver", dMap{"tag": "map"}, "dMap", "map:Ann", true, false},
		{"func receiver", dFunc(func() string { return "fn" }), "dFunc", "fn:Ann", true, false},
		{"int receiver", dInt(42), "dInt", "42:Ann", true, false},
		{"empty struct receiver", dEmpty{}, "dEmpty", "empty:Ann", true, false},
		{"embedded value", dEmbedValue{dValue{tag: "ev", big: big}}, "dEmbedValue", "ev:Ann:ctx:[1 2 3 4 5]:", true, true},
		{"embedded value through a pointer", &dEmbedValue{dValue{tag: "evp", big: big}}, "dEmbedValue", "evp:Ann:ctx:[1 2 3 4 5]:", true, true},
		{"embedded pointer", dEmbedPtr{&dPtr{tag: "ep"}}, "dEmbedPtr", "ep:Ann", true, true},
		{"embedded pointer, deeper", &dEmbedOuter{dEmbedPtr: dEmbedPtr{&dPtr{tag: "deep"}}}, "dEmbedOuter", "deep:Ann", true, true},
		{"embedded interface", dEmbedInterface{&dPtr{tag: "ei"}}, "dEmbedInterface", "ei:Ann", true, false},
		{"generic", &dGeneric[int]{v: 7}, "dGeneric[int]", "7:Ann", true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			var mu sync.Mutex
			wrong := false // the interceptor passes a wrong request type
			s, err := New(Name("x"), Logger(slog.New(slog.NewTextHandler(&syncWriter{w: &logs, mu: &mu}, nil))),
				WithInterceptors(func(ctx context.Context, req any, info *HandlerInfo, next HandlerFunc) (any, error) {
					if wrong {
						return next(ctx, &Rsp{})
					}
					return next(context.WithValue(ctx, ctxKey{}, "ctx"), req)
				}))
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Handle(tc.h); err != nil {
				t.Fatal(err)
			}
			hello := s.handlers[tc.prefix+".Hello"]
			if hello == nil {
				t.Fatalf("no %s.Hello in %v", tc.prefix, s.handlers)
			}
			if hello.direct != tc.direct {
				t.Errorf("direct call %v, want %v", hello.direct, tc.direct)
			}
			want := tc.want
			if !strings.Contains(want, ":ctx") {
				want += ":ctx"
			}
			var wg sync.WaitGroup
			for i := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range 50 {
						name := fmt.Sprintf("Ann%d", i)
						rsp, err := s.run(context.Background(), hello, codec.JSON{}, []byte(`{"name":"`+name+`"}`), "test", nil)
						if err != nil || rsp.(*Rsp).Msg != strings.Replace(want, "Ann", name, 1) {
							t.Errorf("Hello = %#v, %v; want %q", rsp, err, want)
							return
						}
					}
				}()
			}
			wg.Wait()
			if !tc.more {
				return
			}
			if _, err := s.run(context.Background(), s.handlers[tc.prefix+".Fail"], codec.JSON{}, []byte(`{}`), "test", nil); err != errFail {
				t.Errorf("Fail: %v, want %v", err, errFail)
			}
			_, err = s.run(context.Background(), s.handlers[tc.prefix+".Panic"], codec.JSON{}, []byte(`{"name":"x"}`), "test", nil)
			if status.Code(err) != status.InternalError || !strings.Contains(err.Error(), "panicked") {
				t.Errorf("Panic: %v, want status 500", err)
			}
			mu.Lock()
			if !strings.Contains(logs.String(), "handler panicked") {
				t.Errorf("the panic was not logged: %s", logs.String())
			}
			mu.Unlock()
			wrong = true
			_, err = s.run(context.Background(), hello, codec.JSON{}, []byte(`{"name":"x"}`), "test", nil)
			if err == nil || err.Error() != "server: "+tc.prefix+".Hello: an interceptor passed a *server.Rsp request, want *server.Req" {
				t.Errorf("a wrong request type: %v", err)
			}
		})
	}
	if ptr.calls != 8*50 {
		t.Errorf("the pointer receiver saw %d calls, want %d", ptr.calls, 8*50)
	}
}

type syncWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

// TestHandleCallAllocs: a handler call allocates the response and nothing
// else; decoding it the request.
func TestHandleCallAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts differ under the race detector")
	}
	s, err := New(Name("x"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Handle(&benchGreeter{prefix: "p"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Handle(allocValue{big: [5]int{1}}); err != nil {
		t.Fatal(err)
	}
	if err := HandleFunc(s, "F.Hello", func(ctx context.Context, req *Req, rsp *Rsp) error { rsp.Msg = "f"; return nil }); err != nil {
		t.Fatal(err)
	}
	ctx := context.WithValue(context.Background(), ctxKey{}, "c")
	body := []byte(`{}`)
	for _, name := range []string{"benchGreeter.Hello", "allocValue.Hello", "F.Hello"} {
		h := s.handlers[name]
		if name != "F.Hello" && !h.direct {
			t.Errorf("%s: called with reflection", name)
		}
		req, err := h.decode(codec.JSON{}, body)
		if err != nil {
			t.Fatal(err)
		}
		if n := testing.AllocsPerRun(100, func() {
			if _, err := h.decode(codec.JSON{}, body); err != nil {
				t.Fatal(err)
			}
		}); n != 1 {
			t.Errorf("%s: decode allocates %v times, want 1 (the request)", name, n)
		}
		if n := testing.AllocsPerRun(100, func() {
			if _, err := h.call(ctx, req); err != nil {
				t.Fatal(err)
			}
		}); n != 1 {
			t.Errorf("%s: call allocates %v times, want 1 (the response)", name, n)
		}
	}
}

type allocValue struct{ big [5]int }

func (v allocValue) Hello(ctx context.Context, req *Req, rsp *Rsp) error {
	if v.big[0] != 1 {
		return errFail
	}
	rsp.Msg = "v"
	return nil
}

// TestReflectCall: the fallback, for a receiver whose pointer type has no
// methods, calls as the direct one does.
func TestReflectCall(t *testing.T) {
	v := dValue{tag: "r"}
	call := reflectCall(reflectValueMethod(v, "Hello"))
	req, rsp := &Req{Name: "Ann"}, &Rsp{}
	ctx := context.WithValue(context.Background(), ctxKey{}, "c")
	if err := call(ctx, reflectValueOf(req), reflectValueOf(rsp)); err != nil || !strings.HasPrefix(rsp.Msg, "r:Ann:c") {
		t.Fatalf("%q %v", rsp.Msg, err)
	}
	fail := reflectCall(reflectValueMethod(v, "Fail"))
	if err := fail(ctx, reflectValueOf(req), reflectValueOf(rsp)); !errors.Is(err, errFail) {
		t.Fatalf("Fail: %v", err)
	}
}

func reflectValueOf(v any) reflect.Value { return reflect.ValueOf(v) }

func reflectValueMethod(v any, name string) reflect.Value {
	return reflect.ValueOf(v).MethodByName(name)
}
