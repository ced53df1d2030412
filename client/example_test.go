package client_test

import (
	"context"
	"fmt"
	"time"

	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/metadata"
	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/selector"
	"github.com/beacon-go/beacon/server"
	"github.com/beacon-go/beacon/status"
)

// Calling a service by name: the selector finds its nodes in the registry
// (cached, watched), the client picks one per attempt and retries another
// when a node provably did not run the call.
func ExampleClient_Call() {
	reg := memory.New()
	defer reg.Close()
	srv, _ := server.New(server.Name("greeter"), server.Address("127.0.0.1:0"), server.Registry(reg),
		server.Logger(quiet), server.DrainGrace(time.Millisecond))
	server.HandleFunc(srv, "Greeter.Hello", func(ctx context.Context, req *HelloReq, rsp *HelloRsp) error {
		md, _ := metadata.FromIncomingContext(ctx)
		rsp.Msg = "Hello " + req.Name + " from " + md.Get("tenant")
		return nil
	})
	ctx := context.Background()
	if err := srv.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Stop(ctx)

	sel := selector.New(reg)
	defer sel.Close()
	cli := client.New(sel)
	defer cli.Close()

	ctx = metadata.AppendToOutgoingContext(ctx, "tenant", "acme")
	rsp := new(HelloRsp)
	err := cli.Call(ctx, "greeter", "Greeter.Hello", &HelloReq{Name: "Ann"}, rsp, client.WithRequestTimeout(time.Second))
	fmt.Println(rsp.Msg, err)

	err = cli.Call(ctx, "nobody", "Greeter.Hello", &HelloReq{}, rsp)
	fmt.Println(status.Code(err))
	// Output:
	// Hello Ann from acme <nil>
	// 404
}
