package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/beacon-go/beacon/registry"
)

// permissionErrors are etcd's answers that say the credentials are wrong or
// not allowed to do what was asked: retrying does not help.
var permissionErrors = []error{
	rpctypes.ErrPermissionDenied,
	rpctypes.ErrAuthFailed,
	rpctypes.ErrUserEmpty,
	rpctypes.ErrUserNotFound,
	rpctypes.ErrRoleNotFound,
	rpctypes.ErrInvalidAuthToken,
	rpctypes.ErrInvalidAuthMgmt,
}

// isPermission reports whether err is etcd refusing the credentials or the
// operation (see registry.ErrPermission).
func isPermission(err error) bool {
	if err == nil {
		return false
	}
	for _, p := range permissionErrors {
		if errors.Is(err, p) {
			return true
		}
	}
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.PermissionDenied, codes.Unauthenticated:
			return true
		}
	}
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		switch ee.Code() {
		case codes.PermissionDenied, codes.Unauthenticated:
			return true
		}
	}
	return false
}

// isTimeout reports whether err is a request that ran out of time or found
// no connection (etcd's client hides dial errors behind these).
func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.DeadlineExceeded, codes.Unavailable:
			return true
		}
	}
	return false
}

// probeResult is what a direct dial of one endpoint found.
type probeResult struct {
	endpoint string
	// err is nil when the endpoint answered as an etcd would (TCP, and the
	// TLS handshake when TLS is used) or could not be probed.
	err error
	// definite: err is known before any timeout (refused, DNS, TLS), so
	// the etcd client will not get through either.
	definite bool
}

// probeEndpoints dials every endpoint at once, bounded by ctx: TCP, then
// the TLS handshake (with tlsCfg when the endpoint uses TLS), then waits
// for the server's first bytes, which show a TLS 1.3 server rejecting the
// client certificate after the handshake, or a plain-text endpoint that is
// in fact TLS. It returns one result per endpoint, in order.
func probeEndpoints(ctx context.Context, endpoints []string, tlsCfg *tls.Config) []probeResult {
	out := make([]probeResult, len(endpoints))
	var wg sync.WaitGroup
	for i, ep := range endpoints {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = probeEndpoint(ctx, ep, tlsCfg)
		}()
	}
	wg.Wait()
	return out
}

// allDefinite reports whether every result is a definite failure.
func allDefinite(rs []probeResult) bool {
	for _, r := range rs {
		if !r.definite {
			return false
		}
	}
	return len(rs) > 0
}

// causes describes the failed results: "127.0.0.1:2379: connection
// refused; ...". It wraps each error, so that errors.Is and errors.As find
// syscall.ECONNREFUSED, *net.DNSError, *tls.CertificateVerificationError,
// tls.AlertError and so on.
func causes(rs []probeResult) error {
	var errs []error
	for _, r := range rs {
		if r.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.endpoint, r.err))
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return joined(errs)
}

// joined is errors.Join on one line.
type joinedErr []error

func joined(errs []error) error { return joinedErr(errs) }

func (j joinedErr) Error() string {
	s := make([]string, len(j))
	for i, e := range j {
		s[i] = e.Error()
	}
	return strings.Join(s, "; ")
}

func (j joinedErr) Unwrap() []error { return j }

// endpointTarget returns the address to dial and whether the etcd client
// uses TLS for ep: "https://" always, "http://" never, no scheme when TLS
// is configured. ok is false for endpoints not dialled over TCP (unix).
func endpointTarget(ep string, tlsCfg *tls.Config) (addr string, useTLS, ok bool) {
	switch {
	case strings.HasPrefix(ep, "https://"):
		return strings.TrimPrefix(ep, "https://"), true, true
	case strings.HasPrefix(ep, "http://"):
		return strings.TrimPrefix(ep, "http://"), false, true
	case strings.Contains(ep, "://"):
		return "", false, false
	}
	return ep, tlsCfg != nil, true
}

// h2Preface is what an HTTP/2 client (gRPC) sends first: the connection
// preface and an empty SETTINGS frame.
var h2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")

func probeEndpoint(ctx context.Context, ep string, tlsCfg *tls.Config) probeResult {
	res := probeResult{endpoint: ep}
	addr, useTLS, ok := endpointTarget(ep, tlsCfg)
	if !ok {
		return res
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		res.err, res.definite = fmt.Errorf("bad endpoint: %w", err), true
		return res
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		res.definite, res.err = dialCause(ctx, err)
		return res
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if !useTLS {
		if _, err := conn.Write(h2Preface); err != nil {
			res.err, res.definite = fmt.Errorf("connection broken: %w", err), ctx.Err() == nil
			return res
		}
		var b [1]byte
		n, err := conn.Read(b[:])
		switch {
		case n > 0 && b[0] != 0x15: // not a TLS alert record: it answers
		case n == 0 && ctx.Err() != nil:
			res.err = errors.New("connected, but no answer in time")
		case n > 0 || speaksTLS(ctx, addr, host):
			res.err, res.definite = errors.New("the endpoint speaks TLS, this client plain text (configure TLS or use https://)"), true
		default:
			res.err, res.definite = fmt.Errorf("the endpoint closed the connection without answering: %w", err), true
		}
		return res
	}
	cfg := &tls.Config{}
	if tlsCfg != nil {
		cfg = tlsCfg.Clone()
	}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	cfg.NextProtos = []string{"h2"}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		if ctx.Err() != nil {
			res.err = errors.New("no TLS handshake in time")
			return res
		}
		res.err, res.definite = tlsCause(err), true
		return res
	}
	// TLS 1.3: the server checks the client certificate after the
	// client's handshake is over, and says so in an alert.
	var b [1]byte
	_, err = tc.Write(h2Preface)
	if err == nil {
		_, err = tc.Read(b[:])
	}
	if err != nil {
		if ctx.Err() != nil {
			res.err = errors.New("TLS handshake done, but no answer in time")
		} else {
			res.err, res.definite = tlsCause(err), true
		}
	}
	return res
}

// speaksTLS reports whether addr completes a TLS handshake (without
// verifying anything: it only tells what protocol the endpoint speaks).
func speaksTLS(ctx context.Context, addr, host string) bool {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	defer conn.Close()
	tc := tls.Client(conn, &tls.Config{ServerName: host, InsecureSkipVerify: true, NextProtos: []string{"h2"}}) //nolint:gosec // a protocol probe, no data
	return tc.HandshakeContext(ctx) == nil
}

// dialCause names a failed TCP dial; definite unless it timed out.
func dialCause(ctx context.Context, err error) (definite bool, cause error) {
	var dns *net.DNSError
	var ne net.Error
	switch {
	case ctx.Err() != nil:
		return false, fmt.Errorf("no TCP connection in time: %w", err)
	case errors.As(err, &dns):
		return true, fmt.Errorf("DNS: %w", err)
	case errors.Is(err, syscall.ECONNREFUSED):
		return true, fmt.Errorf("connection refused (nothing listens there): %w", err)
	case errors.As(err, &ne) && ne.Timeout():
		return false, err
	}
	return true, err
}

// tlsCause describes a failed TLS handshake.
func tlsCause(err error) error {
	var ve *tls.CertificateVerificationError
	var ae tls.AlertError
	var rh tls.RecordHeaderError
	switch {
	case errors.As(err, &ve):
		return fmt.Errorf("TLS: the server's certificate is not trusted: %w", err)
	case errors.As(err, &ae) || strings.Contains(err.Error(), "remote error"):
		return fmt.Errorf("TLS: the server refused the handshake (client certificate missing or not trusted?): %w", err)
	case errors.As(err, &rh):
		return fmt.Errorf("TLS: the endpoint does not speak TLS (use http:// or no TLS settings): %w", err)
	case errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET):
		return fmt.Errorf("TLS: the server closed the connection during the handshake: %w", err)
	}
	return fmt.Errorf("TLS: %w", err)
}

// failProbeTimeout bounds the direct dial that explains a request timeout.
const failProbeTimeout = 300 * time.Millisecond

// connect creates the etcd client and checks that it can read the prefix,
// within the dial timeout and ctx, while probing the endpoints directly
// (probeEndpoints): when every endpoint fails for good, it gives up at once
// with the causes. On success it returns the client and the cancel func of
// its context (the Registry's Close calls it).
func connect(ctx context.Context, cfg clientv3.Config, o options, tlsCfg *tls.Config) (*clientv3.Client, context.CancelFunc, error) {
	// nctx ends when New gives up: ctx ends, the dial timeout passes, or
	// the probe found every endpoint dead.
	nctx, ncancel := context.WithTimeout(ctx, o.dialTimeout)
	defer ncancel()
	// The client's context outlives New; until New succeeds it ends with
	// nctx (which stops the authentication inside clientv3.New too).
	cctx, ccancel := context.WithCancel(context.Background())
	cfg.Context = cctx
	stop := context.AfterFunc(nctx, ccancel)

	type result struct {
		cli *clientv3.Client
		err error
	}
	resc := make(chan result, 1)
	go func() {
		cli, err := clientv3.New(cfg)
		if err == nil {
			if _, err = cli.Get(nctx, o.prefix, clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
				_ = cli.Close()
				cli = nil
			}
		}
		resc <- result{cli, err}
	}()
	probec := make(chan []probeResult, 1)
	go func() { probec <- probeEndpoints(nctx, o.addrs, tlsCfg) }()

	var (
		res    result
		probed []probeResult
		early  bool // every endpoint failed for good before the client gave up
	)
	select {
	case res = <-resc:
	case probed = <-probec:
		if allDefinite(probed) {
			early = true
			ncancel()
		}
		res = <-resc
	}
	if res.err == nil && !early && stop() {
		ncancel()
		if probed == nil {
			<-probec
		}
		return res.cli, ccancel, nil
	}
	ccancel()
	ncancel()
	if res.cli != nil {
		_ = res.cli.Close()
	}
	if probed == nil {
		probed = <-probec
	}
	switch {
	case early:
		return nil, nil, fmt.Errorf("%w: %w", registry.ErrUnavailable, causes(probed))
	case res.err == nil: // nctx ended just as the read succeeded
		res.err = nctx.Err()
	case isPermission(res.err):
		return nil, nil, fmt.Errorf("%w: %w", registry.ErrPermission, res.err)
	}
	if c := causes(probed); c != nil && (isTimeout(res.err) || errors.Is(res.err, context.Canceled)) {
		return nil, nil, fmt.Errorf("%w: %w (%w)", registry.ErrUnavailable, res.err, c)
	}
	return nil, nil, fmt.Errorf("%w: %w", registry.ErrUnavailable, res.err)
}
