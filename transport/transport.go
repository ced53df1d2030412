// Package transport is the seam between Beacon's call logic (selection,
// retries, registration, drain) and the bytes on a connection. Beacon's own
// wire is the default implementation (in package client for calls, package
// server for serving, HTTP/JSON sharing its port); another protocol (gRPC)
// plugs in by implementing Caller for the client and serving a Handler.
//
// A node says what it speaks in its registry metadata
// (registry.MetaProtocol); the client picks the Caller registered for that
// protocol and skips, without waiting, nodes whose protocol it has no
// Caller for.
package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/beacon-go/beacon/metadata"
)

// Request is one call as a transport sends it. The client owns it; a
// Caller must not retain it, its Metadata or Body after Call returns.
type Request struct {
	Service     string
	Endpoint    string // e.g. "Greeter.Hello"
	ContentType string // the codec's, e.g. "application/json"
	// Metadata is the call's request metadata (shared: do not modify it;
	// replace it with a copy to add to it).
	Metadata metadata.MD
	Body     []byte
	// Deadline ends the attempt (zero: only ctx bounds it); transports send
	// it to the server, whose handler context carries it.
	Deadline time.Time
}

// Response is the answer of a node. Status is status.OK or the code of the
// handler's error (or of the server's refusal). A Caller fills it on a nil
// error; the client owns its memory.
type Response struct {
	Status      int
	Detail      string // the error's text, when Status is not OK
	ContentType string // the body's codec; "" means the request's
	Metadata    metadata.MD
	Body        []byte
	// NotRun marks the server's own refusal: the handler did not run
	// (draining, over its bounds, unknown endpoint), so the call may go to
	// another node whatever it is.
	NotRun bool
}

// Caller sends requests to nodes by address. Implementations must be safe
// for concurrent use.
//
// Call sends req to the node at addr and waits for its response. It returns
// by ctx's end or req.Deadline at the latest, whatever the node does. A nil
// error means rsp holds the node's answer (which may be an error status).
// A non-nil error is a failure to get an answer: it should be an *Error
// whose NotRun says whether the request provably did not run, or ctx's
// error when the caller gave up.
type Caller interface {
	Call(ctx context.Context, addr string, req *Request, rsp *Response) error
	// Close releases the Caller's connections; calls in flight fail.
	Close() error
}

// Pinger is implemented by Callers that can check a node's liveness
// without running anything; the client pings an ejected node before it
// trusts it with a call again. Ping returns by ctx's end.
type Pinger interface {
	Ping(ctx context.Context, addr string) error
}

// DialState is implemented by Callers that know whether the connection to
// a node is still being set up; the client prefers ready nodes over those
// (a node whose connects hang must not hold callers). It must not block.
type DialState interface {
	Connecting(addr string) bool
}

// Handler is a server's dispatch: it decodes req, runs the endpoint's
// handler (through the server's interceptors) and fills rsp. It returns
// when the handler has, and is safe for concurrent use. Request metadata
// reaches the handler's context (metadata.FromIncomingContext); req.Deadline
// bounds it.
type Handler interface {
	Serve(ctx context.Context, req *Request, rsp *Response)
}

// Server serves a Handler on a listener: Serve blocks until ln is closed
// or Shutdown is called; Shutdown stops accepting, lets calls in flight
// finish until ctx ends, then closes.
type Server interface {
	Serve(ln net.Listener, h Handler) error
	Shutdown(ctx context.Context) error
}

// Error is a failure to get a response from a node: the dial failed, the
// connection broke, no response came before the deadline, or the node
// refused the request without running it. NotRun tells whether the request
// provably did not run (nothing of it reached the node whole, or the node
// said so): only then may it be retried whatever the call is.
type Error struct {
	Addr   string
	Op     string // "dial", "wait", "write", "read", "timeout", "refused"
	NotRun bool
	Err    error
}

func (e *Error) Error() string {
	ran := "may have run"
	if e.NotRun {
		ran = "not run"
	}
	return fmt.Sprintf("%s %s: %v (%s)", e.Op, e.Addr, e.Err, ran)
}

func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrNotRun) true when the request did not run.
func (e *Error) Is(target error) bool { return target == ErrNotRun && e.NotRun }

// ErrNotRun: the request provably did not run on the node (the dial failed,
// nothing of it was sent, or the node refused it without running it); it is
// safe to retry anywhere. errors.Is finds it in a call's error.
var ErrNotRun = errors.New("request not run")

// ErrRefused: the node refused the request without running it (it is
// shutting down, or over its concurrency bounds).
var ErrRefused = errors.New("refused by the node")
