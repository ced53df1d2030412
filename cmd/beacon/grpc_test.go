package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/reflection"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/beacon-go/beacon/beacongrpc"
	"github.com/beacon-go/beacon/internal/grpctest"
	"github.com/beacon-go/beacon/internal/testserver"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/etcd"
	"github.com/beacon-go/beacon/registry/registrytest"
)

// grpcGreeter serves the test greeter (internal/grpctest) with grpc-go,
// with or without server reflection, registered in reg by beacongrpc as
// service name.
func grpcGreeter(t *testing.T, reg registry.Registry, name string, withReflection bool) *beacongrpc.Server {
	t.Helper()
	g := grpctest.New()
	f := func(md protoreflect.MessageDescriptor, n string) protoreflect.FieldDescriptor {
		return md.Fields().ByName(protoreflect.Name(n))
	}
	unary := func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
		in := dynamicpb.NewMessage(g.Request)
		if err := dec(in); err != nil {
			return nil, err
		}
		if c := in.Get(f(g.Request, "code")).Int(); c != 0 {
			return nil, grpcstatus.Errorf(codes.Code(c), "no greeting for %s", in.Get(f(g.Request, "name")).String())
		}
		out := dynamicpb.NewMessage(g.Reply)
		out.Set(f(g.Reply, "message"), protoreflect.ValueOfString("Hello "+in.Get(f(g.Request, "name")).String()))
		out.Set(f(g.Reply, "node"), protoreflect.ValueOfString("g1"))
		return out, nil
	}
	gs := grpc.NewServer()
	gs.RegisterService(&grpc.ServiceDesc{ServiceName: grpctest.Service, HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{MethodName: "SayHello", Handler: unary}, {MethodName: "Lookup", Handler: unary}}}, struct{}{})
	if withReflection {
		reflectionpb.RegisterServerReflectionServer(gs, reflection.NewServerV1(reflection.ServerOptions{Services: gs, DescriptorResolver: g.Files}))
	}
	srv, err := beacongrpc.NewServer(gs, reg, beacongrpc.Name(name), beacongrpc.Version("2.0.0"), beacongrpc.ID(name+"-g1"),
		beacongrpc.Descriptors(g.Files), beacongrpc.DrainGrace(0), beacongrpc.Logger(quiet),
		beacongrpc.RegisterTTL(5*time.Second), beacongrpc.RegisterInterval(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background(), ln); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop(context.Background()) })
	return srv
}

// TestGRPCNode: the CLI lists, describes and calls a grpc-go server
// registered in etcd with beacongrpc: JSON in and out through the node's
// server reflection (this test binary registers no JSON codec with
// grpc-go, so the server accepts protobuf only).
func TestGRPCNode(t *testing.T) {
	srv := testserver.MustStartEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	reg, err := etcd.New(ctx, etcd.WithAddrs(srv.Endpoints()...), etcd.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	flags := []string{"--registry", "etcd", "--registry_address", strings.Join(srv.Endpoints(), ",")}
	g := grpcGreeter(t, reg, "grpcgreeter", true)
	grpcGreeter(t, reg, "plaingreeter", false)
	addr := g.Service().Nodes[0].Address

	registrytest.Eventually(t, 10*time.Second, func() error {
		out, errs, code := beacon(t, append(flags, "services")...)
		if code != 0 || !strings.Contains(out, "grpcgreeter") || !strings.Contains(out, "plaingreeter") {
			return fmt.Errorf("services: code %d out %q err %q", code, out, errs)
		}
		return nil
	})
	out, errs, code := beacon(t, append(flags, "describe", "grpcgreeter")...)
	for _, want := range []string{"grpcgreeter-g1", addr, "protocol=grpc", "helloworld.Greeter.SayHello", "helloworld.Greeter.Lookup",
		"HelloRequest{name string, delayMs int64, code int32}", "HelloReply{message string, node string}",
		"grpc_method=/helloworld.Greeter/SayHello", "idempotent=true"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("describe lacks %q: code %d\n%s%s", want, code, out, errs)
		}
	}

	t.Logf("beacon describe grpcgreeter:\n%s", out)

	out, errs, code = beacon(t, append(flags, "call", "grpcgreeter", "helloworld.Greeter.SayHello", `{"name":"Ann"}`)...)
	if code != 0 || !strings.Contains(out, `"message": "Hello Ann"`) {
		t.Fatalf("call: %d %q %q", code, out, errs)
	}
	out, errs, code = beacon(t, append(flags, "--json", "call", "grpcgreeter", "Greeter.SayHello", `{"name":"Bo"}`)...)
	var rsp struct{ Message, Node string }
	if code != 0 || json.Unmarshal([]byte(out), &rsp) != nil || rsp.Message != "Hello Bo" || rsp.Node != "g1" {
		t.Fatalf("call --json with the short name: %d %q %q", code, out, errs)
	}
	out, errs, code = beacon(t, "call", "--address", addr, "--protocol", "grpc", "grpcgreeter", "helloworld.Greeter.Lookup", `{"name":"Cy"}`)
	if code != 0 || !strings.Contains(out, `"message": "Hello Cy"`) {
		t.Fatalf("call --address --protocol grpc: %d %q %q", code, out, errs)
	}

	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"call", "grpcgreeter", "helloworld.Greeter.SayHello", `{"name":"Di","code":5}`}, 1, "status 404: no greeting for Di"},
		{[]string{"call", "grpcgreeter", "helloworld.Greeter.SayHello", `{"name":"Di","code":16}`}, 1, "status 401"},
		{[]string{"call", "grpcgreeter", "helloworld.Greeter.SayHello", `{"nmae":"Di"}`}, 1, "status 400"},
		{[]string{"call", "grpcgreeter", "helloworld.Greeter.Nope", `{}`}, 1, "status 404"},
		// Without reflection, the JSON goes as it is, and a server without
		// beacongrpc.JSONCodec cannot decode it.
		{[]string{"call", "plaingreeter", "helloworld.Greeter.SayHello", `{"name":"Ed"}`}, 1, "status 500"},
		{[]string{"call", "--protocol", "grpc", "grpcgreeter", "helloworld.Greeter.SayHello"}, 2, "--protocol is for --address"},
		{[]string{"call", "--address", addr, "--protocol", "mucp", "grpcgreeter", "helloworld.Greeter.SayHello"}, 2, "--protocol"},
	}
	for _, c := range cases {
		_, errs, code := beacon(t, append(flags, c.args...)...)
		if code != c.code || !strings.Contains(errs, c.want) {
			t.Errorf("%v: code %d stderr %q; want %d and %q", c.args, code, errs, c.code, c.want)
		}
	}
}
