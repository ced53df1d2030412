package status_test

import (
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/beacon-go/beacon/status"
)

func TestCodeAndChain(t *testing.T) {
	e := &status.Error{Code: status.Unavailable, Detail: "all failed", Causes: []error{io.EOF, status.New(409, "conflict")}}
	wrapped := fmt.Errorf("outer: %w", e)
	tests := []struct {
		err  error
		code int
	}{
		{nil, status.OK},
		{errors.New("plain"), status.InternalError},
		{status.New(404, "x"), 404},
		{wrapped, status.Unavailable},
	}
	for _, tc := range tests {
		if got := status.Code(tc.err); got != tc.code {
			t.Errorf("Code(%v) = %d, want %d", tc.err, got, tc.code)
		}
	}
	if !errors.Is(wrapped, io.EOF) {
		t.Error("errors.Is does not see a cause")
	}
	if got := e.Error(); got != "status 503: all failed: EOF\nstatus 409: conflict" {
		t.Errorf("Error() = %q", got)
	}
	if got := status.Newf(400, "bad %s", "x").Error(); got != "status 400: bad x" {
		t.Errorf("Newf: %q", got)
	}
}
