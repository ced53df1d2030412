package etcd

import (
	"crypto/tls"
	"log/slog"
	"strings"
	"time"
)

// Defaults of the options. One place defines each; the option docs and the
// cmd package read them from here.
const (
	// DefaultAddr is the etcd client endpoint used when WithAddrs is not given.
	DefaultAddr = "127.0.0.1:2379"
	// DefaultPrefix is the key prefix of the registry: go-micro's layout.
	DefaultPrefix = "/micro/registry/"
	// DefaultDialTimeout bounds New's reachability check and the
	// authentication call made while connecting.
	DefaultDialTimeout = 5 * time.Second
	// DefaultRequestTimeout bounds every single etcd request made by the
	// registry, whatever the caller's context says.
	DefaultRequestTimeout = 5 * time.Second
)

// Option configures a Registry; pass options to New.
type Option func(*options)

type options struct {
	addrs          []string
	dialTimeout    time.Duration
	requestTimeout time.Duration
	tls            *tls.Config
	tlsFiles       *tlsFiles
	username       string
	password       string
	prefix         string
	log            *slog.Logger
	gozero         []goZeroKey
}

type tlsFiles struct{ ca, cert, key string }

func defaultOptions() options {
	return options{
		dialTimeout:    DefaultDialTimeout,
		requestTimeout: DefaultRequestTimeout,
		prefix:         DefaultPrefix,
		log:            slog.Default(),
	}
}

// WithAddrs sets the etcd client endpoints, as "host:port" or
// "http(s)://host:port". Several endpoints are balanced and failed over by
// the etcd client. An element may itself be a comma-separated list
// ("a:2379,b:2379"); empty elements are ignored. Default DefaultAddr.
//
// Endpoints without a scheme use TLS when WithTLS or WithTLSFiles is given;
// "http://" endpoints never do, "https://" endpoints always do.
func WithAddrs(addrs ...string) Option {
	return func(o *options) {
		o.addrs = o.addrs[:0]
		for _, a := range addrs {
			for _, part := range strings.Split(a, ",") {
				if part = strings.TrimSpace(part); part != "" {
					o.addrs = append(o.addrs, part)
				}
			}
		}
	}
}

// WithDialTimeout bounds how long New waits for etcd to answer (and for
// authentication when WithAuth is used). Default DefaultDialTimeout. Values
// <= 0 are ignored.
func WithDialTimeout(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.dialTimeout = d
		}
	}
}

// WithRequestTimeout bounds each etcd request the registry makes (the
// shorter of it and the caller's context deadline applies), so that no call
// blocks forever while etcd is unreachable. Default DefaultRequestTimeout.
// Values <= 0 are ignored.
func WithRequestTimeout(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.requestTimeout = d
		}
	}
}

// WithTLS makes the client use TLS with cfg (which is cloned). It takes
// precedence over WithTLSFiles.
func WithTLS(cfg *tls.Config) Option {
	return func(o *options) {
		if cfg != nil {
			o.tls = cfg.Clone()
		}
	}
}

// WithTLSFiles makes the client use TLS with PEM files: ca verifies the
// server (empty: the system roots), cert and key are the client certificate
// for etcd's --client-cert-auth (both empty: none). The files are read by
// New, which fails if they cannot be loaded.
func WithTLSFiles(ca, cert, key string) Option {
	return func(o *options) { o.tlsFiles = &tlsFiles{ca: ca, cert: cert, key: key} }
}

// WithAuth authenticates with etcd's user/password authentication.
func WithAuth(username, password string) Option {
	return func(o *options) { o.username, o.password = username, password }
}

// WithPrefix sets the key prefix under which services are stored. A missing
// trailing "/" is added. Default DefaultPrefix ("/micro/registry/"), which
// go-micro's etcd registry also uses.
func WithPrefix(prefix string) Option {
	return func(o *options) {
		if !strings.HasSuffix(prefix, "/") {
			prefix += "/"
		}
		o.prefix = prefix
	}
}

// WithLogger sets the logger (default slog.Default()). The registry logs
// what it does about faults (lost leases, re-registrations, interrupted or
// compacted watches, malformed records) at Info and Warn. The etcd client's
// own log lines go to the same logger with the attribute
// component=etcd-client, demoted because the registry reports their
// consequences itself: the client's Debug, Info and Warn (it warns on every
// retried request) become Debug, its Error becomes Warn.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.log = l
		}
	}
}
