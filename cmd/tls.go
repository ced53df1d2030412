package cmd

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/urfave/cli/v2"

	"github.com/beacon-go/beacon"
	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/server"
	"github.com/beacon-go/beacon/tlsconfig"
)

// Names of the TLS flags (each also read from BEACON_<NAME> and
// MICRO_<NAME>, e.g. BEACON_TLS_CERT).
//
//	--tls_cert         this node's certificate chain (PEM): the server's, and
//	                   the client's when a node asks for one (mutual TLS)
//	--tls_key          its private key (PEM); needed with --tls_cert
//	--tls_ca           CA certificates (PEM): the client verifies nodes
//	                   against them (without: the system roots), the server
//	                   verifies client certificates
//	--tls_client_auth  the server requires a client certificate signed by
//	                   --tls_ca (mutual TLS)
//
// With any of them, the client speaks TLS and the server (of a service with
// a name) serves TLS only, which needs --tls_cert and --tls_key. The files
// are read at start (an error names the file) and again when they change
// (package tlsconfig). A certificate used by both sides of mutual TLS needs
// both the serverAuth and clientAuth extended key usages.
const (
	FlagTLSCert       = "tls_cert"
	FlagTLSKey        = "tls_key"
	FlagTLSCA         = "tls_ca"
	FlagTLSClientAuth = "tls_client_auth"
)

// ErrTLSFlags: the TLS flags do not make a configuration (a certificate
// without its key, client auth without a CA, a server without a
// certificate).
var ErrTLSFlags = errors.New("cmd: incomplete TLS flags")

// TLSConfig holds the TLS flags (Config.TLS).
type TLSConfig struct {
	Cert, Key, CA string
	ClientAuth    bool
}

// Enabled reports whether any TLS flag was given.
func (t TLSConfig) Enabled() bool { return t.Cert != "" || t.Key != "" || t.CA != "" || t.ClientAuth }

func tlsFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: FlagTLSCert, EnvVars: envs(FlagTLSCert),
			Usage: "PEM certificate chain of this node (server; client too for mutual TLS); enables TLS, reloaded when it changes"},
		&cli.StringFlag{Name: FlagTLSKey, EnvVars: envs(FlagTLSKey),
			Usage: "PEM private key of --" + FlagTLSCert},
		&cli.StringFlag{Name: FlagTLSCA, EnvVars: envs(FlagTLSCA),
			Usage: "PEM CA certificates: verify nodes (default: system roots) and client certificates; enables TLS"},
		&cli.BoolFlag{Name: FlagTLSClientAuth, EnvVars: envs(FlagTLSClientAuth),
			Usage: "require client certificates signed by --" + FlagTLSCA + " (mutual TLS)"},
	}
}

// tlsFrom reads the TLS flags into cfg and checks that they go together.
func tlsFrom(c *cli.Context, cfg *Config) error {
	cfg.TLS = TLSConfig{Cert: c.String(FlagTLSCert), Key: c.String(FlagTLSKey), CA: c.String(FlagTLSCA), ClientAuth: c.Bool(FlagTLSClientAuth)}
	for _, n := range []string{FlagTLSCert, FlagTLSKey, FlagTLSCA, FlagTLSClientAuth} {
		cfg.Set[n] = c.IsSet(n)
	}
	t := cfg.TLS
	switch {
	case t.Cert != "" && t.Key == "":
		return fmt.Errorf("%w: --%s needs --%s (its private key)", ErrTLSFlags, FlagTLSCert, FlagTLSKey)
	case t.Key != "" && t.Cert == "":
		return fmt.Errorf("%w: --%s needs --%s (the certificate of the key)", ErrTLSFlags, FlagTLSKey, FlagTLSCert)
	case t.ClientAuth && t.CA == "":
		return fmt.Errorf("%w: --%s needs --%s (the CA that signs client certificates)", ErrTLSFlags, FlagTLSClientAuth, FlagTLSCA)
	}
	return nil
}

// Options returns the server and client options of the TLS flags: none
// when no TLS flag was given; else the client speaks TLS (client.TLS) and,
// when withServer, the server serves TLS only (server.TLS), which needs
// --tls_cert and --tls_key. It reads the files (an error names the file and
// the flag); the configs reload them when they change (package tlsconfig),
// logging failures to log (nil: slog.Default()).
func (t TLSConfig) Options(withServer bool, log *slog.Logger) ([]server.Option, []client.Option, error) {
	return beacon.TLSOptions(tlsconfig.Files{Cert: t.Cert, Key: t.Key, CA: t.CA, ClientAuth: t.ClientAuth}, withServer, log)
}
