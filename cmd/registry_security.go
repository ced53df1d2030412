package cmd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/consul"
	"github.com/beacon-go/beacon/registry/etcd"
	"github.com/beacon-go/beacon/tlsconfig"
)

// Names of the registry security flags: TLS to the registry and its
// credentials. Each is also read from BEACON_<NAME> and MICRO_<NAME> (e.g.
// BEACON_REGISTRY_TOKEN), and, when none of those is given, from the
// registry's own environment variables (see RegistrySecurity.Resolve):
//
//	--registry_tls              TLS with the system roots (implied by the
//	                            other --registry_tls_* flags and by an
//	                            https:// registry address)
//	--registry_tls_ca           CA certificates (PEM) that verify the registry
//	--registry_tls_cert         client certificate chain (PEM), e.g. for
//	--registry_tls_key          etcd's --client-cert-auth; and its key
//	--registry_tls_server_name  name to verify the registry's certificate
//	                            against (default: the address's host)
//	--registry_username         etcd user and password
//	--registry_password
//	--registry_token            consul ACL token
//
// Secrets given as flags show in the process list: prefer the environment.
const (
	FlagRegistryTLS           = "registry_tls"
	FlagRegistryTLSCA         = "registry_tls_ca"
	FlagRegistryTLSCert       = "registry_tls_cert"
	FlagRegistryTLSKey        = "registry_tls_key"
	FlagRegistryTLSServerName = "registry_tls_server_name"
	FlagRegistryUsername      = "registry_username"
	FlagRegistryPassword      = "registry_password"
	FlagRegistryToken         = "registry_token"
)

// ErrRegistrySecurity: the registry security settings do not make a
// configuration (a certificate without its key, a user without a
// password, a setting the chosen registry has no use for, a file that does
// not load).
var ErrRegistrySecurity = errors.New("cmd: bad registry TLS or credentials")

// RegistrySecurity holds the registry's TLS settings and credentials
// (Config.RegistrySecurity). The fields are file names, names and secrets;
// Source tells, by flag name, where each non-empty one came from ("--flag",
// "BEACON_...", "MICRO_..." or the registry's own variable, e.g.
// "ETCDCTL_CACERT").
type RegistrySecurity struct {
	TLS                bool
	CA, Cert, Key      string
	ServerName         string
	Username, Password string
	Token              string
	Source             map[string]string
}

// String describes the settings without the secrets (the password and the
// token print as "<set>"), so that %v and %+v of a Config leak nothing.
func (s RegistrySecurity) String() string {
	secret := func(v string) string {
		if v == "" {
			return ""
		}
		return "<set>"
	}
	return fmt.Sprintf("{TLS:%t CA:%s Cert:%s Key:%s ServerName:%s Username:%s Password:%s Token:%s}",
		s.TLS, s.CA, s.Cert, s.Key, s.ServerName, s.Username, secret(s.Password), secret(s.Token))
}

// GoString is String, for %#v.
func (s RegistrySecurity) GoString() string { return "cmd.RegistrySecurity" + s.String() }

// given lists the settings that came from Beacon's own flags or variables.
func (s RegistrySecurity) given() []string {
	var out []string
	for _, f := range registrySecurityFlagNames {
		if src := s.Source[f]; src != "" && !nativeSource(src) {
			out = append(out, f)
		}
	}
	return out
}

var registrySecurityFlagNames = []string{FlagRegistryTLS, FlagRegistryTLSCA, FlagRegistryTLSCert, FlagRegistryTLSKey,
	FlagRegistryTLSServerName, FlagRegistryUsername, FlagRegistryPassword, FlagRegistryToken}

func nativeSource(src string) bool {
	return !strings.HasPrefix(src, "--") && !strings.HasPrefix(src, "BEACON_") && !strings.HasPrefix(src, "MICRO_")
}

func registrySecurityFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: FlagRegistryTLS, EnvVars: envs(FlagRegistryTLS),
			Usage: "talk TLS to the registry, verified against the system roots (implied by the other --registry_tls_* flags and https:// addresses)"},
		&cli.StringFlag{Name: FlagRegistryTLSCA, EnvVars: envs(FlagRegistryTLSCA),
			Usage: "PEM CA certificates that verify the registry; enables registry TLS (etcd: else ETCDCTL_CACERT; consul: else CONSUL_CACERT)"},
		&cli.StringFlag{Name: FlagRegistryTLSCert, EnvVars: envs(FlagRegistryTLSCert),
			Usage: "PEM client certificate for the registry, reloaded when it changes (etcd: else ETCDCTL_CERT; consul: else CONSUL_CLIENT_CERT)"},
		&cli.StringFlag{Name: FlagRegistryTLSKey, EnvVars: envs(FlagRegistryTLSKey),
			Usage: "PEM private key of --" + FlagRegistryTLSCert + " (etcd: else ETCDCTL_KEY; consul: else CONSUL_CLIENT_KEY)"},
		&cli.StringFlag{Name: FlagRegistryTLSServerName, EnvVars: envs(FlagRegistryTLSServerName),
			Usage: "name the registry's certificate must carry (default: the address's host; consul: else CONSUL_TLS_SERVER_NAME)"},
		&cli.StringFlag{Name: FlagRegistryUsername, EnvVars: envs(FlagRegistryUsername),
			Usage: "etcd user (else ETCDCTL_USER, then ETCD_USERNAME)"},
		&cli.StringFlag{Name: FlagRegistryPassword, EnvVars: envs(FlagRegistryPassword),
			Usage: "etcd password of --" + FlagRegistryUsername + "; prefer the environment (else ETCDCTL_PASSWORD, then ETCD_PASSWORD)"},
		&cli.StringFlag{Name: FlagRegistryToken, EnvVars: envs(FlagRegistryToken),
			Usage: "consul ACL token; prefer the environment (else the file CONSUL_HTTP_TOKEN_FILE names, then CONSUL_HTTP_TOKEN)"},
	}
}

// registrySecurityFrom reads the registry security flags into cfg and
// checks that they go together.
func registrySecurityFrom(c *cli.Context, cfg *Config) error {
	s := RegistrySecurity{
		TLS:        c.Bool(FlagRegistryTLS),
		CA:         c.String(FlagRegistryTLSCA),
		Cert:       c.String(FlagRegistryTLSCert),
		Key:        c.String(FlagRegistryTLSKey),
		ServerName: c.String(FlagRegistryTLSServerName),
		Username:   c.String(FlagRegistryUsername),
		Password:   c.String(FlagRegistryPassword),
		Token:      c.String(FlagRegistryToken),
		Source:     map[string]string{},
	}
	for _, n := range registrySecurityFlagNames {
		cfg.Set[n] = c.IsSet(n)
		if c.IsSet(n) && (n == FlagRegistryTLS && c.Bool(n) || n != FlagRegistryTLS && c.String(n) != "") {
			s.Source[n] = sourceOf(c, n)
		}
	}
	cfg.RegistrySecurity = s
	switch {
	case s.Cert != "" && s.Key == "":
		return fmt.Errorf("%w: --%s needs --%s (its private key)", ErrRegistrySecurity, FlagRegistryTLSCert, FlagRegistryTLSKey)
	case s.Key != "" && s.Cert == "":
		return fmt.Errorf("%w: --%s needs --%s (the certificate of the key)", ErrRegistrySecurity, FlagRegistryTLSKey, FlagRegistryTLSCert)
	case s.Username != "" && s.Password == "":
		return fmt.Errorf("%w: --%s needs --%s (Beacon does not prompt)", ErrRegistrySecurity, FlagRegistryUsername, FlagRegistryPassword)
	case s.Password != "" && s.Username == "":
		return fmt.Errorf("%w: --%s needs --%s", ErrRegistrySecurity, FlagRegistryPassword, FlagRegistryUsername)
	}
	return nil
}

// sourceOf names where a set flag came from: the first of its variables
// whose value it has, else the command line.
func sourceOf(c *cli.Context, name string) string {
	val := c.String(name)
	for _, e := range envs(name) {
		v, ok := os.LookupEnv(e)
		if !ok {
			continue
		}
		if v == val {
			return e
		}
		if a, err := strconv.ParseBool(v); err == nil && name == FlagRegistryTLS && a == c.Bool(name) {
			return e
		}
	}
	return "--" + name
}

// Resolve returns the settings to use with the registry name whose
// addresses are addrs: each one given by a flag, BEACON_* or MICRO_*
// variable, else by the registry's own environment variables, as its own
// tools read them. It reads the token file of CONSUL_HTTP_TOKEN_FILE. It
// fails, matching ErrRegistrySecurity, on a Beacon setting the registry has
// no use for (a token for etcd, a user for consul, anything for mdns or
// memory) and on native variables that do not go together.
//
//	etcd    CA ETCDCTL_CACERT, certificate and key ETCDCTL_CERT and ETCDCTL_KEY
//	        (as a pair); user and password as a pair, unless
//	        --registry_username or --registry_password is given:
//	        ETCDCTL_USER ("name:password", or "name" with ETCDCTL_PASSWORD),
//	        else ETCD_USERNAME and ETCD_PASSWORD (go-micro's variables)
//	consul  token: the file CONSUL_HTTP_TOKEN_FILE names, else
//	        CONSUL_HTTP_TOKEN; TLS on with CONSUL_HTTP_SSL=true (or an
//	        https:// address, or any Beacon TLS setting), and then CA
//	        CONSUL_CACERT, certificate and key CONSUL_CLIENT_CERT and
//	        CONSUL_CLIENT_KEY (as a pair), server name CONSUL_TLS_SERVER_NAME
func (s RegistrySecurity) Resolve(name string, addrs []string) (RegistrySecurity, error) {
	out := s
	out.Source = map[string]string{}
	for k, v := range s.Source {
		out.Source[k] = v
	}
	given := s.given()
	switch name {
	case "etcd":
		for _, f := range given {
			if f == FlagRegistryToken {
				return out, fmt.Errorf("%w: --%s is consul's ACL token; etcd takes --%s and --%s", ErrRegistrySecurity, FlagRegistryToken, FlagRegistryUsername, FlagRegistryPassword)
			}
		}
		out.native(FlagRegistryTLSCA, &out.CA, "ETCDCTL_CACERT")
		if out.Cert == "" && out.Key == "" {
			out.native(FlagRegistryTLSCert, &out.Cert, "ETCDCTL_CERT")
			out.native(FlagRegistryTLSKey, &out.Key, "ETCDCTL_KEY")
			if (out.Cert == "") != (out.Key == "") {
				return out, fmt.Errorf("%w: ETCDCTL_CERT and ETCDCTL_KEY go together", ErrRegistrySecurity)
			}
		}
		if out.Username == "" && out.Password == "" {
			if err := out.etcdUser(); err != nil {
				return out, err
			}
		}
	case "consul":
		for _, f := range given {
			if f == FlagRegistryUsername || f == FlagRegistryPassword {
				return out, fmt.Errorf("%w: --%s is for etcd; consul takes --%s (an ACL token)", ErrRegistrySecurity, f, FlagRegistryToken)
			}
		}
		if out.Token == "" {
			if f := os.Getenv("CONSUL_HTTP_TOKEN_FILE"); f != "" {
				b, err := os.ReadFile(f)
				if err != nil {
					return out, fmt.Errorf("%w: CONSUL_HTTP_TOKEN_FILE: %w", ErrRegistrySecurity, err)
				}
				if out.Token = strings.TrimSpace(string(b)); out.Token != "" {
					out.Source[FlagRegistryToken] = "CONSUL_HTTP_TOKEN_FILE"
				}
			}
			out.native(FlagRegistryToken, &out.Token, "CONSUL_HTTP_TOKEN")
		}
		if !out.tlsOn(addrs) {
			if v := os.Getenv("CONSUL_HTTP_SSL"); v != "" {
				on, err := strconv.ParseBool(v)
				if err != nil {
					return out, fmt.Errorf("%w: CONSUL_HTTP_SSL %q: want true or false", ErrRegistrySecurity, v)
				}
				if on {
					out.TLS = true
					out.Source[FlagRegistryTLS] = "CONSUL_HTTP_SSL"
				}
			}
		}
		if out.tlsOn(addrs) {
			out.native(FlagRegistryTLSCA, &out.CA, "CONSUL_CACERT")
			out.native(FlagRegistryTLSServerName, &out.ServerName, "CONSUL_TLS_SERVER_NAME")
			if out.Cert == "" && out.Key == "" {
				out.native(FlagRegistryTLSCert, &out.Cert, "CONSUL_CLIENT_CERT")
				out.native(FlagRegistryTLSKey, &out.Key, "CONSUL_CLIENT_KEY")
				if (out.Cert == "") != (out.Key == "") {
					return out, fmt.Errorf("%w: CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY go together", ErrRegistrySecurity)
				}
			}
		}
	default:
		if len(given) > 0 {
			return out, fmt.Errorf("%w: registry %s takes no TLS settings or credentials (--%s given)", ErrRegistrySecurity, name, given[0])
		}
	}
	return out, nil
}

// native sets *v from the variable env when *v is empty.
func (s *RegistrySecurity) native(flag string, v *string, env string) {
	if *v != "" {
		return
	}
	if *v = os.Getenv(env); *v != "" {
		s.Source[flag] = env
	}
}

// etcdUser reads the user and password from etcdctl's variables, else
// go-micro's.
func (s *RegistrySecurity) etcdUser() error {
	if u := os.Getenv("ETCDCTL_USER"); u != "" {
		name, pw, hasPW := strings.Cut(u, ":")
		if p := os.Getenv("ETCDCTL_PASSWORD"); p != "" {
			name, pw, hasPW = u, p, true // as etcdctl: the whole of ETCDCTL_USER is the name
			s.Source[FlagRegistryPassword] = "ETCDCTL_PASSWORD"
		} else {
			s.Source[FlagRegistryPassword] = "ETCDCTL_USER"
		}
		if !hasPW || name == "" || pw == "" {
			return fmt.Errorf("%w: ETCDCTL_USER gives no password: set it as name:password or in ETCDCTL_PASSWORD (Beacon does not prompt)", ErrRegistrySecurity)
		}
		s.Username, s.Password = name, pw
		s.Source[FlagRegistryUsername] = "ETCDCTL_USER"
		return nil
	}
	u, p := os.Getenv("ETCD_USERNAME"), os.Getenv("ETCD_PASSWORD")
	if u != "" && p != "" { // go-micro uses them only together
		s.Username, s.Password = u, p
		s.Source[FlagRegistryUsername], s.Source[FlagRegistryPassword] = "ETCD_USERNAME", "ETCD_PASSWORD"
	}
	return nil
}

// tlsOn reports whether the registry is to be reached over TLS.
func (s RegistrySecurity) tlsOn(addrs []string) bool {
	if s.TLS || s.CA != "" || s.Cert != "" || s.Key != "" || s.ServerName != "" {
		return true
	}
	for _, a := range addrs {
		if strings.HasPrefix(strings.ToLower(strings.TrimSpace(a)), "https://") {
			return true
		}
	}
	return false
}

// tlsConfig builds the client TLS configuration of resolved settings, or
// nil without TLS settings (an https:// address alone then uses the
// backend's default: the system roots). The client certificate is reloaded
// when its files change (package tlsconfig); the CA is read once.
func (s RegistrySecurity) tlsConfig(log *slog.Logger) (*tls.Config, error) {
	if !s.TLS && s.CA == "" && s.Cert == "" && s.Key == "" && s.ServerName == "" {
		return nil, nil
	}
	if (s.Cert == "") != (s.Key == "") {
		return nil, fmt.Errorf("%w: a client certificate needs its key (%s, %s)", ErrRegistrySecurity, s.describe(FlagRegistryTLSCert), s.describe(FlagRegistryTLSKey))
	}
	cfg, err := tlsconfig.Files{Cert: s.Cert, Key: s.Key, Logger: log}.Client()
	if err != nil {
		return nil, fmt.Errorf("%w: %s, %s: %w", ErrRegistrySecurity, s.describe(FlagRegistryTLSCert), s.describe(FlagRegistryTLSKey), err)
	}
	if s.CA != "" {
		b, err := os.ReadFile(s.CA)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrRegistrySecurity, s.describe(FlagRegistryTLSCA), err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("%w: %s: %s holds no PEM certificate", ErrRegistrySecurity, s.describe(FlagRegistryTLSCA), s.CA)
		}
		cfg.RootCAs = pool
	}
	cfg.ServerName = s.ServerName
	return cfg, nil
}

// describe names a setting and its source: "registry TLS CA (env
// ETCDCTL_CACERT)".
func (s RegistrySecurity) describe(flag string) string {
	src := s.Source[flag]
	switch {
	case src == "":
		return "--" + flag
	case strings.HasPrefix(src, "--"):
		return src
	}
	return "--" + flag + " (from " + src + ")"
}

// redacted lists the sources of the settings in use, for a log line
// (never the secrets).
func (s RegistrySecurity) redacted() []any {
	var out []any
	for _, f := range registrySecurityFlagNames {
		if src := s.Source[f]; src != "" {
			out = append(out, f, src)
		}
	}
	return out
}

// RegistryOption configures NewRegistry.
type RegistryOption func(*registryOptions)

type registryOptions struct {
	sec     RegistrySecurity
	mdnsKey []byte
}

// WithRegistrySecurity passes the registry security settings of the flags
// (Config.RegistrySecurity) to NewRegistry.
func WithRegistrySecurity(s RegistrySecurity) RegistryOption {
	return func(o *registryOptions) { o.sec = s }
}

// securedFactory makes a registry that takes TLS settings and credentials.
type securedFactory func(ctx context.Context, addrs []string, sec RegistrySecurity, log *slog.Logger) (registry.Registry, error)

// securedRegistries are the registries NewRegistry makes with their TLS
// settings and credentials (it uses them instead of the plain entries of
// registries()).
func securedRegistries() map[string]securedFactory {
	return map[string]securedFactory{
		"etcd": func(ctx context.Context, addrs []string, sec RegistrySecurity, log *slog.Logger) (registry.Registry, error) {
			opts := []etcd.Option{etcd.WithAddrs(addrs...), etcd.WithLogger(log)}
			tc, err := sec.tlsConfig(log)
			if err != nil {
				return nil, err
			}
			if tc != nil {
				opts = append(opts, etcd.WithTLS(tc))
			}
			if sec.Username != "" {
				opts = append(opts, etcd.WithAuth(sec.Username, sec.Password))
			}
			return etcd.New(ctx, opts...)
		},
		"consul": func(ctx context.Context, addrs []string, sec RegistrySecurity, log *slog.Logger) (registry.Registry, error) {
			opts := []consul.Option{consul.WithAddrs(addrs...), consul.WithLogger(log)}
			tc, err := sec.tlsConfig(log)
			if err != nil {
				return nil, err
			}
			if tc != nil {
				opts = append(opts, consul.WithTLS(tc))
			}
			if sec.Token != "" {
				opts = append(opts, consul.WithToken(sec.Token))
			}
			return consul.New(ctx, opts...)
		},
	}
}
