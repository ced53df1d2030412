// Package status is the typed error of a call: a status code and a detail,
// carried from a handler to its caller across the wire, and produced by the
// client for failures of its own (no node, every attempt failed, timeout).
//
// Handlers return status.New(code, detail) to choose the code the caller
// sees; any other error becomes InternalError with the error's text.
package status

import (
	"errors"
	"fmt"
)

// Codes are HTTP-like, as in go-micro.
const (
	OK           = 0
	BadRequest   = 400 // the request could not be decoded or is invalid
	Unauthorized = 401 // the caller did not authenticate (e.g. no token in metadata)
	Forbidden    = 403 // the caller may not make this call
	NotFound     = 404 // no such service or endpoint
	Timeout      = 408 // the deadline passed
	TooLarge     = 413 // a message is larger than the limit
	// HeaderTooLarge: the request metadata is over the limits (package
	// metadata); the handler did not run.
	HeaderTooLarge = 431
	Canceled       = 499 // the caller canceled
	InternalError  = 500 // the handler failed
	Unavailable    = 503 // no node could serve the call; safe to retry
)

// Error is a call's typed error. Use errors.As to read it from any error a
// client returns.
type Error struct {
	Code   int
	Detail string
	// Causes are the underlying errors, e.g. one per failed attempt;
	// errors.Is and errors.As look through them.
	Causes []error
}

// New returns an *Error with the code and detail.
func New(code int, detail string) *Error { return &Error{Code: code, Detail: detail} }

// Newf is New with a format.
func Newf(code int, format string, args ...any) *Error {
	return &Error{Code: code, Detail: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string {
	if len(e.Causes) == 0 {
		return fmt.Sprintf("status %d: %s", e.Code, e.Detail)
	}
	return fmt.Sprintf("status %d: %s: %v", e.Code, e.Detail, errors.Join(e.Causes...))
}

// Unwrap returns the causes.
func (e *Error) Unwrap() []error { return e.Causes }

// Code returns the code of the first *Error in err's chain; OK for nil and
// InternalError for an error without one.
func Code(err error) int {
	if err == nil {
		return OK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return InternalError
}
