package client_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/internal/testcert"
	"github.com/beacon-go/beacon/selector"
	"github.com/beacon-go/beacon/server"
)

// benchTLS runs, in BenchmarkCall, Beacon with TLS against grpc-go with TLS
// (credentials.NewTLS), with the same certificates (an ECDSA P-256 server
// certificate with IP SAN 127.0.0.1) and the same JSON payload, at
// concurrency conc. Connections are set up before the timer starts: the
// figures are per call on established TLS connections.
func benchTLS(b *testing.B, conc int) {
	ca := testcert.NewCA(b, "bench CA")
	cert := ca.Server(b, "bench").TLS(b)
	srvCfg := func() *tls.Config {
		return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	cliCfg := func() *tls.Config { return &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12} }
	b.Run(fmt.Sprintf("beacon-tls/c=%d", conc), func(b *testing.B) {
		e := newEnv(b, 3, server.TLS(srvCfg()))
		sel := selector.New(e.reg, selector.WithStrategy(selector.LeastLoaded()), selector.WithLogger(quiet))
		defer sel.Close()
		cli := client.New(sel, client.TLS(cliCfg()))
		defer cli.Close()
		ctx := context.Background()
		for range 3 {
			if err := cli.Call(ctx, "greeter", "Greeter.Hello", benchReq, new(HelloRsp)); err != nil {
				b.Fatal(err)
			}
		}
		run(b, conc, func() error {
			var rsp HelloRsp
			return cli.Call(ctx, "greeter", "Greeter.Hello", benchReq, &rsp)
		})
	})
	b.Run(fmt.Sprintf("grpc-tls/c=%d", conc), func(b *testing.B) {
		cc, stop := grpcTLSServer(b, srvCfg(), cliCfg())
		defer stop()
		ctx := context.Background()
		if err := cc.Invoke(ctx, "/bench.Greeter/Hello", benchReq, new(HelloRsp), grpc.ForceCodec(jsonCodec{})); err != nil {
			b.Fatal(err)
		}
		run(b, conc, func() error {
			var rsp HelloRsp
			return cc.Invoke(ctx, "/bench.Greeter/Hello", benchReq, &rsp, grpc.ForceCodec(jsonCodec{}))
		})
	})
}

// grpcTLSServer is grpcServer with TLS on both sides.
func grpcTLSServer(b *testing.B, srvCfg, cliCfg *tls.Config) (*grpc.ClientConn, func()) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ForceServerCodec(jsonCodec{}), grpc.Creds(credentials.NewTLS(srvCfg)))
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
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(cliCfg)))
	if err != nil {
		b.Fatal(err)
	}
	return cc, func() { cc.Close(); srv.Stop() }
}
