package testserver

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// EtcdUser is a user that Etcd.EnableAuth creates, with one role of its
// own (named after it) that grants access to the keys under Prefix.
type EtcdUser struct {
	Name, Password string
	// Prefix is the key prefix the user's role may use; empty: none.
	Prefix string
	// ReadOnly grants READ instead of READWRITE on Prefix.
	ReadOnly bool
}

// EnableAuth turns on etcd's authentication (RBAC): it creates the user
// root with rootPassword and the role root, the given users, each with a
// role of its own granting Prefix, and then enables auth. From then on
// every request needs a user: a password, or (with WithTLS and client
// auth) a client certificate whose common name is a user name. It talks to
// etcd's JSON gateway, with the PKI's client certificate under WithTLS.
func (e *Etcd) EnableAuth(rootPassword string, users ...EtcdUser) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	call := func(path string, body any) error {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		return doJSONWith(ctx, e.hc, nil, http.MethodPost, e.ClientURL()+path, strings.NewReader(string(b)), nil)
	}
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	type step struct {
		path string
		body any
	}
	steps := []step{
		{"/v3/auth/role/add", map[string]string{"name": "root"}},
		{"/v3/auth/user/add", map[string]string{"name": "root", "password": rootPassword}},
		{"/v3/auth/user/grant", map[string]string{"user": "root", "role": "root"}},
	}
	for _, u := range users {
		steps = append(steps,
			step{"/v3/auth/role/add", map[string]string{"name": u.Name}},
			step{"/v3/auth/user/add", map[string]string{"name": u.Name, "password": u.Password}},
			step{"/v3/auth/user/grant", map[string]string{"user": u.Name, "role": u.Name}})
		if u.Prefix != "" {
			perm := "READWRITE"
			if u.ReadOnly {
				perm = "READ"
			}
			steps = append(steps, step{"/v3/auth/role/grant", map[string]any{"name": u.Name, "perm": map[string]string{
				"permType": perm, "key": b64(u.Prefix), "range_end": b64(prefixEnd(u.Prefix)),
			}}})
		}
	}
	for _, st := range steps {
		if err := call(st.path, st.body); err != nil {
			if st.path == "/v3/auth/role/add" && strings.Contains(err.Error(), "already exists") {
				continue
			}
			return fmt.Errorf("testserver: etcd auth setup: %w", err)
		}
	}
	if err := call("/v3/auth/enable", map[string]string{}); err != nil {
		return fmt.Errorf("testserver: etcd auth enable: %w", err)
	}
	return nil
}

// prefixEnd is the range end of all keys starting with prefix.
func prefixEnd(prefix string) string {
	b := []byte(prefix)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1])
		}
	}
	return "\x00"
}

// ManagementToken returns the initial management token given to WithACL
// ("" without ACLs).
func (c *Consul) ManagementToken() string { return c.opts.aclToken }

// CreateToken creates an ACL policy with rules (HCL) and a token holding
// it, with the management token, and returns the token's secret. The
// agent needs WithACL.
func (c *Consul) CreateToken(name, rules string) (string, error) {
	if c.opts.aclToken == "" {
		return "", errors.New("testserver: consul CreateToken needs WithACL")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hdr := http.Header{"X-Consul-Token": {c.opts.aclToken}}
	pol, _ := json.Marshal(map[string]string{"Name": name, "Rules": rules})
	if err := doJSONWith(ctx, nil, hdr, http.MethodPut, c.URL()+"/v1/acl/policy", strings.NewReader(string(pol)), nil); err != nil {
		return "", fmt.Errorf("testserver: consul policy %s: %w", name, err)
	}
	tok, _ := json.Marshal(map[string]any{"Description": name, "Policies": []map[string]string{{"Name": name}}})
	var out struct{ SecretID string }
	if err := doJSONWith(ctx, nil, hdr, http.MethodPut, c.URL()+"/v1/acl/token", strings.NewReader(string(tok)), &out); err != nil {
		return "", fmt.Errorf("testserver: consul token %s: %w", name, err)
	}
	return out.SecretID, nil
}
