package otelbeacon_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/otelbeacon"
	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/selector"
	"github.com/beacon-go/beacon/server"
)

type HelloReq struct{ Name string }
type HelloRsp struct{ Msg string }

// A server and a client instrumented by one Instrumentation. A program
// would give New providers that export (OTLP, stdout...), or set the
// global ones and call New without options; here the spans and metrics
// stay in memory to be printed.
func Example() {
	ctx := context.Background()
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(ctx)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(ctx)

	inst, err := otelbeacon.New(otelbeacon.WithTracerProvider(tp), otelbeacon.WithMeterProvider(mp))
	if err != nil {
		log.Fatal(err)
	}
	reg := memory.New()
	defer reg.Close()
	quiet := slog.New(slog.DiscardHandler)

	// The server: its interceptor continues the caller's trace.
	srv, err := server.New(server.Name("greeter"), server.Address("127.0.0.1:0"), server.Registry(reg),
		server.Logger(quiet), server.DrainGrace(time.Millisecond),
		server.WithInterceptors(inst.ServerInterceptor()))
	if err != nil {
		log.Fatal(err)
	}
	server.HandleFunc(srv, "Greeter.Hello", func(ctx context.Context, req *HelloReq, rsp *HelloRsp) error {
		rsp.Msg = "Hello " + req.Name
		return nil
	})
	if err := srv.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer srv.Stop(ctx)

	// The client: its selector counts ejections and registry events, its
	// interceptors trace and measure calls and attempts.
	sel := selector.New(reg, append(inst.SelectorOptions(), selector.WithLogger(quiet))...)
	defer sel.Close()
	cli := client.New(sel, append(inst.ClientOptions(), client.Logger(quiet))...)
	defer cli.Close()

	rsp := new(HelloRsp)
	if err := cli.Call(ctx, "greeter", "Greeter.Hello", &HelloReq{Name: "Ann"}, rsp); err != nil {
		log.Fatal(err)
	}
	fmt.Println(rsp.Msg)
	for _, s := range spans.Ended() {
		fmt.Println(s.SpanKind(), s.Name(), "parent", s.Parent().SpanID() != [8]byte{})
	}
	var rm metricdata.ResourceMetrics
	reader.Collect(ctx, &rm)
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if m.Name == "beacon.client.calls" {
			fmt.Println(m.Name, m.Data.(metricdata.Sum[int64]).DataPoints[0].Value)
		}
	}
	// Output:
	// Hello Ann
	// server greeter/Greeter.Hello parent true
	// client greeter/Greeter.Hello parent true
	// internal greeter/Greeter.Hello parent false
	// beacon.client.calls 1
}
