// Package codec encodes request and response bodies. A Codec is chosen by
// content type; JSON is the default, protobuf is used for proto.Message
// values when asked for.
package codec

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sync"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	jsonv1 "github.com/go-json-experiment/json/v1"

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

// JSON is the JSON codec, for proto.Message values protojson (timestamps as
// RFC 3339, enums by name, fields by their JSON names). An empty body
// decodes as no change to v.
//
// Other values are encoded by encoding/json (an Encoder writing into dst,
// kept in a pool: the same bytes as json.Marshal, HTML characters escaped,
// without allocating for plain values), and decoded by
// github.com/go-json-experiment/json, the code of Go's encoding/json/v2,
// with the options of its v1 package (jsonv1.DefaultOptionsV1): the
// semantics of encoding/json (names matched without regard to case,
// numbers into interfaces as float64, null leaving most values unchanged,
// the `string` tag option, UnmarshalJSON and UnmarshalText methods,
// duplicate names accepted with the last one winning, invalid UTF-8
// replaced by U+FFFD, the error messages of encoding/json) at three to four
// times the speed and one allocation instead of seven to ten for a small
// message. The errors are of package github.com/go-json-experiment/json/v1
// (same names, same messages), not of encoding/json.
//
// Unmarshal accepts fields it does not know (a response from a newer
// server); UnmarshalStrict, which servers use for requests, refuses them
// with an error that names the field (a typo must not become an empty
// field). Both refuse data after the value.
//
// The zero JSON works; the one of NewSet (or NewJSON) also keeps, for
// speed, a pool of encoders and what it learnt of each type decoded.
type JSON struct{ st *jsonState }

// jsonState is what a JSON codec keeps between calls.
type jsonState struct {
	hasNumber sync.Map // reflect.Type -> bool: decoding it may meet an encoding/json Number
	encoders  sync.Pool
}

// NewJSON returns a JSON codec that keeps a pool of encoders and a cache of
// decoded types (see JSON). It is safe for concurrent use.
func NewJSON() JSON { return JSON{st: new(jsonState)} }

func (JSON) ContentType() string { return JSONContentType }

// Decoding options: encoding/json's semantics, and for requests unknown
// members refused (under the legacy error semantics of DefaultOptionsV1
// the error reads `json: unknown field "name"`, as with encoding/json's
// DisallowUnknownFields). The ...Number variants add an unmarshaler for
// encoding/json's Number (see numberUnmarshaler); they are used only for
// types that contain one, as a type-specific unmarshaler costs a lookup
// for every value decoded.
var (
	decodeOpts       = jsonv1.DefaultOptionsV1()
	strictOpts       = jsonv2.JoinOptions(jsonv1.DefaultOptionsV1(), jsonv2.RejectUnknownMembers(true))
	decodeNumberOpts = jsonv2.JoinOptions(decodeOpts, numberUnmarshaler)
	strictNumberOpts = jsonv2.JoinOptions(strictOpts, numberUnmarshaler)
)

// numberUnmarshaler decodes encoding/json's Number as encoding/json does:
// go-json-experiment knows its own v1 Number (a JSON number, or a string
// holding one, kept as text), but encoding/json's is, to it, a plain
// string type that refuses JSON numbers. Both are strings underneath: the
// v1 package's method does the work.
var numberUnmarshaler = jsonv2.WithUnmarshalers(jsonv2.UnmarshalFromFunc(func(dec *jsontext.Decoder, n *json.Number) error {
	return (*jsonv1.Number)(n).UnmarshalJSONFrom(dec)
}))

var numberType = reflect.TypeFor[json.Number]()

// decodeOptions returns the decoding options for a value of type t.
func (j JSON) decodeOptions(t reflect.Type, strict bool) jsonv2.Options {
	var n any
	if j.st == nil {
		n = containsType(t, numberType, map[reflect.Type]bool{})
	} else if n, _ = j.st.hasNumber.Load(t); n == nil {
		n, _ = j.st.hasNumber.LoadOrStore(t, containsType(t, numberType, map[reflect.Type]bool{}))
	}
	switch {
	case n.(bool) && strict:
		return strictNumberOpts
	case n.(bool):
		return decodeNumberOpts
	case strict:
		return strictOpts
	}
	return decodeOpts
}

// containsType tells whether want is t or reachable from it through
// pointers, slices, arrays, maps and struct fields.
func containsType(t, want reflect.Type, seen map[reflect.Type]bool) bool {
	if t == want {
		return true
	}
	if seen[t] {
		return false
	}
	seen[t] = true
	switch t.Kind() {
	case reflect.Pointer, reflect.Slice, reflect.Array:
		return containsType(t.Elem(), want, seen)
	case reflect.Map:
		return containsType(t.Key(), want, seen) || containsType(t.Elem(), want, seen)
	case reflect.Struct:
		for i := range t.NumField() {
			if containsType(t.Field(i).Type, want, seen) {
				return true
			}
		}
	}
	return false
}

// jsonEncoder is an encoding/json Encoder writing into a byte slice.
type jsonEncoder struct {
	buf []byte
	enc *json.Encoder
}

func (e *jsonEncoder) Write(p []byte) (int, error) {
	e.buf = append(e.buf, p...)
	return len(p), nil
}

func newJSONEncoder() *jsonEncoder {
	e := new(jsonEncoder)
	e.enc = json.NewEncoder(e) // escapes HTML, as json.Marshal does
	return e
}

func (j JSON) Marshal(dst []byte, v any) ([]byte, error) {
	if m, ok := v.(proto.Message); ok {
		return protojson.MarshalOptions{}.MarshalAppend(dst, m)
	}
	var e *jsonEncoder
	if j.st != nil {
		e, _ = j.st.encoders.Get().(*jsonEncoder)
	}
	if e == nil {
		e = newJSONEncoder()
	}
	e.buf = dst
	// Encode writes, in one Write and only on success, what json.Marshal
	// returns followed by a newline. (Its Write never fails: the Encoder
	// has no sticky error and can be reused.)
	err := e.enc.Encode(v)
	b := e.buf
	e.buf = nil // the pool must not keep the caller's buffer
	if j.st != nil {
		j.st.encoders.Put(e)
	}
	if err != nil {
		return dst, err
	}
	return b[:len(b)-1], nil
}

func (j JSON) Unmarshal(data []byte, v any) error {
	if len(data) == 0 {
		return nil
	}
	if m, ok := v.(proto.Message); ok {
		return protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(data, m)
	}
	return jsonv2.Unmarshal(data, v, j.decodeOptions(reflect.TypeOf(v), false))
}

// UnmarshalStrict is Unmarshal refusing unknown fields, naming them.
func (j JSON) UnmarshalStrict(data []byte, v any) error {
	if len(data) == 0 {
		return nil
	}
	if m, ok := v.(proto.Message); ok {
		return protojson.Unmarshal(data, m)
	}
	return jsonv2.Unmarshal(data, v, j.decodeOptions(reflect.TypeOf(v), true))
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
	j := NewJSON()
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
