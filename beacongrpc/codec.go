package beacongrpc

import (
	"encoding/json"
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/beacon-go/beacon/codec"
)

// JSONCodec is a grpc-go codec (encoding.Codec) named "json": protobuf
// messages as protojson (the JSON mapping of protobuf: fields by their JSON
// names, enums by name, well-known types as their JSON forms), other values
// with encoding/json. It is what Beacon's JSON codec sends, so a gRPC server
// that registers it accepts Beacon calls made with JSON requests (a Beacon
// client encodes a request that is not a proto.Message as JSON; gRPC
// carries it with the content-subtype "json", content-type
// application/grpc+json):
//
//	encoding.RegisterCodec(beacongrpc.JSONCodec{}) // in main, before grpc.NewServer; or RegisterJSONCodec()
//
// grpc-go keeps codecs in a process-wide table that is not safe for
// concurrent use, so register it once at program start, before any gRPC
// server or client runs; this package never registers it by itself (no
// init). A gRPC server without it decodes a JSON request as protobuf
// (grpc-go falls back to its proto codec for unknown content-subtypes),
// which fails before the handler runs: the Beacon caller sees status 500
// ("grpc: error unmarshalling request"). Protobuf requests work with every
// gRPC server.
//
// Unmarshal refuses fields that the message does not have, naming them (a
// typo must not become an empty field, as with Beacon's own servers), unless
// DiscardUnknown is set.
type JSONCodec struct {
	// DiscardUnknown makes Unmarshal ignore unknown fields (for a client
	// reading responses of a newer server).
	DiscardUnknown bool
}

// Name implements encoding.Codec: "json".
func (JSONCodec) Name() string { return "json" }

// Marshal implements encoding.Codec.
func (JSONCodec) Marshal(v any) ([]byte, error) {
	if m, ok := v.(proto.Message); ok {
		return protojson.Marshal(m)
	}
	return json.Marshal(v)
}

// Unmarshal implements encoding.Codec. An empty body leaves v unchanged
// (an empty message).
func (c JSONCodec) Unmarshal(data []byte, v any) error {
	if len(data) == 0 {
		return nil
	}
	if m, ok := v.(proto.Message); ok {
		return protojson.UnmarshalOptions{DiscardUnknown: c.DiscardUnknown}.Unmarshal(data, m)
	}
	if c.DiscardUnknown {
		return json.Unmarshal(data, v)
	}
	return codec.JSON{}.UnmarshalStrict(data, v)
}

// RegisterJSONCodec registers JSONCodec{} with grpc-go
// (encoding.RegisterCodec), for gRPC servers of this process to accept JSON
// requests. Call it once at program start, before any gRPC server or
// client runs (grpc-go's codec table is not safe for concurrent use).
func RegisterJSONCodec() { encoding.RegisterCodec(JSONCodec{}) }

// rawCodec passes bytes through: the Caller sends a body the Beacon client
// already encoded, under the content-subtype of its codec, and returns the
// response's bytes for the client to decode.
type rawCodec string

// The Caller's codecs, by the content-subtype they announce.
const (
	rawProto rawCodec = "proto"
	rawJSON  rawCodec = "json"
)

// subtypes maps Beacon content types to gRPC content-subtypes.
var subtypes = map[string]rawCodec{
	codec.ProtoContentType: rawProto,
	codec.JSONContentType:  rawJSON,
	"":                     rawJSON, // Beacon's default codec
}

func (c rawCodec) Name() string { return string(c) }

// Marshal copies the request body into a buffer of gRPC's pool: the Caller
// must not retain the client's body after Call returns, and a write of
// gRPC's may outlive the call (a server that answers before it read the
// whole request).
func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, ok := v.(*rawBody)
	if !ok {
		return nil, fmt.Errorf("beacongrpc: raw codec: marshal %T", v)
	}
	if len(b.b) == 0 {
		return nil, nil
	}
	return mem.BufferSlice{mem.Copy(b.b, mem.DefaultBufferPool())}, nil
}

// Unmarshal appends the response's bytes to the body (the client's buffer).
func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	b, ok := v.(*rawBody)
	if !ok {
		return fmt.Errorf("beacongrpc: raw codec: unmarshal into %T", v)
	}
	for _, buf := range data {
		b.b = append(b.b, buf.ReadOnlyData()...)
	}
	return nil
}

// rawBody is a message body as bytes.
type rawBody struct{ b []byte }
