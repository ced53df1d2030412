// Package codec encodes request and response bodies. A Codec is chosen by
// content type; JSON is the default, protobuf is used for proto.Message
// values when asked for.
package codec

import (
	"encoding/json"
	"errors"
	"fmt"

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

// JSON is the encoding/json codec. An empty body decodes as no change to v.
type JSON struct{}

func (JSON) ContentType() string { return JSONContentType }

func (JSON) Marshal(dst []byte, v any) ([]byte, error) {
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
	return json.Unmarshal(data, v)
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
	s := &Set{byType: map[string]Codec{JSONContentType: JSON{}, ProtoContentType: Proto{}}, def: JSON{}}
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
