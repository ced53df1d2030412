package server_test

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/server"
	"github.com/beacon-go/beacon/status"
)

type SumReq struct {
	A, B int
}

type SumRsp struct {
	Sum int
}

// A server with a typed endpoint and an interceptor: Start listens,
// registers and heartbeats; Stop deregisters, drains and stops.
func ExampleHandleFunc() {
	reg := memory.New()
	defer reg.Close()
	refuseNegative := func(ctx context.Context, req any, info *server.HandlerInfo, next server.HandlerFunc) (any, error) {
		if r, ok := req.(*SumReq); ok && (r.A < 0 || r.B < 0) {
			return nil, status.New(status.BadRequest, "negative")
		}
		return next(ctx, req)
	}
	srv, err := server.New(server.Name("calc"), server.Address("127.0.0.1:0"), server.Registry(reg),
		server.WithInterceptors(refuseNegative), server.Logger(slog.New(slog.DiscardHandler)),
		server.DrainGrace(time.Millisecond))
	if err != nil {
		fmt.Println(err)
		return
	}
	err = server.HandleFunc(srv, "Calc.Sum", func(ctx context.Context, req *SumReq, rsp *SumRsp) error {
		rsp.Sum = req.A + req.B
		return nil
	}, server.Idempotent())
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx := context.Background()
	if err := srv.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	svc := srv.Service()
	fmt.Println(svc.Name, svc.Endpoints[0].Name, svc.Endpoints[0].Metadata["idempotent"])
	fmt.Println(srv.Stop(ctx))
	// Output:
	// calc Calc.Sum true
	// <nil>
}
