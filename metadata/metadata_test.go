package metadata_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/beacon-go/beacon/metadata"
)

func TestValidate(t *testing.T) {
	many := metadata.MD{}
	for i := range metadata.MaxEntries + 1 {
		many[fmt.Sprint("k", i)] = ""
	}
	tests := []struct {
		name string
		md   metadata.MD
		ok   bool
	}{
		{"nil", nil, true},
		{"plain", metadata.New("Authorization", "Bearer x", "x-b3.id", "1"), true},
		{"utf-8 value", metadata.MD{"k": "héllo\tthere"}, true},
		{"at the size limit", metadata.MD{"k": strings.Repeat("v", metadata.MaxSize-1)}, true},
		{"over the size limit", metadata.MD{"k": strings.Repeat("v", metadata.MaxSize)}, false},
		{"too many", many, false},
		{"empty key", metadata.MD{"": "v"}, false},
		{"upper-case key", metadata.MD{"Key": "v"}, false},
		{"space in key", metadata.MD{"a b": "v"}, false},
		{"long key", metadata.MD{strings.Repeat("k", metadata.MaxKeyLen+1): "v"}, false},
		{"newline in value", metadata.MD{"k": "a\r\nb: c"}, false},
		{"NUL in value", metadata.MD{"k": "a\x00"}, false},
	}
	for _, tc := range tests {
		err := metadata.Validate(tc.md)
		var me *metadata.Error
		if (err == nil) != tc.ok || (err != nil && !errors.As(err, &me)) {
			t.Errorf("%s: Validate = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestContexts(t *testing.T) {
	ctx := context.Background()
	if _, ok := metadata.FromOutgoingContext(ctx); ok {
		t.Fatal("metadata in an empty context")
	}
	base := metadata.New("a", "1")
	ctx = metadata.NewOutgoingContext(ctx, base)
	ctx2 := metadata.AppendToOutgoingContext(ctx, "B", "2", "a", "3")
	md, _ := metadata.FromOutgoingContext(ctx2)
	if md.Get("a") != "3" || md.Get("b") != "2" || md.Get("B") != "2" {
		t.Fatalf("appended %v", md)
	}
	if base["a"] != "1" || len(base) != 1 {
		t.Fatalf("Append changed the shared MD: %v", base)
	}
	if _, ok := metadata.FromIncomingContext(ctx2); ok {
		t.Fatal("outgoing metadata read as incoming")
	}
	in := metadata.NewIncomingContext(context.Background(), metadata.New("x", "y"))
	if md, ok := metadata.FromIncomingContext(in); !ok || md["x"] != "y" {
		t.Fatal("incoming metadata lost")
	}
	if _, ok := metadata.FromOutgoingContext(in); ok {
		t.Fatal("incoming metadata is forwarded as outgoing")
	}
}
