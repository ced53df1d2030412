package gomicroconsul

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	gmbroker "go-micro.dev/v5/broker"
	gmserver "go-micro.dev/v5/server"
	gmgrpc "go-micro.dev/v5/server/grpc"

	"github.com/beacon-go/beacon/beacongrpc"
	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/selector"
	"github.com/beacon-go/beacon/server"
)

type HelloReq struct {
	Name string `json:"name"`
}

type HelloRsp struct {
	Msg string `json:"msg"`
}

// Greeter is a go-micro handler (go-micro names endpoints after the type:
// Greeter.Hello).
type Greeter struct{}

func (Greeter) Hello(_ context.Context, req *HelloReq, rsp *HelloRsp) error {
	rsp.Msg = "go-micro: hello " + req.Name
	return nil
}

// beaconHello is a Beacon handler (endpoint Greeter.Hello).
func beaconHello(_ context.Context, req *HelloReq, rsp *HelloRsp) error {
	rsp.Msg = "beacon: hello " + req.Name
	return nil
}

// startGoMicro starts a real go-micro server (mucp, or gRPC) named name on
// 127.0.0.1, registered through go-micro's consul registry; it returns the
// node ID it registered.
func startGoMicro(t *testing.T, name string, grpc bool) string {
	t.Helper()
	opts := []gmserver.Option{
		gmserver.Name(name),
		gmserver.Address("127.0.0.1:0"),
		gmserver.Registry(goMicroRegistry(t)),
		gmserver.Broker(gmbroker.NewMemoryBroker()),
		gmserver.RegisterTTL(30 * time.Second),
		gmserver.RegisterInterval(10 * time.Second),
	}
	var srv gmserver.Server
	if grpc {
		srv = gmgrpc.NewServer(opts...)
	} else {
		srv = gmserver.NewRPCServer(opts...)
	}
	if err := srv.Handle(srv.NewHandler(Greeter{})); err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop() })
	o := srv.Options()
	return o.Name + "-" + o.Id
}

// waitNode waits until reg shows node id of service name.
func waitNode(t *testing.T, reg registry.Registry, name, id string) *registry.Service {
	t.Helper()
	var found *registry.Service
	eventually(t, 10*time.Second, func() error {
		got, err := reg.GetService(ctxT(t), name)
		if err != nil {
			return err
		}
		if found = registry.Flatten(got)[id]; found == nil {
			return fmt.Errorf("%s not among %d versions", id, len(got))
		}
		return nil
	})
	return found
}

// TestCallGoMicroNode: a Beacon client calling a service whose only node is
// a real go-micro (mucp) node fails at once with client.ErrProtocol naming
// the node and its protocol, never dialling it; a Beacon node under the
// same name then takes every call.
func TestCallGoMicroNode(t *testing.T) {
	t.Parallel()
	br := beaconRegistry(t)
	name := uniqueName(t)
	gmID := startGoMicro(t, name, false)
	n := waitNode(t, br, name, gmID)
	if p := n.Nodes[0].Metadata[registry.MetaProtocol]; p != "mucp" {
		t.Fatalf("go-micro node publishes protocol %q", p)
	}
	sel := selector.New(br)
	defer sel.Close()
	cl := client.New(sel)
	defer cl.Close()
	for i := range 2 { // the first call fills the selector's cache
		start := time.Now()
		err := cl.Call(ctxT(t), name, "Greeter.Hello", &HelloReq{Name: "Ann"}, new(HelloRsp))
		took := time.Since(start)
		if !errors.Is(err, client.ErrProtocol) || !strings.Contains(err.Error(), gmID) || !strings.Contains(err.Error(), `"mucp"`) {
			t.Fatalf("call %d: err = %v, want client.ErrProtocol naming %s and \"mucp\"", i, err, gmID)
		}
		if took > 500*time.Millisecond {
			t.Errorf("call %d failed after %v, want well under a second", i, took)
		}
		t.Logf("call %d to the go-micro node alone: %v after %v", i, err, took)
	}

	bs, err := server.New(server.Name(name), server.Address("127.0.0.1:0"), server.Registry(br),
		server.RegisterTTL(30*time.Second), server.RegisterInterval(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := server.HandleFunc(bs, "Greeter.Hello", beaconHello); err != nil {
		t.Fatal(err)
	}
	if err := bs.Start(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	defer bs.Stop(context.Background())
	eventually(t, 10*time.Second, func() error {
		got, err := sel.Cache().GetService(ctxT(t), name)
		if err != nil {
			return err
		}
		if n := len(registry.Flatten(got)); n != 2 {
			return fmt.Errorf("%d nodes in the selector's cache, want the go-micro and the Beacon node", n)
		}
		return nil
	})
	start := time.Now()
	for i := range 20 {
		rsp := new(HelloRsp)
		if err := cl.Call(ctxT(t), name, "Greeter.Hello", &HelloReq{Name: "Ann"}, rsp, client.WithRetries(0)); err != nil {
			t.Fatalf("call %d beside the go-micro node: %v", i, err)
		}
		if rsp.Msg != "beacon: hello Ann" {
			t.Fatalf("call %d answered %q", i, rsp.Msg)
		}
	}
	t.Logf("20 calls beside the go-micro node, all to the Beacon node, in %v", time.Since(start))
}

// TestCallGoMicroGRPCNode: a real go-micro gRPC node is reached through
// beacongrpc's Caller (Greeter.Hello is the gRPC method /Greeter/Hello,
// JSON bodies); a client without that Caller gets client.ErrProtocol
// naming "grpc".
func TestCallGoMicroGRPCNode(t *testing.T) {
	t.Parallel()
	br := beaconRegistry(t)
	name := uniqueName(t)
	gmID := startGoMicro(t, name, true)
	n := waitNode(t, br, name, gmID)
	if p := n.Nodes[0].Metadata[registry.MetaProtocol]; p != registry.ProtocolGRPC {
		t.Fatalf("go-micro gRPC node publishes protocol %q", p)
	}

	sel := selector.New(br, selector.WithProtocols(registry.ProtocolBeacon, registry.ProtocolGRPC))
	defer sel.Close()
	caller := beacongrpc.NewCaller()
	defer caller.Close()
	cl := client.New(sel, client.WithCaller(registry.ProtocolGRPC, caller))
	defer cl.Close()
	rsp := new(HelloRsp)
	if err := cl.Call(ctxT(t), name, "Greeter.Hello", &HelloReq{Name: "Ann"}, rsp); err != nil {
		t.Fatalf("call through beacongrpc's Caller: %v", err)
	}
	if rsp.Msg != "go-micro: hello Ann" {
		t.Errorf("answer %q", rsp.Msg)
	}

	plainSel := selector.New(br)
	defer plainSel.Close()
	plain := client.New(plainSel)
	defer plain.Close()
	start := time.Now()
	err := plain.Call(ctxT(t), name, "Greeter.Hello", &HelloReq{Name: "Ann"}, new(HelloRsp))
	if !errors.Is(err, client.ErrProtocol) || !strings.Contains(err.Error(), `"grpc"`) {
		t.Fatalf("without the gRPC Caller: err = %v, want client.ErrProtocol naming \"grpc\"", err)
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("failed after %v, want well under a second", took)
	}
}
