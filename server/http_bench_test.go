package server

import (
	"net/http"
	"testing"
)

// The headers of a Go client's JSON POST, and curl's: no metadata.
func BenchmarkHeaderMetadata(b *testing.B) {
	for _, tc := range []struct {
		name string
		h    http.Header
	}{
		{"go-client", http.Header{"Content-Type": {"application/json"}, "Content-Length": {"14"}, "User-Agent": {"Go-http-client/1.1"}, "Accept-Encoding": {"gzip"}}},
		{"curl", http.Header{"Content-Type": {"application/x-www-form-urlencoded"}, "Content-Length": {"14"}, "User-Agent": {"curl/8.5.0"}, "Accept": {"*/*"}}},
		{"metadata", http.Header{"Content-Type": {"application/json"}, "Content-Length": {"14"}, "User-Agent": {"Go-http-client/1.1"}, "Accept-Encoding": {"gzip"}, "X-Request-Id": {"abc"}}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := headerMetadata(tc.h); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
