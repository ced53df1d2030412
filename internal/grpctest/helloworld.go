// Package grpctest holds the descriptors of the greeter that the gRPC tests
// serve with grpc-go (there is no protoc here, and no generated code): the
// file helloworld.proto below, built by hand. It imports protobuf only; the
// tests build the grpc.ServiceDesc.
//
//	syntax = "proto3";
//	package helloworld;
//	message HelloRequest { string name = 1; int64 delay_ms = 2; int32 code = 3; }
//	message HelloReply { string message = 1; string node = 2; }
//	service Greeter {
//	  rpc SayHello(HelloRequest) returns (HelloReply);
//	  rpc Lookup(HelloRequest) returns (HelloReply) { option idempotency_level = NO_SIDE_EFFECTS; }
//	  rpc Chat(stream HelloRequest) returns (stream HelloReply);
//	}
//
// HelloRequest and HelloReply are wire-compatible with
// google.protobuf.StringValue (field 1), which benchmarks use as generated
// messages.
package grpctest

import (
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
)

// Names of the greeter.
const (
	Service  = "helloworld.Greeter"
	SayHello = "/helloworld.Greeter/SayHello"
	Lookup   = "/helloworld.Greeter/Lookup"
	Chat     = "/helloworld.Greeter/Chat"
)

// Greeter is the greeter's file and its descriptors, in Files of their own
// (not the global registry).
type Greeter struct {
	Files   *protoregistry.Files
	File    protoreflect.FileDescriptor
	Service protoreflect.ServiceDescriptor
	Request protoreflect.MessageDescriptor // helloworld.HelloRequest
	Reply   protoreflect.MessageDescriptor // helloworld.HelloReply
}

// New builds the greeter's descriptors.
func New() *Greeter {
	str, i64, i32 := descriptorpb.FieldDescriptorProto_TYPE_STRING, descriptorpb.FieldDescriptorProto_TYPE_INT64, descriptorpb.FieldDescriptorProto_TYPE_INT32
	opt := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL
	field := func(name, json string, n int32, t descriptorpb.FieldDescriptorProto_Type) *descriptorpb.FieldDescriptorProto {
		return &descriptorpb.FieldDescriptorProto{Name: proto.String(name), JsonName: proto.String(json), Number: proto.Int32(n), Type: t.Enum(), Label: opt.Enum()}
	}
	fdp := &descriptorpb.FileDescriptorProto{
		Name:    proto.String("beacon/test/helloworld.proto"),
		Package: proto.String("helloworld"),
		Syntax:  proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{
			{Name: proto.String("HelloRequest"), Field: []*descriptorpb.FieldDescriptorProto{
				field("name", "name", 1, str), field("delay_ms", "delayMs", 2, i64), field("code", "code", 3, i32)}},
			{Name: proto.String("HelloReply"), Field: []*descriptorpb.FieldDescriptorProto{
				field("message", "message", 1, str), field("node", "node", 2, str)}},
		},
		Service: []*descriptorpb.ServiceDescriptorProto{{
			Name: proto.String("Greeter"),
			Method: []*descriptorpb.MethodDescriptorProto{
				{Name: proto.String("SayHello"), InputType: proto.String(".helloworld.HelloRequest"), OutputType: proto.String(".helloworld.HelloReply")},
				{Name: proto.String("Lookup"), InputType: proto.String(".helloworld.HelloRequest"), OutputType: proto.String(".helloworld.HelloReply"),
					Options: &descriptorpb.MethodOptions{IdempotencyLevel: descriptorpb.MethodOptions_NO_SIDE_EFFECTS.Enum()}},
				{Name: proto.String("Chat"), InputType: proto.String(".helloworld.HelloRequest"), OutputType: proto.String(".helloworld.HelloReply"),
					ClientStreaming: proto.Bool(true), ServerStreaming: proto.Bool(true)},
			},
		}},
	}
	fd, err := protodesc.NewFile(fdp, protoregistry.GlobalFiles)
	if err != nil {
		panic(err)
	}
	files := new(protoregistry.Files)
	if err := files.RegisterFile(fd); err != nil {
		panic(err)
	}
	return &Greeter{Files: files, File: fd, Service: fd.Services().Get(0),
		Request: fd.Messages().ByName("HelloRequest"), Reply: fd.Messages().ByName("HelloReply")}
}
