package beacon_test

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/beacon-go/beacon"
	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/server"
)

type HelloReq struct {
	Name string `json:"name"`
}

type HelloRsp struct {
	Msg string `json:"msg"`
}

// Greeter's Hello becomes the endpoint "Greeter.Hello".
type Greeter struct{}

func (Greeter) Hello(ctx context.Context, req *HelloReq, rsp *HelloRsp) error {
	rsp.Msg = "Hello " + req.Name
	return nil
}

// A service and a call to it by name. Programs usually call Run, which
// starts, waits for SIGINT/SIGTERM and stops; the registry is usually chosen
// by flags (--registry etcd, with cmd.NewService); here it is an
// in-process one.
func ExampleNewService() {
	reg := memory.New()
	defer reg.Close()
	svc, err := beacon.NewService(beacon.Name("greeter"), beacon.Registry(reg),
		beacon.Address("127.0.0.1:0"), beacon.Logger(slog.New(slog.DiscardHandler)),
		beacon.ServerOptions(server.DrainGrace(time.Millisecond)))
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := svc.Handle(Greeter{}); err != nil {
		fmt.Println(err)
		return
	}
	ctx := context.Background()
	if err := svc.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	defer svc.Stop(ctx)

	rsp := new(HelloRsp)
	if err := svc.Client().Call(ctx, "greeter", "Greeter.Hello", &HelloReq{Name: "Ann"}, rsp); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(rsp.Msg)
	// Output: Hello Ann
}
