package beacongrpc_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpcmd "google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/beacon-go/beacon/beacongrpc"
	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/internal/grpctest"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/selector"
)

var quiet = slog.New(slog.DiscardHandler)

var greeter = grpctest.New()

// jsonOnce registers the JSON codec with grpc-go once, before the first
// test's servers run (grpc-go's codec table is not safe for concurrent
// use; no gRPC goroutine runs when the first test starts).
var jsonOnce sync.Once

// setup registers the JSON codec and checks, at the end of the test, that
// no goroutine it started is left.
func setup(t testing.TB) {
	jsonOnce.Do(beacongrpc.RegisterJSONCodec)
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

// node is one greeter: a grpc-go server registered with beacongrpc.
type node struct {
	id    string
	gs    *grpc.Server
	srv   *beacongrpc.Server
	addr  string
	calls atomic.Int64 // SayHello and Lookup calls that ran
}

func field(md protoreflect.MessageDescriptor, name string) protoreflect.FieldDescriptor {
	return md.Fields().ByName(protoreflect.Name(name))
}

// sayHello answers "Hello <name>" (with the tenant of the request metadata,
// if any) after delay_ms, or fails with code; it sets a header and a
// trailer, and echoes the request's content-type in a trailer.
func (n *node) sayHello(ctx context.Context, in *dynamicpb.Message) (*dynamicpb.Message, error) {
	n.calls.Add(1)
	md, _ := grpcmd.FromIncomingContext(ctx)
	grpc.SetHeader(ctx, grpcmd.Pairs("x-served-by", n.id))
	trl := grpcmd.Pairs("x-trailer", "t")
	if ct := md.Get("content-type"); len(ct) > 0 {
		trl.Set("x-content-type", ct[0])
	}
	grpc.SetTrailer(ctx, trl)
	if d := in.Get(field(greeter.Request, "delay_ms")).Int(); d > 0 {
		select {
		case <-time.After(time.Duration(d) * time.Millisecond):
		case <-ctx.Done():
			return nil, grpcstatus.FromContextError(ctx.Err()).Err()
		}
	}
	name := in.Get(field(greeter.Request, "name")).String()
	if c := in.Get(field(greeter.Request, "code")).Int(); c != 0 {
		return nil, grpcstatus.Errorf(codes.Code(c), "failed for %s", name)
	}
	msg := "Hello " + name
	if t := md.Get("tenant"); len(t) > 0 {
		msg += " of " + t[0]
	}
	out := dynamicpb.NewMessage(greeter.Reply)
	out.Set(field(greeter.Reply, "message"), protoreflect.ValueOfString(msg))
	out.Set(field(greeter.Reply, "node"), protoreflect.ValueOfString(n.id))
	return out, nil
}

func (n *node) desc() *grpc.ServiceDesc {
	unary := func(srv any, ctx context.Context, dec func(any) error, in grpc.UnaryServerInterceptor) (any, error) {
		req := dynamicpb.NewMessage(greeter.Request)
		if err := dec(req); err != nil {
			return nil, err
		}
		return n.sayHello(ctx, req)
	}
	chat := func(srv any, stream grpc.ServerStream) error {
		for {
			req := dynamicpb.NewMessage(greeter.Request)
			if err := stream.RecvMsg(req); err == io.EOF {
				return nil
			} else if err != nil {
				return err
			}
			out, err := n.sayHello(stream.Context(), req)
			if err != nil {
				return err
			}
			if err := stream.SendMsg(out); err != nil {
				return err
			}
		}
	}
	return &grpc.ServiceDesc{
		ServiceName: grpctest.Service,
		HandlerType: (*any)(nil),
		Methods:     []grpc.MethodDesc{{MethodName: "SayHello", Handler: unary}, {MethodName: "Lookup", Handler: unary}},
		Streams:     []grpc.StreamDesc{{StreamName: "Chat", Handler: chat, ServerStreams: true, ClientStreams: true}},
		Metadata:    greeter.File.Path(),
	}
}

// startNode starts a greeter with reflection, registered in reg with a
// short TTL, and stops it at cleanup.
func startNode(t testing.TB, reg registry.Registry, id string, opts ...beacongrpc.ServerOption) *node {
	t.Helper()
	n := &node{id: id, gs: grpc.NewServer()}
	n.gs.RegisterService(n.desc(), struct{}{})
	reflectionpb.RegisterServerReflectionServer(n.gs, reflection.NewServerV1(reflection.ServerOptions{Services: n.gs, DescriptorResolver: greeter.Files}))
	all := append([]beacongrpc.ServerOption{beacongrpc.Name("greeter"), beacongrpc.Version("1.0.0"), beacongrpc.ID(id),
		beacongrpc.RegisterTTL(2 * time.Second), beacongrpc.RegisterInterval(200 * time.Millisecond), beacongrpc.DrainGrace(50 * time.Millisecond),
		beacongrpc.Logger(quiet), beacongrpc.Descriptors(greeter.Files)}, opts...)
	srv, err := beacongrpc.NewServer(n.gs, reg, all...)
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
	n.srv, n.addr = srv, ln.Addr().String()
	t.Cleanup(func() { srv.Stop(context.Background()) })
	return n
}

// newClient returns a Beacon client whose selector offers Beacon and gRPC
// nodes, with the gRPC Caller, closed at cleanup.
func newClient(t testing.TB, reg registry.Registry, copts []beacongrpc.CallerOption, opts ...client.Option) (*client.Client, *beacongrpc.Caller) {
	sel := selector.New(reg, selector.WithLogger(quiet), selector.WithProtocols(registry.ProtocolBeacon, registry.ProtocolGRPC),
		selector.WithStrategy(selector.RoundRobin()))
	caller := beacongrpc.NewCaller(copts...)
	c := client.New(sel, append([]client.Option{client.WithCaller(registry.ProtocolGRPC, caller), client.Logger(quiet),
		client.WithDefaultBackoff(client.ExponentialBackoff(time.Millisecond, 5*time.Millisecond))}, opts...)...)
	t.Cleanup(func() { c.Close(); sel.Close() })
	return c, caller
}

// hello returns a HelloRequest.
func hello(name string) *dynamicpb.Message {
	m := dynamicpb.NewMessage(greeter.Request)
	m.Set(field(greeter.Request, "name"), protoreflect.ValueOfString(name))
	return m
}

func reply() *dynamicpb.Message { return dynamicpb.NewMessage(greeter.Reply) }

func message(m *dynamicpb.Message) string {
	return m.Get(field(greeter.Reply, "message")).String()
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func protoValueInt(n int64) protoreflect.Value { return protoreflect.ValueOfInt64(n) }

func protoValueInt32(n int32) protoreflect.Value { return protoreflect.ValueOfInt32(n) }
