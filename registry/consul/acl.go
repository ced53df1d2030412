package consul

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/beacon-go/beacon/registry"
)

// tokenHeader carries consul's ACL token.
const tokenHeader = "X-Consul-Token"

// resolveToken returns the ACL token to send: the one given (WithToken),
// else the contents of the file named by CONSUL_HTTP_TOKEN_FILE, else
// CONSUL_HTTP_TOKEN, as consul's own tools do; "" for none. A token file
// that cannot be read is an error.
func resolveToken(given string) (string, error) {
	if given != "" {
		return given, nil
	}
	if f := os.Getenv(api.HTTPTokenFileEnvName); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("consul: ACL token file (%s): %w", api.HTTPTokenFileEnvName, err)
		}
		if t := strings.TrimSpace(string(b)); t != "" {
			return t, nil
		}
	}
	return os.Getenv(api.HTTPTokenEnvName), nil
}

// tokenDesc says which credentials a request carried, for error messages
// (never the token itself).
func (r *Registry) tokenDesc() string {
	if r.token == "" {
		return "no ACL token given: consul used its anonymous token"
	}
	return "with the ACL token given"
}

// checkToken asks consul about the ACL token (GET /v1/acl/token/self) once
// the agent answered: a token that consul does not know (403 "ACL not
// found") fails New with registry.ErrPermission, at once rather than at
// the first registration. Without a token and with ACLs on, it notes that
// requests run as the anonymous token. ACLs off (401), or anything else,
// passes: the calls themselves report their errors.
func (r *Registry) checkToken(ctx context.Context) error {
	c, _ := r.client()
	_, _, err := c.ACL().TokenReadSelf((&api.QueryOptions{}).WithContext(ctx))
	switch {
	case err == nil || statusCode(err) != http.StatusForbidden:
		if err != nil {
			r.log.Debug("consul ACL token check inconclusive", "err", err)
		}
		return nil
	case r.token != "":
		return fmt.Errorf("%w: consul refused the ACL token given: %w", registry.ErrPermission, err)
	}
	r.anonymous = true
	r.log.Info("consul has ACLs on and no ACL token was given: requests use consul's anonymous token")
	return nil
}

// hiddenByACL reports whether an empty answer says that ACLs hid what
// there is rather than that there is nothing: consul flagged the answer as
// filtered (it does so for tokens other than the anonymous one), or, for the
// catalog (which always lists consul's own "consul" service), the anonymous
// token saw nothing.
func (r *Registry) hiddenByACL(meta *api.QueryMeta, catalog bool) bool {
	if meta != nil && meta.ResultsFilteredByACLs {
		return true
	}
	return catalog && r.anonymous
}

// errHidden is the error of a read whose every result ACLs hid.
func (r *Registry) errHidden(op string) error {
	return fmt.Errorf("%w: consul: %s: consul's ACLs hid every result (%s)", registry.ErrPermission, op, r.tokenDesc())
}
