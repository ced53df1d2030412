package server

import (
	"context"
	"testing"

	"github.com/beacon-go/beacon/codec"
)

type benchGreeter struct{ prefix string }

func (g *benchGreeter) Hello(ctx context.Context, req *Req, rsp *Rsp) error {
	rsp.Msg = g.prefix
	return nil
}

// BenchmarkHandlerCall measures one handler call as the server runs it
// without interceptors: decode the request into a new value (the JSON
// codec, strict), then call the method. Its allocations are the request,
// the response, whatever the codec needs, and what the call itself costs:
// "call" alone is the handler call without the decode.
func BenchmarkHandlerCall(b *testing.B) {
	body := []byte(`{"name":"Ann"}`)
	hs, err := handlersOf(&benchGreeter{prefix: "hi"})
	if err != nil {
		b.Fatal(err)
	}
	fn := func(ctx context.Context, req *Req, rsp *Rsp) error { rsp.Msg = "hi"; return nil }
	s, err := New(Name("x"))
	if err != nil {
		b.Fatal(err)
	}
	if err := HandleFunc(s, "F.Hello", fn); err != nil {
		b.Fatal(err)
	}
	cases := []struct {
		name string
		h    *handler
	}{{"Handle", hs[0]}, {"HandleFunc", s.handlers["F.Hello"]}}
	ctx := context.Background()
	cd := codec.NewSet().Get
	jc, _ := cd(codec.JSONContentType)
	for _, tc := range cases {
		b.Run(tc.name+"/decode+call", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				req, err := tc.h.decode(jc, body)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := tc.h.call(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(tc.name+"/call", func(b *testing.B) {
			req, err := tc.h.decode(jc, body)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := tc.h.call(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
