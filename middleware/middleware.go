// Package middleware holds ready-made client and server interceptors:
// request logging with log/slog and bearer-token authentication through
// call metadata. Panic recovery needs none: the server recovers a panicking
// handler or interceptor into status 500 and logs it.
//
// Order matters: interceptors given first are outermost. A typical server:
//
//	server.WithInterceptors(middleware.ServerLog(log), middleware.BearerAuth(check))
//
// logs every request, refused ones included; a typical client:
//
//	client.WithInterceptors(middleware.BearerToken(token), middleware.ClientLog(log)),
//	client.WithAttemptInterceptors(middleware.AttemptLog(log))
package middleware

import (
	"context"
	"crypto/subtle"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/metadata"
	"github.com/beacon-go/beacon/server"
	"github.com/beacon-go/beacon/status"
)

// ServerLog logs every request a server runs: at debug level when it
// succeeds, at info level (warn for status 500 and above) when it fails,
// with the endpoint, the caller's address, the protocol, the status and the
// duration.
func ServerLog(log *slog.Logger) server.Interceptor {
	return func(ctx context.Context, req any, info *server.HandlerInfo, next server.HandlerFunc) (any, error) {
		start := time.Now()
		rsp, err := next(ctx, req)
		level, code := slog.LevelDebug, status.Code(err)
		switch {
		case code >= 500:
			level = slog.LevelWarn
		case err != nil:
			level = slog.LevelInfo
		}
		if log.Enabled(ctx, level) {
			remote := ""
			if info.Remote != nil {
				remote = info.Remote.String()
			}
			attrs := []slog.Attr{slog.String("endpoint", info.Endpoint), slog.String("remote", remote),
				slog.String("protocol", info.Protocol), slog.Int("status", code), slog.Duration("took", time.Since(start))}
			if err != nil {
				attrs = append(attrs, slog.String("err", err.Error()))
			}
			log.LogAttrs(ctx, level, "server: request", attrs...)
		}
		return rsp, err
	}
}

// ClientLog logs every call once (whatever its retries): at debug level on
// success, info on failure, with the service, endpoint, status and
// duration.
func ClientLog(log *slog.Logger) client.Interceptor {
	return func(ctx context.Context, c *client.CallInfo, next client.Invoker) error {
		start := time.Now()
		err := next(ctx, c)
		level := slog.LevelDebug
		if err != nil {
			level = slog.LevelInfo
		}
		if log.Enabled(ctx, level) {
			attrs := []slog.Attr{slog.String("service", c.Service), slog.String("endpoint", c.Endpoint),
				slog.Int("status", status.Code(err)), slog.Duration("took", time.Since(start))}
			if err != nil {
				attrs = append(attrs, slog.String("err", err.Error()))
			}
			log.LogAttrs(ctx, level, "client: call", attrs...)
		}
		return err
	}
}

// AttemptLog logs every attempt at debug level: the node, its address, the
// attempt number and the outcome.
func AttemptLog(log *slog.Logger) client.AttemptInterceptor {
	return func(ctx context.Context, a *client.Attempt, next client.AttemptInvoker) error {
		start := time.Now()
		err := next(ctx, a)
		if log.Enabled(ctx, slog.LevelDebug) {
			node := ""
			if a.Node != nil {
				node = a.Node.ID
			}
			attrs := []slog.Attr{slog.String("service", a.Service), slog.String("endpoint", a.Endpoint),
				slog.Int("attempt", a.Number), slog.String("node", node), slog.String("address", a.Address),
				slog.Int("status", status.Code(err)), slog.Duration("took", time.Since(start))}
			if err != nil {
				attrs = append(attrs, slog.String("err", err.Error()))
			}
			log.LogAttrs(ctx, slog.LevelDebug, "client: attempt", attrs...)
		}
		return err
	}
}

// AuthorizationKey is the metadata key of the bearer token (HTTP's
// Authorization header arrives under it too).
const AuthorizationKey = "authorization"

// BearerToken sends token with every call as "authorization: Bearer
// <token>" request metadata.
func BearerToken(token string) client.Interceptor {
	v := "Bearer " + token
	return func(ctx context.Context, c *client.CallInfo, next client.Invoker) error {
		return next(metadata.AppendToOutgoingContext(ctx, AuthorizationKey, v), c)
	}
}

// StaticTokens returns a check for BearerAuth accepting exactly the given
// tokens (compared in constant time).
func StaticTokens(tokens ...string) func(ctx context.Context, token string) error {
	return func(ctx context.Context, token string) error {
		ok := 0
		for _, t := range tokens {
			ok |= subtle.ConstantTimeCompare([]byte(t), []byte(token))
		}
		if ok == 0 {
			return status.New(status.Unauthorized, "invalid token")
		}
		return nil
	}
}

// BearerAuth refuses requests whose "authorization" metadata is not
// "Bearer <token>" with a token check accepts: status 401 (Unauthorized)
// when it is missing, or check's error (a *status.Error chooses the code;
// any other error becomes 401 with its text). The handler does not run.
// check runs per request and must be safe for concurrent use.
func BearerAuth(check func(ctx context.Context, token string) error) server.Interceptor {
	return func(ctx context.Context, req any, info *server.HandlerInfo, next server.HandlerFunc) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		v := md[AuthorizationKey]
		token, ok := strings.CutPrefix(v, "Bearer ")
		if !ok || token == "" {
			return nil, status.Newf(status.Unauthorized, "%s needs a bearer token (metadata %q)", info.Endpoint, AuthorizationKey)
		}
		if err := check(ctx, token); err != nil {
			if se := new(status.Error); errors.As(err, &se) {
				return nil, err
			}
			return nil, status.New(status.Unauthorized, err.Error())
		}
		return next(ctx, req)
	}
}
