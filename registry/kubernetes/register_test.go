package kubernetes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	coordinationv1 "k8s.io/api/coordination/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/rest"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/registrytest"
)

func getSlice(t *testing.T, ns, name string) (*discoveryv1.EndpointSlice, error) {
	t.Helper()
	return admin.DiscoveryV1().EndpointSlices(ns).Get(ctxT(t), name, metav1.GetOptions{})
}

func getLease(t *testing.T, ns, name string) (*coordinationv1.Lease, error) {
	t.Helper()
	return admin.CoordinationV1().Leases(ns).Get(ctxT(t), name, metav1.GetOptions{})
}

func one(name, id, addr string) *registry.Service {
	return &registry.Service{Name: name, Version: "1.0.0", Metadata: map[string]string{"team": "a"},
		Endpoints: []*registry.Endpoint{{Name: "Greeter.Hello", Metadata: map[string]string{registry.MetaIdempotent: "true"}}},
		Nodes:     []*registry.Node{{ID: id, Address: addr, Metadata: map[string]string{registry.MetaProtocol: "beacon"}}}}
}

// TestRegisteredObjects: what Register writes, as kubectl would see it.
func TestRegisteredObjects(t *testing.T) {
	ns := namespace(t)
	r, _ := newRegistry(t, ns)
	s := one("greeter", "Node_1@host:a", "10.2.0.1:8080")
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(1500*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	name := ObjectName("greeter", "Node_1@host:a")
	sl, err := getSlice(t, ns, name)
	if err != nil {
		t.Fatal(err)
	}
	if sl.Labels[LabelManagedBy] != ManagedBy || sl.Labels[LabelAppManagedBy] != ManagedBy || sl.Labels[LabelService] != "greeter" ||
		sl.Labels[discoveryv1.LabelServiceName] != "" {
		t.Errorf("slice labels = %v", sl.Labels)
	}
	var rec registry.Service
	if err := json.Unmarshal([]byte(sl.Annotations[AnnotationNode]), &rec); err != nil || !registry.SameNode(&rec, s) {
		t.Errorf("record = %s (%v), want the node of %+v", sl.Annotations[AnnotationNode], err, s)
	}
	if sl.AddressType != discoveryv1.AddressTypeIPv4 || len(sl.Endpoints) != 1 || sl.Endpoints[0].Addresses[0] != "10.2.0.1" ||
		len(sl.Ports) != 1 || *sl.Ports[0].Port != 8080 || *sl.Ports[0].Name != "beacon" {
		t.Errorf("slice endpoints %+v ports %+v", sl.Endpoints, sl.Ports)
	}
	l, err := getLease(t, ns, name)
	if err != nil {
		t.Fatal(err)
	}
	if *l.Spec.HolderIdentity != "Node_1@host:a" || *l.Spec.LeaseDurationSeconds != 2 || l.Spec.RenewTime == nil ||
		time.Since(l.Spec.RenewTime.Time) > 5*time.Second || l.Labels[LabelAppManagedBy] != ManagedBy {
		t.Errorf("lease = %+v %v", l.Spec, l.Labels)
	}
	if sl.Annotations[AnnotationLease] != name || len(sl.OwnerReferences) != 1 || sl.OwnerReferences[0].UID != l.UID ||
		sl.OwnerReferences[0].Kind != "Lease" {
		t.Errorf("slice lease %q owners %+v", sl.Annotations[AnnotationLease], sl.OwnerReferences)
	}

	// A heartbeat of unchanged data renews the Lease and leaves the slice
	// untouched (server-side apply of the same content is a no-op).
	time.Sleep(20 * time.Millisecond)
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(1500*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	sl2, _ := getSlice(t, ns, name)
	l2, _ := getLease(t, ns, name)
	if sl2.ResourceVersion != sl.ResourceVersion {
		t.Errorf("heartbeat rewrote the slice (resource version %s -> %s)", sl.ResourceVersion, sl2.ResourceVersion)
	}
	if !l2.Spec.RenewTime.After(l.Spec.RenewTime.Time) {
		t.Errorf("heartbeat did not renew the lease: %v -> %v", l.Spec.RenewTime, l2.Spec.RenewTime)
	}

	// Addresses the API refuses as endpoints (loopback), and names (FQDN
	// endpoints are deprecated): the record alone.
	for addr, want := range map[string]discoveryv1.AddressType{
		"127.0.0.1:9000": discoveryv1.AddressTypeIPv4, "[::1]:9000": discoveryv1.AddressTypeIPv6,
		"[fd00::7]:9000": discoveryv1.AddressTypeIPv6, "svc-1.beacon.invalid:9000": discoveryv1.AddressTypeIPv4,
	} {
		s := one("addr", "n-"+strings.NewReplacer("[", "", "]", "", ":", "-").Replace(addr), addr)
		if err := r.Register(ctxT(t), s, registry.RegisterTTL(time.Minute)); err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		sl, err := getSlice(t, ns, ObjectName("addr", s.Nodes[0].ID))
		if err != nil {
			t.Fatal(err)
		}
		wantEP := !strings.HasPrefix(addr, "127.") && !strings.HasPrefix(addr, "[::1]") && !strings.HasPrefix(addr, "svc")
		if sl.AddressType != want || (len(sl.Endpoints) == 1) != wantEP {
			t.Errorf("%s: address type %s, endpoints %+v", addr, sl.AddressType, sl.Endpoints)
		}
	}
	wantNodes(t, r, "addr", "n---1-9000=[::1]:9000", "n-127.0.0.1-9000=127.0.0.1:9000", "n-fd00--7-9000=[fd00::7]:9000",
		"n-svc-1.beacon.invalid-9000=svc-1.beacon.invalid:9000")

	// Deregister deletes both objects; again, it is no error.
	for range 2 {
		if err := r.Deregister(ctxT(t), s); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := getSlice(t, ns, name); !apierrors.IsNotFound(err) {
		t.Errorf("slice after Deregister: %v", err)
	}
	if _, err := getLease(t, ns, name); !apierrors.IsNotFound(err) {
		t.Errorf("lease after Deregister: %v", err)
	}
}

// TestLostObjectsComeBack: a Beacon slice or Lease deleted by someone else
// is written again by the next heartbeat; without its Lease the node is
// hidden meanwhile.
func TestLostObjectsComeBack(t *testing.T) {
	ns := namespace(t)
	r, _ := newRegistry(t, ns)
	s := one("lost", "n1", "127.0.0.1:9000")
	ttl := registry.RegisterTTL(time.Minute)
	if err := r.Register(ctxT(t), s, ttl); err != nil {
		t.Fatal(err)
	}
	ev := registrytest.Watch(t, r, registry.WatchService("lost"))
	ev.Expect(t, wait, registry.Create, "n1")
	name := ObjectName("lost", "n1")
	if err := admin.CoordinationV1().Leases(ns).Delete(ctxT(t), name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	ev.Expect(t, wait, registry.Delete, "n1")
	if err := r.Register(ctxT(t), s, ttl); err != nil {
		t.Fatal(err)
	}
	ev.Expect(t, wait, registry.Create, "n1")
	if err := admin.DiscoveryV1().EndpointSlices(ns).Delete(ctxT(t), name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	ev.Expect(t, wait, registry.Delete, "n1")
	if err := r.Register(ctxT(t), s, ttl); err != nil {
		t.Fatal(err)
	}
	ev.Expect(t, wait, registry.Create, "n1")
	// Without a TTL: no Lease, and the slice says so.
	if err := r.Register(ctxT(t), s); err != nil {
		t.Fatal(err)
	}
	registrytest.Eventually(t, wait, func() error {
		sl, err := getSlice(t, ns, name)
		if err != nil {
			return err
		}
		if sl.Annotations[AnnotationLease] != "" || len(sl.OwnerReferences) != 0 {
			return fmt.Errorf("slice without TTL still names lease %q, owners %v", sl.Annotations[AnnotationLease], sl.OwnerReferences)
		}
		return nil
	})
	if err := admin.CoordinationV1().Leases(ns).Delete(ctxT(t), name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	wantNodes(t, r, "lost", "n1=127.0.0.1:9000") // no TTL: no Lease needed
}

// TestExpiredNodeCollected: a server that crashed (no Deregister) is hidden
// when its Lease expires and its objects are deleted by a reader after the
// collection delay. Readers also hide a node whose renewals resume only
// after expiry until then, and show it again.
func TestExpiredNodeCollected(t *testing.T) {
	ns := namespace(t)
	reader, lb := newRegistry(t, ns, WithCollectExpiredAfter(300*time.Millisecond))
	ev := registrytest.Watch(t, reader, registry.WatchService("crash"))
	w, _ := newRegistry(t, ns)
	s := one("crash", "n1", "127.0.0.1:9000")
	start := time.Now()
	if err := w.Register(ctxT(t), s, registry.RegisterTTL(time.Second)); err != nil {
		t.Fatal(err)
	}
	w.Close() // a crash: nothing deregisters
	ev.Expect(t, wait, registry.Create, "n1")
	ev.Expect(t, wait, registry.Delete, "n1")
	if d := time.Since(start); d < time.Second || d > 2500*time.Millisecond {
		t.Errorf("hidden after %v, want about the 1 s TTL", d)
	}
	name := ObjectName("crash", "n1")
	registrytest.Eventually(t, wait, func() error {
		_, e1 := getSlice(t, ns, name)
		_, e2 := getLease(t, ns, name)
		if !apierrors.IsNotFound(e1) || !apierrors.IsNotFound(e2) {
			return fmt.Errorf("slice: %v, lease: %v; want both gone", e1, e2)
		}
		return nil
	})
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("collected after %v, want about TTL + 300 ms", d)
	}
	if !lb.Has("INFO kubernetes registry: collected an expired node", "node=n1", "cause=lease expired") {
		t.Errorf("no collection log:\n%s", lb)
	}
	// A node that comes back registers afresh.
	w2, _ := newRegistry(t, ns)
	if err := w2.Register(ctxT(t), s, registry.RegisterTTL(time.Minute)); err != nil {
		t.Fatal(err)
	}
	ev.Expect(t, wait, registry.Create, "n1")
}

// TestMalformedRecord: a Beacon-managed slice whose record does not decode
// is ignored and logged; the others are served.
func TestMalformedRecord(t *testing.T) {
	ns := namespace(t)
	r, lb := newRegistry(t, ns)
	if err := r.Register(ctxT(t), one("mixed", "good", "127.0.0.1:9000")); err != nil {
		t.Fatal(err)
	}
	_, err := admin.DiscoveryV1().EndpointSlices(ns).Create(ctxT(t), &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "beacon-bad", Labels: map[string]string{LabelManagedBy: ManagedBy},
			Annotations: map[string]string{AnnotationService: "mixed", AnnotationNode: `{"name":"mixed","nodes":[{"id":"x"`}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wantNodes(t, r, "mixed", "good=127.0.0.1:9000")
	registrytest.Eventually(t, wait, func() error {
		if !lb.Has("WARN kubernetes registry: ignoring a Beacon EndpointSlice", "endpointslice=beacon-bad", "malformed record") {
			return fmt.Errorf("no warning:\n%s", lb)
		}
		return nil
	})
}

// TestRegisterErrors: input Kubernetes cannot hold is invalid; API errors
// match registry.ErrUnavailable and keep the API's error.
func TestRegisterErrors(t *testing.T) {
	r, _ := newRegistry(t, "no-such-namespace")
	big := one("big", "n1", "127.0.0.1:1")
	for i := range registry.MaxEndpoints - 1 {
		big.Endpoints = append(big.Endpoints, &registry.Endpoint{Name: fmt.Sprintf("E.%d", i), Metadata: map[string]string{"doc": strings.Repeat("x", 500)}})
	}
	var ve *registry.ValidationError
	if err := r.Register(ctxT(t), big); !errors.As(err, &ve) || !strings.Contains(err.Error(), "does not fit in Kubernetes' 262144 bytes of annotations") {
		t.Errorf("oversized record: %v", err)
	}
	err := r.Register(ctxT(t), one("x", "n1", "127.0.0.1:1"), registry.RegisterTTL(time.Minute))
	if !errors.Is(err, registry.ErrUnavailable) || !apierrors.IsNotFound(err) {
		t.Errorf("Register into a missing namespace: %v, want NotFound wrapped in ErrUnavailable", err)
	}
}

// TestUnreachable: with nothing listening, reads fail with ErrUnavailable
// by their context's deadline, and Close leaves nothing running.
func TestUnreachable(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	cfg := rest.CopyConfig(adminCfg)
	cfg.Host = "https://127.0.0.1:1"
	r, err := New(WithConfig(cfg), WithNamespace("default"), WithLogger(newLogBuf().Logger()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(ctxT(t), 300*time.Millisecond)
	defer cancel()
	if _, err := r.GetService(ctx, "x"); !errors.Is(err, registry.ErrUnavailable) {
		t.Errorf("GetService = %v, want ErrUnavailable", err)
	}
	if err := r.Register(ctxT(t), one("x", "n1", "127.0.0.1:1")); !errors.Is(err, registry.ErrUnavailable) {
		t.Errorf("Register = %v, want ErrUnavailable", err)
	}
	r.Close()
	if _, err := r.GetService(ctxT(t), "x"); !errors.Is(err, registry.ErrClosed) {
		t.Errorf("GetService after Close = %v", err)
	}
}

func TestObjectName(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range [][2]string{
		{"greeter", "n1"}, {"greeter", "n2"}, {"Go.Micro_srv.Greeter", "a@b:c"}, {"x", "N1"},
		{strings.Repeat("a", 128), "n1"}, {"-_", "n"}, {"9lives", "n"},
	} {
		n := ObjectName(c[0], c[1])
		if errs := validation.IsDNS1123Label(n); len(errs) != 0 {
			t.Errorf("ObjectName(%q, %q) = %q: %v", c[0], c[1], n, errs)
		}
		if seen[n] {
			t.Errorf("ObjectName(%q, %q) = %q twice", c[0], c[1], n)
		}
		seen[n] = true
		if ObjectName(c[0], c[1]) != n {
			t.Errorf("ObjectName is not deterministic")
		}
	}
	if n := ObjectName("Go.Micro_srv.Greeter", "x"); !strings.HasPrefix(n, "beacon-go-micro-srv-greeter-") {
		t.Errorf("ObjectName = %q, want the service name readable", n)
	}
}
