package wire

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	var b []byte
	b, err := AppendRequest(b, 7, "Greeter.Hello", "application/json", 3*time.Second, []byte(`{"name":"Ann"}`))
	if err != nil {
		t.Fatal(err)
	}
	b = AppendResponse(b, 7, 500, "application/json", "boom", []byte(`{}`))
	b = AppendGoAway(b)
	r := NewReader(bytes.NewReader(b), 0)
	var f Frame
	if err := r.Next(&f); err != nil || f.Kind != KindRequest || f.ID != 7 || string(f.Endpoint) != "Greeter.Hello" ||
		string(f.ContentType) != "application/json" || f.Timeout != 3*time.Second || string(f.Body) != `{"name":"Ann"}` {
		t.Fatalf("request = %+v, %v", f, err)
	}
	if err := r.Next(&f); err != nil || f.Kind != KindResponse || f.Status != 500 || string(f.Detail) != "boom" || string(f.Body) != "{}" {
		t.Fatalf("response = %+v, %v", f, err)
	}
	if err := r.Next(&f); err != nil || f.Kind != KindGoAway {
		t.Fatalf("goaway = %+v, %v", f, err)
	}
}

func TestRejects(t *testing.T) {
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"too large", []byte{0xff, 0xff, 0xff, 0xff, 1}, ErrFrameTooLarge},
		{"too short", []byte{0, 0, 0, 2, 1, 0}, ErrMalformed},
		{"unknown kind", append([]byte{0, 0, 0, 9, 9}, make([]byte, 8)...), ErrMalformed},
		{"endpoint overruns", append([]byte{0, 0, 0, 11, 1}, append(make([]byte, 8), 0xff, 0xff)...), ErrMalformed},
	}
	for _, tc := range cases {
		var f Frame
		if err := NewReader(bytes.NewReader(tc.in), 1024).Next(&f); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func FuzzReader(f *testing.F) {
	req, _ := AppendRequest(nil, 1, "A.B", "application/json", time.Second, []byte("{}"))
	f.Add(req)
	f.Add(AppendResponse(nil, 2, 0, "application/json", "", []byte("{}")))
	f.Add(AppendGoAway(nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data), 1<<16)
		var fr Frame
		for r.Next(&fr) == nil {
		}
	})
}
