package codec_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/beacon-go/beacon/codec"
)

// Types for comparing the JSON codec with encoding/json.
type (
	cPlain struct {
		Name string `json:"name"`
		Node string `json:"node,omitempty"`
		N    int    `json:"n"`
		F    float64
		B    bool
		U    uint8
		Skip string `json:"-"`
		Dash string `json:"-,"`
	}
	cInner struct {
		A string
		B int `json:"b"`
	}
	cEmbed struct {
		cInner
		*cPtrInner
		C string
	}
	cPtrInner struct{ P string }
	cConflict struct {
		cInner
		A string // shadows cInner.A
	}
	cStringTag struct {
		I  int     `json:"i,string"`
		F  float64 `json:"f,string"`
		B  bool    `json:"b,string"`
		S  string  `json:"s,string"`
		PI *int    `json:"pi,string"`
	}
	cAny struct {
		V any            `json:"v"`
		M map[string]any `json:"m"`
		L []any          `json:"l"`
	}
	cNumbers struct {
		N  json.Number   `json:"n"`
		NS []json.Number `json:"ns"`
	}
	cRaw struct {
		R json.RawMessage  `json:"r"`
		P *json.RawMessage `json:"p"`
	}
	cTime struct {
		T time.Time     `json:"t"`
		D time.Duration `json:"d"`
	}
	cMethods struct {
		T  cText         `json:"t"`
		PT *cText        `json:"pt"`
		U  cUnm          `json:"u"`
		MK map[cText]int `json:"mk"`
	}
	cContainers struct {
		S   []string       `json:"s"`
		A   [2]int         `json:"a"`
		M   map[string]int `json:"m"`
		MI  map[int]string `json:"mi"`
		P   *cInner        `json:"p"`
		Bs  []byte         `json:"bs"`
		Ba  [3]byte        `json:"ba"`
		PP  **int          `json:"pp"`
		Str string         `json:"str"`
	}
	cCase struct {
		FooBar  string
		Foo_Baz string
	}
)

// cText implements encoding.TextUnmarshaler (upper-cases).
type cText string

func (t *cText) UnmarshalText(b []byte) error {
	if string(b) == "bad" {
		return errors.New("cText: bad")
	}
	*t = cText(strings.ToUpper(string(b)))
	return nil
}

// cUnm implements json.Unmarshaler: it keeps the raw bytes, length-prefixed.
type cUnm string

func (u *cUnm) UnmarshalJSON(b []byte) error {
	if string(b) == `"bad"` {
		return errors.New("cUnm: bad")
	}
	*u = cUnm(strconv.Itoa(len(b)) + ":" + string(b))
	return nil
}

// compatTarget makes a new value to decode into; prefilled ones check what
// null and merging do to existing values.
type compatTarget struct {
	name string
	new  func() any
}

func intp(i int) *int { return &i }

var compatTargets = []compatTarget{
	{"plain", func() any { return new(cPlain) }},
	{"plain prefilled", func() any { return &cPlain{Name: "old", N: 7, F: 1.5, B: true, Skip: "s"} }},
	{"embed", func() any { return new(cEmbed) }},
	{"conflict", func() any { return new(cConflict) }},
	{"string tag", func() any { return new(cStringTag) }},
	{"string tag prefilled", func() any { return &cStringTag{I: 3, PI: intp(4), S: "x"} }},
	{"any", func() any { return new(cAny) }},
	{"any prefilled", func() any {
		return &cAny{V: map[string]any{"k": 1.0}, M: map[string]any{"old": true}, L: []any{1.0, 2.0}}
	}},
	{"numbers", func() any { return new(cNumbers) }},
	{"raw", func() any { return new(cRaw) }},
	{"time", func() any { return new(cTime) }},
	{"methods", func() any { return new(cMethods) }},
	{"containers", func() any { return new(cContainers) }},
	{"containers prefilled", func() any {
		return &cContainers{S: []string{"a", "b", "c"}, A: [2]int{1, 2}, M: map[string]int{"old": 1}, P: &cInner{A: "a", B: 2}, Str: "s"}
	}},
	{"case", func() any { return new(cCase) }},
	{"interface", func() any { return new(any) }},
	{"interface prefilled", func() any { var v any = &cInner{A: "x"}; return &v }},
	{"map", func() any { return new(map[string]any) }},
	{"slice", func() any { return new([]int) }},
	{"string", func() any { return new(string) }},
	{"int", func() any { return new(int) }},
	{"pointer", func() any { return new(*cInner) }},
}

var compatInputs = []string{
	`{}`, `null`, `[]`, `""`, `0`, `true`, `"x"`, `1e400`, `-0`, `12345678901234567890`,
	`{"name":"Ann","node":"n1","n":3,"F":2.5,"B":true,"U":200}`,
	`{"NAME":"Ann","Node":"n1","N":-3}`, // case-insensitive names
	`{"name":null,"n":null,"F":null,"B":null}`,
	`{"name":1}`, `{"n":"3"}`, `{"n":1.5}`, `{"U":300}`, `{"U":-1}`, `{"n":1e2}`,
	`{"name":"a","name":"b"}`,                      // duplicate names: the last wins
	`{"name":"a","NAME":"b"}`,                      // duplicates under folding
	"{\"name\":\"a\xffb\"}",                        // invalid UTF-8: U+FFFD
	"{\"na\xffme\":\"a\"}",                         // invalid UTF-8 in a name
	`{"name":"\ud800"}`, `{"name":"\u00e9\u4e16"}`, // lone surrogate, escapes
	`{"unknown":1,"name":"a"}`, `{"unknown":{"deep":[1,2,{"x":null}]}}`,
	`{"Skip":"x","-":"dash"}`,
	`{"A":"a","b":2,"C":"c","P":"p"}`, `{"a":"a","B":"2"}`, `{"P":null}`,
	`{"i":"12","f":"1.5","b":"true","s":"\"q\"","pi":"5"}`,
	`{"i":12}`, `{"i":"x"}`, `{"s":"q"}`, `{"b":"maybe"}`, `{"pi":null}`, `{"i":null}`, `{"i":"null"}`,
	`{"v":1,"m":{"a":2,"b":[1,"x",null,true]},"l":[1.5,{"k":-1e3}]}`,
	`{"v":null,"m":null,"l":null}`, `{"v":{"A":"y"}}`, `{"v":[1]}`, `{"m":{"new":1}}`,
	`{"n":123.5e-3,"ns":[1,2,-3]}`, `{"n":"42"}`, `{"n":"x"}`, `{"n":null}`, `{"n":true}`, `{"ns":["1",2]}`,
	`{"r":{"a":[1, 2]},"p":"x"}`, `{"r":null,"p":null}`, `{"r": 1 }`,
	`{"t":"2024-01-02T03:04:05.123456789+01:00","d":1500}`, `{"t":"2024-01-02"}`, `{"t":null,"d":null}`, `{"d":"1s"}`,
	`{"t":"abc","pt":"def","u":{"x": 1},"mk":{"k":1,"j":2}}`, `{"t":"bad"}`, `{"u":"bad"}`, `{"t":1}`, `{"u":null}`, `{"pt":null}`,
	`{"s":["a"],"a":[5],"m":{"b":2},"mi":{"1":"x","-2":"y"},"p":{"A":"z"},"bs":"aGk=","ba":[1,2,3],"pp":3,"str":"x"}`,
	`{"a":[1,2,3]}`, `{"a":[]}`, `{"mi":{"x":"y"}}`, `{"bs":"!!"}`, `{"bs":"aGk"}`, `{"bs":[1,2]}`, `{"ba":"aGk="}`, `{"s":null,"a":null,"m":null,"p":null,"pp":null}`,
	`{"s":[]}`, `{"m":{}}`, `{"p":{}}`,
	`{"FooBar":"x","foo_baz":"y"}`, `{"foo_bar":"x","FOO_BAZ":"y"}`, `{"foobaz":"z"}`,
	`[1,2,3]`, `[1,"x"]`, `["a"]`, `{"a":1}`, `"str"`, `3.5`, `-7`, `9223372036854775808`,
	// Syntax errors and trailing data.
	``, ` `, `{`, `{"name":`, `{"name":"a",}`, `{"name":"a"} x`, `{"name":"a"}}`, `{"name":"a"}]`, `{} {}`, `nul`, `[1,]`,
	`{'name':1}`, `{"name":"a\u"}`, "{\"name\":\"a\tb\"}", `01`, `{"n":+1}`, `{"n":.5}`, `NaN`, "\xef\xbb\xbf{}",
	" \t\r\n{ \"name\" : \"a\" } \n",
}

// decodeStd decodes as the codec did before: encoding/json's Unmarshal, or
// for strict a Decoder refusing unknown fields and data after the value.
func decodeStd(data []byte, v any, strict bool) error {
	if len(data) == 0 {
		return nil
	}
	if !strict {
		return json.Unmarshal(data, v)
	}
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	err := d.Decode(v)
	if err == nil && d.More() {
		err = errors.New("json: data after the value")
	}
	return err
}

// divergence says why the codec may accept or refuse otherwise than
// encoding/json on data, or "" when it must not: the one intended
// difference is that the old strict decoder (a json.Decoder and More)
// accepted a closing bracket or brace after the value, which the codec
// refuses as any other data after the value.
func divergence(data string, strict bool) string {
	if !strict {
		return ""
	}
	d := json.NewDecoder(strings.NewReader(data))
	var raw json.RawMessage
	if d.Decode(&raw) != nil {
		return ""
	}
	if rest := strings.TrimLeft(data[d.InputOffset():], " \t\r\n"); rest != "" && (rest[0] == ']' || rest[0] == '}') {
		return "closing bracket after the value"
	}
	return ""
}

func TestJSONMatchesEncodingJSON(t *testing.T) {
	for _, strict := range []bool{false, true} {
		for _, tg := range compatTargets {
			for _, in := range compatInputs {
				name := fmt.Sprintf("strict=%v/%s/%q", strict, tg.name, in)
				want, got := tg.new(), tg.new()
				werr := decodeStd([]byte(in), want, strict)
				var gerr error
				if strict {
					gerr = codec.JSON{}.UnmarshalStrict([]byte(in), got)
				} else {
					gerr = codec.JSON{}.Unmarshal([]byte(in), got)
				}
				why := divergence(in, strict)
				if (werr == nil) != (gerr == nil) {
					if why == "" {
						t.Errorf("%s: codec error %v, encoding/json %v", name, gerr, werr)
					}
					continue
				}
				if werr != nil {
					if !sameError(werr, gerr) {
						t.Errorf("%s: codec error\n\t%v\nencoding/json\n\t%v", name, gerr, werr)
					}
					continue
				}
				if !reflect.DeepEqual(want, got) {
					t.Errorf("%s: codec %s, encoding/json %s", name, show(got), show(want))
				}
			}
		}
	}
}

// sameError tells whether the codec's error says what encoding/json's
// does. An unknown field must be named in the same words (servers answer
// it to callers, tests look for the name). Other messages may differ in
// their wording (documented on codec.JSON):
//   - type errors name the path by the JSON names as they came (`cPlain.b`
//     for "b" matched to field B) and without embedded structs' names
//     (`cEmbed.B`, not `cEmbed.cInner.b`); errors from UnmarshalText and
//     UnmarshalJSON methods and from the `string` option are wrapped in a
//     "json: cannot unmarshal ..." message naming the field;
//   - syntax errors are found before type errors, also by the strict
//     decoder (the old one, a json.Decoder, reported a type error of the
//     first value before data after it), and some read differently
//     ("invalid character '\t' in string" for "... in string literal",
//     "unexpected end of JSON input" for "EOF");
//   - of two errors, which is reported may differ.
func sameError(std, got error) bool {
	if strings.HasPrefix(std.Error(), "json: unknown field ") && !strings.Contains(got.Error(), " after top-level value") {
		return std.Error() == got.Error()
	}
	return true
}

func show(v any) string { return fmt.Sprintf("%#v", reflect.ValueOf(v).Elem().Interface()) }

// fuzzTarget has a bit of everything the codec decodes differently from a
// plain string field.
type fuzzTarget struct {
	Name string          `json:"name"`
	N    int             `json:"n,omitempty"`
	F    float64         `json:"f,string"`
	P    *cInner         `json:"p"`
	V    any             `json:"v"`
	M    map[string]int  `json:"m"`
	L    []json.Number   `json:"l"`
	A    [2]uint16       `json:"a"`
	R    json.RawMessage `json:"r"`
	T    cText           `json:"t"`
	U    cUnm            `json:"u"`
	B    []byte          `json:"b"`
	MK   map[int64]bool  `json:"mk"`
	cCase
}

// FuzzJSONDecode: the codec and encoding/json agree on which inputs
// decode, and on the result when both do, for Unmarshal and
// UnmarshalStrict (see divergence for the one difference skipped).
func FuzzJSONDecode(f *testing.F) {
	for _, in := range compatInputs {
		f.Add([]byte(in))
	}
	f.Add([]byte(`{"name":"x","n":1,"f":"2","p":{"A":"a"},"v":[1,{"x":null}],"m":{"a":1},"l":[1,"2"],"a":[1,2],"r":{},"t":"x","u":[1],"b":"aGk=","mk":{"-1":true},"FooBar":"y"}`))
	targets := []func() any{
		func() any { return new(fuzzTarget) },
		func() any {
			return &fuzzTarget{Name: "old", M: map[string]int{"k": 1}, P: &cInner{A: "a"}, V: 1.0, L: []json.Number{"1"}}
		},
		func() any { return new(any) },
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, strict := range []bool{false, true} {
			if divergence(string(data), strict) != "" {
				continue
			}
			for _, nt := range targets {
				want, got := nt(), nt()
				werr := decodeStd(data, want, strict)
				var gerr error
				if strict {
					gerr = codec.JSON{}.UnmarshalStrict(data, got)
				} else {
					gerr = codec.JSON{}.Unmarshal(data, got)
				}
				if (werr == nil) != (gerr == nil) {
					t.Fatalf("strict=%v %T %q: codec error %v, encoding/json %v", strict, want, data, gerr, werr)
				}
				if werr == nil && !reflect.DeepEqual(want, got) {
					t.Fatalf("strict=%v %q: codec %s, encoding/json %s", strict, data, show(got), show(want))
				}
				if werr != nil && !sameError(werr, gerr) {
					t.Fatalf("strict=%v %q: codec error %v, encoding/json %v", strict, data, gerr, werr)
				}
			}
		}
	})
}
