// Package codec encodes request and response bodies. A Codec is chosen by
// content type; JSON is the default, protobuf is used for proto.Message
// values when asked for.
package codec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Content types understood by the built-in codecs.
const (
	JSONContentType  = "application/json"
	ProtoContentType = "application/protobuf"
)

// ErrUnknownContentType: no codec is configured for the content type.
var ErrUnknownContentType = errors.New("codec: unknown content type")

// ErrNotProto: the protobuf codec was given a value that is not a proto.Message.
var ErrNotProto = errors.New("codec: value is not a proto.Message")

// Codec marshals and unmarshals message bodies. Implementations must be safe
// for concurrent use.
type Codec interface {
	// ContentType is the content type this codec handles, e.g. "application/json".
	ContentType() string
	// Marshal appends the encoding of v to dst and returns the result.
	Marshal(dst []byte, v any) ([]byte, error)
	// Unmarshal decodes data into v. It never retains data.
	Unmarshal(data []byte, v any) error
}

// JSON is the JSON codec: encoding/json, and protojson for proto.Message
// values (timestamps as RFC 3339, enums by name, fields by their JSON
// names). An empty body decodes as no change to v.
//
// Unmarshal accepts fields it does not know (a response from a newer
// server); UnmarshalStrict, which servers use for requests, refuses them
// with an error that names the field (a typo must not become an empty
// field).
type JSON struct {
	// decoders, when set (NewSet sets it), recycles strict decoders.
	decoders *sync.Pool
}

func (JSON) ContentType() string { return JSONContentType }

// strictDecoder is a json.Decoder that refuses unknown fields, over a
// bytes.Reader that is reset for each body.
type strictDecoder struct {
	rd  bytes.Reader
	dec *json.Decoder
}

func (JSON) Marshal(dst []byte, v any) ([]byte, error) {
	if m, ok := v.(proto.Message); ok {
		return protojson.MarshalOptions{}.MarshalAppend(dst, m)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return dst, err
	}
	return append(dst, b...), nil
}

func (JSON) Unmarshal(data []byte, v any) error {
	if len(data) == 0 {
		return nil
	}
	if m, ok := v.(proto.Message); ok {
		return protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(data, m)
	}
	return json.Unmarshal(data, v)
}

// UnmarshalStrict is Unmarshal refusing unknown fields, naming them.
func (j JSON) UnmarshalStrict(data []byte, v any) error {
	if len(data) == 0 {
		return nil
	}
	if m, ok := v.(proto.Message); ok {
		return protojson.Unmarshal(data, m)
	}
	var sd *strictDecoder
	if j.decoders != nil {
		sd, _ = j.decoders.Get().(*strictDecoder)
	}
	if sd == nil {
		sd = &strictDecoder{}
		sd.dec = json.NewDecoder(&sd.rd)
		sd.dec.DisallowUnknownFields()
	}
	sd.rd.Reset(data)
	err := sd.dec.Decode(v)
	if err == nil && sd.dec.More() {
		err = errors.New("json: data after the value")
	}
	if err == nil && j.decoders != nil {
		sd.rd.Reset(nil)
		j.decoders.Put(sd) // a decoder that failed keeps its error: not reused
	}
	return err
}

// Strict is implemented by codecs that can refuse what they do not know;
// servers decode requests with it.
type Strict interface {
	UnmarshalStrict(data []byte, v any) error
}

// UnmarshalRequest decodes a request body: strictly when c supports it.
func UnmarshalRequest(c Codec, data []byte, v any) error {
	if s, ok := c.(Strict); ok {
		return s.UnmarshalStrict(data, v)
	}
	return c.Unmarshal(data, v)
}

// Proto is the protobuf binary codec; values must implement proto.Message.
type Proto struct{}

func (Proto) ContentType() string { return ProtoContentType }

func (Proto) Marshal(dst []byte, v any) ([]byte, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return dst, fmt.Errorf("%w: %T", ErrNotProto, v)
	}
	return proto.MarshalOptions{}.MarshalAppend(dst, m)
}

func (Proto) Unmarshal(data []byte, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("%w: %T", ErrNotProto, v)
	}
	return proto.Unmarshal(data, m)
}

// Set is an immutable set of codecs keyed by content type.
type Set struct {
	byType map[string]Codec
	def    Codec
}

// NewSet returns a Set holding JSON and Proto plus extra (which override
// built-ins of the same content type). The default for new requests is JSON.
func NewSet(extra ...Codec) *Set {
	j := JSON{decoders: new(sync.Pool)}
	s := &Set{byType: map[string]Codec{JSONContentType: j, ProtoContentType: Proto{}}, def: j}
	for _, c := range extra {
		s.byType[c.ContentType()] = c
	}
	return s
}

// Get returns the codec for a content type; "" means the default (JSON).
func (s *Set) Get(contentType string) (Codec, error) {
	if contentType == "" {
		return s.def, nil
	}
	if c, ok := s.byType[contentType]; ok {
		return c, nil
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownContentType, contentType)
}

// GetBytes is Get for a content type held in a byte slice; it does not
// allocate.
func (s *Set) GetBytes(contentType []byte) (Codec, error) {
	if len(contentType) == 0 {
		return s.def, nil
	}
	if c, ok := s.byType[string(contentType)]; ok {
		return c, nil
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownContentType, contentType)
}

// For returns the codec for contentType, or, when it is empty, Proto for
// proto.Message values and JSON otherwise.
func (s *Set) For(contentType string, v any) (Codec, error) {
	if contentType == "" {
		if _, ok := v.(proto.Message); ok {
			return s.byType[ProtoContentType], nil
		}
	}
	return s.Get(contentType)
}
