package codec_test

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/beacon-go/beacon/codec"
)

func TestSet(t *testing.T) {
	s := codec.NewSet()
	tests := []struct {
		ct   string
		v    any
		want string
		err  error
	}{
		{"", map[string]int{"a": 1}, codec.JSONContentType, nil},
		{"", wrapperspb.String("x"), codec.ProtoContentType, nil},
		{codec.JSONContentType, wrapperspb.String("x"), codec.JSONContentType, nil},
		{"text/xml", nil, "", codec.ErrUnknownContentType},
	}
	for _, tc := range tests {
		c, err := s.For(tc.ct, tc.v)
		if !errors.Is(err, tc.err) || (err == nil && c.ContentType() != tc.want) {
			t.Errorf("For(%q, %T) = %v, %v; want %s, %v", tc.ct, tc.v, c, err, tc.want, tc.err)
		}
	}
	if c, err := s.GetBytes([]byte(codec.ProtoContentType)); err != nil || c.ContentType() != codec.ProtoContentType {
		t.Errorf("GetBytes: %v %v", c, err)
	}
}

func TestRoundTrips(t *testing.T) {
	var p codec.Proto
	b, err := p.Marshal(nil, wrapperspb.String("hello"))
	if err != nil {
		t.Fatal(err)
	}
	got := new(wrapperspb.StringValue)
	if err := p.Unmarshal(b, got); err != nil || !proto.Equal(got, wrapperspb.String("hello")) {
		t.Fatalf("proto round trip: %v %v", got, err)
	}
	if _, err := p.Marshal(nil, struct{}{}); !errors.Is(err, codec.ErrNotProto) {
		t.Fatalf("proto of a non-message: %v", err)
	}
	var j codec.JSON
	b, err = j.Marshal([]byte("prefix:"), map[string]string{"a": "b"})
	if err != nil || string(b) != `prefix:{"a":"b"}` {
		t.Fatalf("json append: %q %v", b, err)
	}
	var m map[string]string
	if err := j.Unmarshal(nil, &m); err != nil || m != nil {
		t.Fatalf("empty body: %v %v", m, err)
	}
	if err := j.Unmarshal([]byte("{bad"), &m); err == nil {
		t.Fatal("garbage decoded")
	}
}

// FuzzJSON checks that no request body, however broken, panics the decoder
// the server runs on untrusted input.
func FuzzJSON(f *testing.F) {
	f.Add([]byte(`{"name":"Ann"}`))
	f.Add([]byte(`{"name":`))
	f.Add([]byte("\x00\xff"))
	type req struct {
		Name  string         `json:"name"`
		Tags  []string       `json:"tags"`
		Inner map[string]any `json:"inner"`
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var r req
		_ = codec.JSON{}.Unmarshal(data, &r)
		_ = codec.Proto{}.Unmarshal(data, new(wrapperspb.StringValue))
	})
}
