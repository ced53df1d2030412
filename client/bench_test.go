package client_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/selector"
	"google.golang.org/grpc/credentials/insecure"
)

// The same request and response, JSON-encoded, for Beacon and both baselines.
var benchReq = &HelloReq{Name: "Ann"}

func hello(req *HelloReq, rsp *HelloRsp) { rsp.Msg, rsp.Node = "Hello "+req.Name, "bench" }

// BenchmarkCall compares a Beacon call by name with raw net/http and raw
// grpc-go carrying the same JSON payload, at concurrency 1 and 64, in
// plaintext and with TLS (Beacon against grpc-go, bench_tls_test.go).
// b.SetParallelism(32) on 2 CPUs gives 64 goroutines.
func BenchmarkCall(b *testing.B) {
	for _, conc := range []int{1, 64} {
		benchFloor(b, conc) // floor-pingpong and floor-mux (floor_test.go)
		for _, strat := range []selector.Strategy{selector.LeastLoaded(), selector.RoundRobin()} {
			b.Run(fmt.Sprintf("beacon-%s/c=%d", strat, conc), func(b *testing.B) {
				e := newEnv(b, 3)
				sel := selector.New(e.reg, selector.WithStrategy(strat), selector.WithLogger(quiet))
				defer sel.Close()
				cli := client.New(sel)
				defer cli.Close()
				ctx := context.Background()
				if err := cli.Call(ctx, "greeter", "Greeter.Hello", benchReq, new(HelloRsp)); err != nil {
					b.Fatal(err)
				}
				run(b, conc, func() error {
					var rsp HelloRsp
					return cli.Call(ctx, "greeter", "Greeter.Hello", benchReq, &rsp)
				})
			})
		}
		b.Run(fmt.Sprintf("beacon-http/c=%d", conc), func(b *testing.B) {
			e := newEnv(b, 1)
			url := "http://" + e.servers[0].Addr().String() + "/Greeter.Hello"
			hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 128}}
			defer hc.CloseIdleConnections()
			run(b, conc, func() error {
				body, _ := json.Marshal(benchReq)
				resp, err := hc.Post(url, "application/json", bytes.NewReader(body))
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				var rsp HelloRsp
				return json.NewDecoder(resp.Body).Decode(&rsp)
			})
		})
		b.Run(fmt.Sprintf("nethttp/c=%d", conc), func(b *testing.B) {
			url, stop := httpServer(b)
			defer stop()
			hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 128}}
			defer hc.CloseIdleConnections()
			run(b, conc, func() error {
				body, _ := json.Marshal(benchReq)
				resp, err := hc.Post(url, "application/json", bytes.NewReader(body))
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				var rsp HelloRsp
				return json.NewDecoder(resp.Body).Decode(&rsp)
			})
		})
		b.Run(fmt.Sprintf("grpc/c=%d", conc), func(b *testing.B) {
			cc, stop := grpcServer(b)
			defer stop()
			ctx := context.Background()
			run(b, conc, func() error {
				var rsp HelloRsp
				return cc.Invoke(ctx, "/bench.Greeter/Hello", benchReq, &rsp, grpc.ForceCodec(jsonCodec{}))
			})
		})
		benchTLS(b, conc) // beacon-tls and grpc-tls (bench_tls_test.go)
	}
}

func run(b *testing.B, conc int, fn func() error) {
	runEach(b, conc, func() func() error { return fn })
}

// runEach runs the calls of setup's functions (one per calling goroutine)
// at concurrency conc, and reports beside ns/op and allocs/op the latency
// of a call (p50-us, p99-us), and for the whole process, client and server
// together, the write system calls (writes/op) and the CPU time, user and
// system (cpu-us/op: on a shared machine a steadier measure of cost than
// the time per call, which other processes' load stretches).
func runEach(b *testing.B, conc int, setup func() func() error) {
	var (
		mu  sync.Mutex
		all latency
	)
	b.ReportAllocs()
	writes, cpu0 := writeSyscalls(), cpuTime()
	b.ResetTimer()
	if conc == 1 {
		fn := setup()
		var h latency
		for b.Loop() {
			t0 := time.Now()
			if err := fn(); err != nil {
				b.Fatal(err)
			}
			h.add(time.Since(t0))
		}
		all = h
	} else {
		b.SetParallelism((conc + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
		b.RunParallel(func(pb *testing.PB) {
			fn := setup()
			h := new(latency)
			defer func() {
				mu.Lock()
				all.merge(h)
				mu.Unlock()
			}()
			for pb.Next() {
				t0 := time.Now()
				if err := fn(); err != nil {
					b.Error(err)
					return
				}
				h.add(time.Since(t0))
			}
		})
	}
	b.StopTimer()
	if w := writeSyscalls(); writes >= 0 && w >= 0 {
		b.ReportMetric(float64(w-writes)/float64(b.N), "writes/op")
	}
	if cpu0 >= 0 {
		b.ReportMetric(float64(cpuTime()-cpu0)/1e3/float64(b.N), "cpu-us/op")
	}
	b.ReportMetric(float64(all.quantile(0.5))/1e3, "p50-us")
	b.ReportMetric(float64(all.quantile(0.99))/1e3, "p99-us")
}

func httpServer(b *testing.B) (string, func()) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req HelloReq
		body, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(body, &req); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		var rsp HelloRsp
		hello(&req, &rsp)
		w.Header().Set("Content-Type", "application/json")
		out, _ := json.Marshal(&rsp)
		w.Write(out)
	})}
	go srv.Serve(ln)
	return "http://" + ln.Addr().String() + "/", func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}
}

type jsonCodec struct{}

func (jsonCodec) Marshal(v any) ([]byte, error)      { return json.Marshal(v) }
func (jsonCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }
func (jsonCodec) Name() string                       { return "json" }

func grpcServer(b *testing.B) (*grpc.ClientConn, func()) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ForceServerCodec(jsonCodec{}))
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: "bench.Greeter",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Hello",
			Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				var req HelloReq
				if err := dec(&req); err != nil {
					return nil, err
				}
				rsp := new(HelloRsp)
				hello(&req, rsp)
				return rsp, nil
			},
		}},
	}, struct{}{})
	go srv.Serve(ln)
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	return cc, func() { cc.Close(); srv.Stop() }
}
