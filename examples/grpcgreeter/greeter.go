// Package grpcgreeter is a gRPC greeter (helloworld.Greeter) for the
// grpcgreeter example programs: the server (a plain grpc.Server registered
// with Beacon through beacongrpc.Server) and the client (a plain grpc-go
// client dialling beacon:///greeter).
//
// The repository has no protoc and no generated code, so the service is
// built from the hand-made descriptors of internal/grpctest and carries
// dynamicpb messages; a real program registers its generated service
// (pb.RegisterGreeterServer) and calls through its generated client. What
// Beacon does is the same either way.
//
//	service Greeter {
//	  rpc SayHello(HelloRequest) returns (HelloReply);  // "Hello <name>", from <node>, after delay_ms
//	  rpc Lookup(HelloRequest) returns (HelloReply) { option idempotency_level = NO_SIDE_EFFECTS; }
//	  rpc Chat(stream HelloRequest) returns (stream HelloReply);
//	}
package grpcgreeter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/reflection"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/beacon-go/beacon/internal/grpctest"
)

// Names of the service.
const (
	// Name is the Beacon service name the servers register under.
	Name = "greeter"
	// Target is what clients dial.
	Target = "beacon:///" + Name
	// Service is the gRPC service.
	Service = grpctest.Service
	// SayHello is the full method of SayHello.
	SayHello = grpctest.SayHello
)

// RetryPolicy is the method config that makes grpc-go retry SayHello and
// Lookup on another node when an attempt fails with UNAVAILABLE: the
// connection broke under the call (a node killed with SIGKILL, a network
// cut) after the request had left, which grpc-go's transparent retry does
// not cover. Beacon's balancers eject the node on that UNAVAILABLE, so the
// next attempt goes elsewhere. Only for methods that are safe to run twice:
// the failed attempt may have run on the dead node.
const RetryPolicy = `{
  "name": [{"service": "helloworld.Greeter", "method": "SayHello"}, {"service": "helloworld.Greeter", "method": "Lookup"}],
  "retryPolicy": {
    "maxAttempts": 4,
    "initialBackoff": "0.02s",
    "maxBackoff": "0.2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"]
  }
}`

// ServiceConfig returns a service config choosing the load-balancing
// policy lb (e.g. "beacon_least_loaded", "round_robin") with, when retry is
// set, RetryPolicy, and when healthCheck is set, client-side health
// checking: each connection watches the node's health service (the
// "" service, which beacongrpc.Server sets NOT_SERVING when it starts to
// drain) and is not picked while the node is not SERVING. grpc-go links
// the health check in with package google.golang.org/grpc/health, which
// beacongrpc imports.
func ServiceConfig(lb string, retry, healthCheck bool) string {
	extra := ""
	if retry {
		extra += `, "methodConfig": [` + RetryPolicy + `]`
	}
	if healthCheck {
		extra += `, "healthCheckConfig": {"serviceName": ""}`
	}
	return fmt.Sprintf(`{"loadBalancingConfig": [{%q: {}}]%s}`, lb, extra)
}

var desc = grpctest.New()

// Files holds the greeter's descriptors, for beacongrpc.Descriptors and
// server reflection.
var Files = desc.Files

// Server serves the greeter.
type Server struct {
	// Node names this node in replies.
	Node string
	// Delay is added to every call (on top of the request's delay_ms).
	Delay time.Duration
}

// Register registers the greeter service, and server reflection over its
// descriptors (so that `beacon call greeter SayHello '{"name":"Ann"}'`
// works), on gs.
func (s *Server) Register(gs *grpc.Server) {
	gs.RegisterService(s.serviceDesc(), struct{}{})
	reflectionpb.RegisterServerReflectionServer(gs, reflection.NewServerV1(reflection.ServerOptions{Services: gs, DescriptorResolver: Files}))
}

func field(md protoreflect.MessageDescriptor, name string) protoreflect.FieldDescriptor {
	return md.Fields().ByName(protoreflect.Name(name))
}

// sayHello answers "Hello <name>" from the node, after the delays; a
// request with a code fails with that status.
func (s *Server) sayHello(ctx context.Context, in *dynamicpb.Message) (*dynamicpb.Message, error) {
	d := s.Delay + time.Duration(in.Get(field(desc.Request, "delay_ms")).Int())*time.Millisecond
	if d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	name := in.Get(field(desc.Request, "name")).String()
	if c := in.Get(field(desc.Request, "code")).Int(); c != 0 {
		return nil, status.Errorf(codes.Code(c), "failed for %s, as asked", name)
	}
	if name == "" {
		return nil, status.Error(codes.InvalidArgument, "no name")
	}
	out := dynamicpb.NewMessage(desc.Reply)
	out.Set(field(desc.Reply, "message"), protoreflect.ValueOfString("Hello "+name))
	out.Set(field(desc.Reply, "node"), protoreflect.ValueOfString(s.Node))
	return out, nil
}

func (s *Server) serviceDesc() *grpc.ServiceDesc {
	unary := func(_ any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
		req := dynamicpb.NewMessage(desc.Request)
		if err := dec(req); err != nil {
			return nil, err
		}
		return s.sayHello(ctx, req)
	}
	chat := func(_ any, stream grpc.ServerStream) error {
		for {
			req := dynamicpb.NewMessage(desc.Request)
			if err := stream.RecvMsg(req); errors.Is(err, io.EOF) {
				return nil
			} else if err != nil {
				return err
			}
			out, err := s.sayHello(stream.Context(), req)
			if err != nil {
				return err
			}
			if err := stream.SendMsg(out); err != nil {
				return err
			}
		}
	}
	return &grpc.ServiceDesc{
		ServiceName: Service,
		HandlerType: (*any)(nil),
		Methods:     []grpc.MethodDesc{{MethodName: "SayHello", Handler: unary}, {MethodName: "Lookup", Handler: unary}},
		Streams:     []grpc.StreamDesc{{StreamName: "Chat", Handler: chat, ServerStreams: true, ClientStreams: true}},
		Metadata:    desc.File.Path(),
	}
}

// Reply is what SayHello answered.
type Reply struct {
	Message, Node string
}

// Hello calls SayHello on conn with name; delay asks the node to wait that
// long before it answers. opts are the call's options (grpc.WaitForReady,
// ...).
func Hello(ctx context.Context, conn grpc.ClientConnInterface, name string, delay time.Duration, opts ...grpc.CallOption) (Reply, error) {
	req := dynamicpb.NewMessage(desc.Request)
	req.Set(field(desc.Request, "name"), protoreflect.ValueOfString(name))
	if delay > 0 {
		req.Set(field(desc.Request, "delay_ms"), protoreflect.ValueOfInt64(delay.Milliseconds()))
	}
	rsp := dynamicpb.NewMessage(desc.Reply)
	if err := conn.Invoke(ctx, SayHello, req, rsp, opts...); err != nil {
		return Reply{}, err
	}
	return Reply{Message: rsp.Get(field(desc.Reply, "message")).String(), Node: rsp.Get(field(desc.Reply, "node")).String()}, nil
}
