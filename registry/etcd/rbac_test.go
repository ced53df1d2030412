package etcd

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/beacon-go/beacon/internal/testserver"
	"github.com/beacon-go/beacon/registry"
)

// TestRBACOverTLS: a real etcd serving TLS only, with client certificate
// authentication and RBAC on (etcd auth enable): a user whose role covers
// the registry prefix, a read-only one. Permission failures are
// registry.ErrPermission, never ErrUnavailable, and come at once (not
// after a timeout).
func TestRBACOverTLS(t *testing.T) {
	pk := testserver.MustPKI(t, "svc") // the client certificate's CN is the user svc
	e := testserver.MustStartEtcd(t, testserver.WithTLS(pk, true))
	if err := e.EnableAuth("rootpw",
		testserver.EtcdUser{Name: "svc", Password: "svcpw", Prefix: "/micro/"},
		testserver.EtcdUser{Name: "reader", Password: "readerpw", Prefix: "/micro/", ReadOnly: true},
	); err != nil {
		t.Fatal(err)
	}
	files := WithTLSFiles(pk.CA, pk.ClientCert, pk.ClientKey)
	base := []Option{WithAddrs(e.Endpoints()...), files, WithRequestTimeout(2 * time.Second)}
	open := func(t *testing.T, lb *logBuf, opts ...Option) (*Registry, error) {
		if lb == nil {
			lb = newLogBuf()
		}
		return New(ctxT(t), append(append(append([]Option(nil), base...), WithLogger(lb.Logger())), opts...)...)
	}

	t.Run("user with a role on the prefix", func(t *testing.T) {
		r, err := open(t, nil, WithAuth("svc", "svcpw"))
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		w, err := r.Watch(ctxT(t), registry.WatchService("rbac"))
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		if err := r.Register(ctxT(t), svc("rbac", "1", "n1"), registry.RegisterTTL(5*time.Second)); err != nil {
			t.Fatal(err)
		}
		if ev, err := w.Next(); err != nil || ev.Type != registry.Create {
			t.Fatalf("watch: %v %v", ev, err)
		}
		if _, err := r.GetService(ctxT(t), "rbac"); err != nil {
			t.Fatal(err)
		}
		if err := r.Deregister(ctxT(t), svc("rbac", "1", "n1")); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("certificate only: its CN is the user", func(t *testing.T) {
		r, err := open(t, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if err := r.Register(ctxT(t), svc("rbac-cn", "1", "n1")); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("read-only user cannot register", func(t *testing.T) {
		lb := newLogBuf()
		r, err := open(t, lb, WithAuth("reader", "readerpw"))
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		start := time.Now()
		err = r.Register(ctxT(t), svc("rbac-ro", "1", "n1"), registry.RegisterTTL(5*time.Second))
		if !errors.Is(err, registry.ErrPermission) || errors.Is(err, registry.ErrUnavailable) {
			t.Fatalf("Register: err = %v, want ErrPermission only", err)
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("permission error after %v", took)
		}
		t.Logf("Register: %v", err)
		if _, err := r.GetService(ctxT(t), "rbac"); err != nil && !errors.Is(err, registry.ErrNotFound) {
			t.Errorf("GetService (read is granted): %v", err)
		}
		// The node's keeper retries in the background and says why.
		deadline := time.Now().Add(3 * time.Second)
		for !lb.Has("ERROR", "permission denied") {
			if time.Now().After(deadline) {
				t.Fatal("no ERROR log line saying permission denied from the keeper")
			}
			time.Sleep(20 * time.Millisecond)
		}
	})

	for name, opts := range map[string][]Option{
		"wrong password":                 {WithAuth("svc", "wrong")},
		"unknown user":                   {WithAuth("nobody", "x")},
		"prefix outside the user's role": {WithAuth("reader", "readerpw"), WithPrefix("/elsewhere/")},
	} {
		t.Run(name, func(t *testing.T) {
			start := time.Now()
			r, err := open(t, nil, opts...)
			if err == nil {
				r.Close()
				t.Fatal("New succeeded")
			}
			if !errors.Is(err, registry.ErrPermission) || errors.Is(err, registry.ErrUnavailable) {
				t.Errorf("err = %v, want ErrPermission only", err)
			}
			if !strings.Contains(err.Error(), "permission denied") {
				t.Errorf("err = %v, want it to say permission denied", err)
			}
			t.Logf("New failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
		})
	}
}
