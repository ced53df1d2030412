package codec_test

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/beacon-go/beacon/codec"
)

type benchSmall struct {
	Msg  string `json:"msg"`
	Node string `json:"node"`
}

type benchMedium struct {
	ID       int64             `json:"id"`
	Name     string            `json:"name"`
	Email    string            `json:"email"`
	Active   bool              `json:"active"`
	Score    float64           `json:"score"`
	Tags     []string          `json:"tags"`
	Labels   map[string]string `json:"labels"`
	Created  time.Time         `json:"created"`
	Address  benchAddress      `json:"address"`
	Items    []benchItem       `json:"items"`
	Note     string            `json:"note,omitempty"`
	Optional *benchAddress     `json:"optional,omitempty"`
}

type benchAddress struct {
	Street string `json:"street"`
	City   string `json:"city"`
	Zip    string `json:"zip"`
}

type benchItem struct {
	SKU   string  `json:"sku"`
	Qty   int     `json:"qty"`
	Price float64 `json:"price"`
}

var benchMessages = []struct {
	name string
	v    any
	new  func() any
}{
	{"small", &benchSmall{Msg: "Hello Ann", Node: "bench"}, func() any { return new(benchSmall) }},
	{"medium", &benchMedium{
		ID: 1234567, Name: "Ann Example", Email: "ann@example.com", Active: true, Score: 98.25,
		Tags:    []string{"alpha", "beta", "gamma", "<html>&"},
		Labels:  map[string]string{"zone": "eu-west-1", "tier": "gold", "team": "platform"},
		Created: time.Date(2024, 5, 6, 7, 8, 9, 123000000, time.UTC),
		Address: benchAddress{"1 Main Street", "Springfield", "12345"},
		Items:   []benchItem{{"A-1", 2, 9.99}, {"B-22", 1, 199.5}, {"C-333", 10, 0.25}, {"D-4444", 3, 42}},
	}, func() any { return new(benchMedium) }},
}

// BenchmarkJSON compares encoding/json with the JSON codec: marshal
// (json.Marshal appended to a buffer vs Marshal into it), unmarshal
// (json.Unmarshal vs Unmarshal) and strict (a json.Decoder refusing unknown
// fields, as the codec did, vs UnmarshalStrict). Both decode into a new
// value each time, as clients and servers do.
func BenchmarkJSON(b *testing.B) {
	c := codec.NewJSON() // as NewSet makes it: with its encoder pool and type cache
	for _, m := range benchMessages {
		body, err := c.Marshal(nil, m.v)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(m.name+"/marshal/encoding-json", func(b *testing.B) {
			b.ReportAllocs()
			buf := make([]byte, 0, 1024)
			for b.Loop() {
				out, err := json.Marshal(m.v)
				if err != nil {
					b.Fatal(err)
				}
				buf = append(buf[:0], out...)
			}
		})
		b.Run(m.name+"/marshal/codec", func(b *testing.B) {
			b.ReportAllocs()
			buf := make([]byte, 0, 1024)
			for b.Loop() {
				if buf, err = c.Marshal(buf[:0], m.v); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(m.name+"/unmarshal/encoding-json", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := json.Unmarshal(body, m.new()); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(m.name+"/unmarshal/codec", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := c.Unmarshal(body, m.new()); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(m.name+"/strict/encoding-json", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				d := json.NewDecoder(bytes.NewReader(body))
				d.DisallowUnknownFields()
				if err := d.Decode(m.new()); err != nil || d.More() {
					b.Fatal(err)
				}
			}
		})
		b.Run(m.name+"/strict/codec", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := c.UnmarshalStrict(body, m.new()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestJSONMarshalSameBytes: Marshal writes what json.Marshal does, HTML
// escaped, appended to dst, and allocates nothing for a plain struct.
func TestJSONMarshalSameBytes(t *testing.T) {
	c := codec.NewJSON() // as NewSet makes it: with its encoder pool and type cache
	vals := []any{nil, 1.5, "a<b>&\u2028", []byte("x"), map[string]any{"b": 1, "a": []int{1}}, json.RawMessage(`{ "a" : 1 }`), json.Number("12"), benchMessages[0].v, benchMessages[1].v}
	for _, v := range vals {
		want, werr := json.Marshal(v)
		got, gerr := c.Marshal([]byte("pre:"), v)
		if (werr == nil) != (gerr == nil) || (werr == nil && string(got) != "pre:"+string(want)) {
			t.Errorf("Marshal(%#v) = %q, %v; want pre:%q, %v", v, got, gerr, want, werr)
		}
	}
	if _, err := c.Marshal(nil, map[string]any{"f": func() {}}); err == nil {
		t.Error("a func marshaled")
	}
	if raceEnabled {
		return
	}
	buf := make([]byte, 0, 256)
	if n := testing.AllocsPerRun(100, func() { _, _ = c.Marshal(buf[:0], benchMessages[0].v) }); n != 0 {
		t.Errorf("Marshal allocates %v times", n)
	}
	body := []byte(`{"msg":"Hello Ann","node":"bench"}`)
	v := new(benchSmall)
	if n := testing.AllocsPerRun(100, func() { *v = benchSmall{}; _ = c.UnmarshalStrict(body, v) }); n > 2 {
		t.Errorf("UnmarshalStrict allocates %v times, want at most the two strings", n)
	}
}

// TestProtoAllocs: the protobuf codec appends into dst without allocating
// and decodes allocating only the message and what it holds.
func TestProtoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts differ under the race detector")
	}
	var p codec.Proto
	m := wrapperspb.String("hello")
	buf := make([]byte, 0, 64)
	b, err := p.Marshal(buf, m)
	if err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = p.Marshal(buf[:0], m) }); n != 0 {
		t.Errorf("Marshal allocates %v times", n)
	}
	if n := testing.AllocsPerRun(100, func() { _ = p.Unmarshal(b, new(wrapperspb.StringValue)) }); n != 2 {
		t.Errorf("Unmarshal allocates %v times, want 2 (the message, its string)", n)
	}
}
