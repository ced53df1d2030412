package server

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
)

// One type per signature, each with a method Hello, for TestHandleSignatures.
type (
	sigValueRecv   struct{}
	sigPointerRecv struct{}
	sigWithHelpers struct{}
	sigValueReq    struct{}
	sigValueRsp    struct{}
	sigNoCtx       struct{}
	sigCtxLast     struct{}
	sigCtxSecond   struct{}
	sigNoReturn    struct{}
	sigWrongReturn struct{}
	sigExtraReturn struct{}
	sigGrpcStyle   struct{}
	sigCtxOnly     struct{}
	sigExtraArg    struct{}
	sigMixed       struct{}
	sigTwoBad      struct{}

	sigWithHelpersOnly struct{}
)

type sigConfig struct{}

func (sigValueRecv) Hello(context.Context, *Req, *Rsp) error    { return nil }
func (*sigPointerRecv) Hello(context.Context, *Req, *Rsp) error { return nil }

func (sigWithHelpers) Hello(context.Context, *Req, *Rsp) error { return nil }
func (sigWithHelpers) String() string                          { return "" }
func (sigWithHelpers) Close() error                            { return nil }
func (sigWithHelpers) Init(*sigConfig) error                   { return nil }
func (sigWithHelpers) Set(k, v string) error                   { return nil }
func (sigWithHelpers) Use(*Req, Rsp) error                     { return nil }
func (sigWithHelpers) Sum(a, b int) int                        { return a + b }
func (sigWithHelpers) hello(*Req, *Rsp) error                  { return nil }

func (sigWithHelpersOnly) String() string { return "" }

func (sigValueReq) Hello(context.Context, Req, *Rsp) error             { return nil }
func (sigValueRsp) Hello(context.Context, *Req, Rsp) error             { return nil }
func (sigNoCtx) Hello(*Req, *Rsp) error                                { return nil }
func (sigCtxLast) Hello(*Req, *Rsp, context.Context) error             { return nil }
func (sigCtxSecond) Hello(*Req, context.Context, *Rsp) error           { return nil }
func (sigNoReturn) Hello(context.Context, *Req, *Rsp)                  {}
func (sigWrongReturn) Hello(context.Context, *Req, *Rsp) string        { return "" }
func (sigExtraReturn) Hello(context.Context, *Req, *Rsp) (int, error)  { return 0, nil }
func (sigGrpcStyle) Hello(context.Context, *Req) (*Rsp, error)         { return nil, nil }
func (sigCtxOnly) Ping(context.Context) error                          { return nil }
func (sigExtraArg) Hello(context.Context, *Req, *Rsp, ...string) error { return nil }
func (sigMixed) Hello(context.Context, *Req, *Rsp) error               { return nil }
func (sigMixed) Bye(context.Context, Req, *Rsp) error                  { return nil }
func (sigTwoBad) A(*Req, *Rsp) error                                   { return nil }
func (sigTwoBad) B(context.Context, *Req, *Rsp) (*Rsp, error)          { return nil, nil }

func TestHandleSignatures(t *testing.T) {
	const want = "want func(ctx context.Context, req *Req, rsp *Rsp) error"
	tests := []struct {
		name      string
		h         any
		endpoints []string // accepted: the endpoints added
		errs      []string // rejected: every line of the error
	}{
		{"value receiver", sigValueRecv{}, []string{"sigValueRecv.Hello"}, nil},
		{"value receiver through a pointer", &sigValueRecv{}, []string{"sigValueRecv.Hello"}, nil},
		{"pointer receiver", &sigPointerRecv{}, []string{"sigPointerRecv.Hello"}, nil},
		{"helpers are not handler-like", sigWithHelpers{}, []string{"sigWithHelpers.Hello"}, nil},

		{"request not a pointer", sigValueReq{}, nil, []string{"server: not a handler: sigValueReq.Hello: request must be a pointer (got server.Req)"}},
		{"response not a pointer", sigValueRsp{}, nil, []string{"server: not a handler: sigValueRsp.Hello: response must be a pointer (got server.Rsp)"}},
		{"no context", sigNoCtx{}, nil, []string{"server: not a handler: sigNoCtx.Hello: takes 2 arguments, " + want}},
		{"context last", sigCtxLast{}, nil, []string{"server: not a handler: sigCtxLast.Hello: first argument must be context.Context (got *server.Req)"}},
		{"context second", sigCtxSecond{}, nil, []string{"server: not a handler: sigCtxSecond.Hello: first argument must be context.Context (got *server.Req)"}},
		{"no result", sigNoReturn{}, nil, []string{"server: not a handler: sigNoReturn.Hello: must return error (returns nothing)"}},
		{"wrong result", sigWrongReturn{}, nil, []string{"server: not a handler: sigWrongReturn.Hello: must return error (returns string)"}},
		{"extra result", sigExtraReturn{}, nil, []string{"server: not a handler: sigExtraReturn.Hello: must return only error (returns (int, error))"}},
		{"gRPC style", sigGrpcStyle{}, nil, []string{"server: not a handler: sigGrpcStyle.Hello: takes 2 arguments, " + want}},
		{"context only", sigCtxOnly{}, nil, []string{"server: not a handler: sigCtxOnly.Ping: takes 1 argument, " + want}},
		{"variadic", sigExtraArg{}, nil, []string{"server: not a handler: sigExtraArg.Hello: takes 4 arguments, " + want}},
		{"one bad method fails the value", sigMixed{}, nil, []string{"server: not a handler: sigMixed.Bye: request must be a pointer (got server.Req)"}},
		{"every bad method is named", sigTwoBad{}, nil, []string{
			"server: not a handler: sigTwoBad.A: takes 2 arguments, " + want,
			"server: not a handler: sigTwoBad.B: must return only error (returns (*server.Rsp, error))",
		}},
		{"pointer methods of a value", sigPointerRecv{}, nil, []string{"server: not a handler: sigPointerRecv.Hello: has a pointer receiver: pass a *server.sigPointerRecv (got server.sigPointerRecv)"}},
		{"no handler-like method", sigWithHelpersOnly{}, nil, []string{"server: not a handler: server.sigWithHelpersOnly has no method func(context.Context, *Req, *Rsp) error"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(Name("x"))
			if err != nil {
				t.Fatal(err)
			}
			err = s.Handle(tc.h)
			var got []string
			for name := range s.handlers {
				got = append(got, name)
			}
			slices.Sort(got)
			if tc.errs == nil {
				if err != nil || !slices.Equal(got, tc.endpoints) {
					t.Fatalf("Handle(%T) = %v, endpoints %v; want nil, %v", tc.h, err, got, tc.endpoints)
				}
				return
			}
			if !errors.Is(err, ErrBadHandler) {
				t.Fatalf("Handle(%T) = %v, want ErrBadHandler", tc.h, err)
			}
			if lines := strings.Split(err.Error(), "\n"); !slices.Equal(lines, tc.errs) {
				t.Errorf("Handle(%T) error:\n%s\nwant:\n%s", tc.h, err, strings.Join(tc.errs, "\n"))
			}
			if len(got) != 0 {
				t.Errorf("a refused value added endpoints %v", got)
			}
		})
	}
}

// TestAddedTwice: an endpoint added twice, by Handle or HandleFunc, is an
// error naming the endpoint and both sources; the second call adds nothing.
func TestAddedTwice(t *testing.T) {
	handle := func(s *Server) error { return s.Handle(good{}) }
	handleFunc := func(s *Server) error { return HandleFunc(s, "good.Hello", good{}.Hello) }
	tests := []struct {
		name          string
		first, second func(*Server) error
		want          string
	}{
		{"Handle twice", handle, handle,
			"server: not a handler: endpoint good.Hello added twice: first by Handle(server.good), again by Handle(server.good)"},
		{"Handle then HandleFunc", handle, handleFunc,
			"server: not a handler: endpoint good.Hello added twice: first by Handle(server.good), again by HandleFunc[server.Req, server.Rsp]"},
		{"HandleFunc then Handle", handleFunc, handle,
			"server: not a handler: endpoint good.Hello added twice: first by HandleFunc[server.Req, server.Rsp], again by Handle(server.good)"},
		{"HandleFunc twice", handleFunc, handleFunc,
			"server: not a handler: endpoint good.Hello added twice: first by HandleFunc[server.Req, server.Rsp], again by HandleFunc[server.Req, server.Rsp]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(Name("x"))
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.first(s); err != nil {
				t.Fatal(err)
			}
			first := s.handlers["good.Hello"]
			err = tc.second(s)
			if !errors.Is(err, ErrBadHandler) || err.Error() != tc.want {
				t.Fatalf("second add = %v\nwant %s", err, tc.want)
			}
			if len(s.handlers) != 1 || s.handlers["good.Hello"] != first {
				t.Fatalf("the refused add changed the handlers: %v", s.handlers)
			}
		})
	}
}
