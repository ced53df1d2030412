package kubernetes

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientset "k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/registrytest"
)

const wait = 10 * time.Second

// createService makes a Kubernetes Service (selector-less: no controller
// runs here anyway).
func createService(t *testing.T, cs clientset.Interface, ns, name string, labels, annotations map[string]string) *corev1.Service {
	t.Helper()
	s, err := cs.CoreV1().Services(ns).Create(ctxT(t), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels, Annotations: annotations},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// createSlice makes an EndpointSlice for a Service, as the EndpointSlice
// controller of a real cluster would.
func createSlice(t *testing.T, cs clientset.Interface, ns, name, service string, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	t.Helper()
	typ := discoveryv1.AddressTypeIPv4
	if len(eps) > 0 && strings.Contains(eps[0].Addresses[0], ":") {
		typ = discoveryv1.AddressTypeIPv6
	}
	s, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctxT(t), &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			discoveryv1.LabelServiceName: service, discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"}},
		AddressType: typ,
		Ports:       ports,
		Endpoints:   eps,
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func pod(name, ip string, ready *bool) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{
		Addresses:  []string{ip},
		Conditions: discoveryv1.EndpointConditions{Ready: ready},
		TargetRef:  &corev1.ObjectReference{Kind: "Pod", Name: name},
	}
}

func port(name string, p int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr.To(name), Port: ptr.To(p), Protocol: ptr.To(corev1.ProtocolTCP)}
}

// nodes returns "id=address" of a service's nodes, or nil when not found.
func nodes(t *testing.T, r registry.Registry, name string) []string {
	t.Helper()
	got, err := r.GetService(ctxT(t), name)
	if errors.Is(err, registry.ErrNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range got {
		for _, n := range s.Nodes {
			out = append(out, n.ID+"="+n.Address)
		}
	}
	return out
}

func wantNodes(t *testing.T, r registry.Registry, name string, want ...string) {
	t.Helper()
	registrytest.Eventually(t, wait, func() error {
		if got := nodes(t, r, name); !slices.Equal(got, want) {
			return fmt.Errorf("%s: nodes %v, want %v", name, got, want)
		}
		return nil
	})
}

// TestOrdinaryService: ready endpoints of a Service's EndpointSlices, its
// version and metadata from labels and annotations, node metadata from the
// endpoints, and watch events as the slices and the Service change.
func TestOrdinaryService(t *testing.T) {
	ns := namespace(t)
	r, _ := newRegistry(t, ns)
	svc := createService(t, admin, ns, "web", map[string]string{LabelVersion: "2.1.0"},
		map[string]string{MetadataPrefix + "team": "payments", "unrelated.example.com/x": "y"})
	a := pod("web-a", "10.1.0.1", ptr.To(true))
	a.NodeName, a.Zone = ptr.To("node-1"), ptr.To("zone-a")
	slice := createSlice(t, admin, ns, "web-abc", "web", []discoveryv1.EndpointPort{port("http", 8080)},
		a, pod("web-b", "10.1.0.2", ptr.To(false)), pod("web-c", "10.1.0.3", nil))
	wantNodes(t, r, "web", "web-a@10.1.0.1=10.1.0.1:8080", "web-c@10.1.0.3=10.1.0.3:8080")
	got, err := r.GetService(ctxT(t), "web")
	if err != nil {
		t.Fatal(err)
	}
	if got[0].Version != "2.1.0" || got[0].Metadata["team"] != "payments" || len(got[0].Metadata) != 1 {
		t.Errorf("service = %s %v", got[0].Version, got[0].Metadata)
	}
	if md := got[0].Nodes[0].Metadata; md[MetaPod] != "web-a" || md[MetaNode] != "node-1" || md[MetaZone] != "zone-a" {
		t.Errorf("node metadata = %v", md)
	}
	if list, err := r.ListServices(ctxT(t)); err != nil || len(list) != 1 || list[0].Name != "web" {
		t.Errorf("ListServices = %v, %v", list, err)
	}

	ev := registrytest.Watch(t, r, registry.WatchService("web"))
	ev.Expect(t, wait, registry.Create, "web-a@10.1.0.1")
	ev.Expect(t, wait, registry.Create, "web-c@10.1.0.3")
	// b becomes ready, a goes away.
	slice.Endpoints = []discoveryv1.Endpoint{pod("web-b", "10.1.0.2", ptr.To(true)), pod("web-c", "10.1.0.3", nil)}
	if slice, err = admin.DiscoveryV1().EndpointSlices(ns).Update(ctxT(t), slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	ev.Expect(t, wait, registry.Create, "web-b@10.1.0.2")
	ev.Expect(t, wait, registry.Delete, "web-a@10.1.0.1")
	// A new version on the Service updates every node; the annotation wins
	// over the label.
	svc.Annotations[AnnotationVersion] = "3.0.0"
	if _, err := admin.CoreV1().Services(ns).Update(ctxT(t), svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if e := ev.Expect(t, wait, registry.Update, "web-b@10.1.0.2"); e.Service.Version != "3.0.0" {
		t.Errorf("update carries version %q", e.Service.Version)
	}
	ev.Expect(t, wait, registry.Update, "web-c@10.1.0.3")
	// A second slice adds its endpoints; deleting the first removes its own.
	createSlice(t, admin, ns, "web-def", "web", []discoveryv1.EndpointPort{port("http", 8080)}, pod("web-d", "10.1.0.4", nil))
	ev.Expect(t, wait, registry.Create, "web-d@10.1.0.4")
	if err := admin.DiscoveryV1().EndpointSlices(ns).Delete(ctxT(t), "web-abc", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	ev.Expect(t, wait, registry.Delete, "web-b@10.1.0.2")
	ev.Expect(t, wait, registry.Delete, "web-c@10.1.0.3")
	wantNodes(t, r, "web", "web-d@10.1.0.4=10.1.0.4:8080")
}

// TestPorts: the only port, else the one the Service's annotation or the
// option names; a slice with several ports and no choice is skipped and
// logged.
func TestPorts(t *testing.T) {
	ns := namespace(t)
	two := []discoveryv1.EndpointPort{port("http", 8080), port("grpc", 9090)}
	createService(t, admin, ns, "multi", nil, nil)
	createSlice(t, admin, ns, "multi-1", "multi", two, pod("m-1", "10.3.0.1", nil))
	createService(t, admin, ns, "chosen", nil, map[string]string{AnnotationPort: "http"})
	createSlice(t, admin, ns, "chosen-1", "chosen", two, pod("c-1", "10.3.0.2", nil))
	// No Service object at all: the slice alone is enough; version "".
	createSlice(t, admin, ns, "bare-1", "bare", []discoveryv1.EndpointPort{port("", 7000)},
		discoveryv1.Endpoint{Addresses: []string{"fd00::5"}})

	r, lb := newRegistry(t, ns)
	wantNodes(t, r, "chosen", "c-1@10.3.0.2=10.3.0.2:8080")
	if lb.Has("endpointslice=chosen-1") {
		t.Errorf("a warning for a slice whose Service names its port (seen before the Service while the caches filled?):\n%s", lb)
	}
	wantNodes(t, r, "bare", "fd00::5=[fd00::5]:7000")
	if got := nodes(t, r, "multi"); got != nil {
		t.Errorf("multi = %v, want skipped", got)
	}
	if !lb.Has("WARN kubernetes registry: skipping an EndpointSlice", "endpointslice=multi-1", `ports "http", "grpc": choose one with the Service annotation beacon-go.github.io/port`) {
		t.Errorf("no warning about the ports:\n%s", lb)
	}

	r2, _ := newRegistry(t, ns, WithPortName("grpc"))
	wantNodes(t, r2, "multi", "m-1@10.3.0.1=10.3.0.1:9090")
	wantNodes(t, r2, "chosen", "c-1@10.3.0.2=10.3.0.2:8080") // the annotation wins
	wantNodes(t, r2, "bare", "fd00::5=[fd00::5]:7000")       // the option falls back to a slice's only port
	r3, lb3 := newRegistry(t, ns, WithPortName("metrics"))
	wantNodes(t, r3, "chosen", "c-1@10.3.0.2=10.3.0.2:8080")
	if got := nodes(t, r3, "multi"); got != nil || !lb3.Has(`no port named "metrics"`) {
		t.Errorf("multi = %v with a port name that is not there:\n%s", got, lb3)
	}
}

// TestBeaconAndOrdinaryTogether: a Beacon server registered under the name
// of a Kubernetes Service is one more node of it.
func TestBeaconAndOrdinaryTogether(t *testing.T) {
	ns := namespace(t)
	createService(t, admin, ns, "api", map[string]string{LabelVersion: "1.0.0"}, nil)
	createSlice(t, admin, ns, "api-1", "api", []discoveryv1.EndpointPort{port("http", 8080)}, pod("api-x", "10.4.0.1", nil))
	r, _ := newRegistry(t, ns)
	s := &registry.Service{Name: "api", Version: "2.0.0", Nodes: []*registry.Node{{ID: "beacon-1", Address: "127.0.0.1:9000"}}}
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(time.Minute)); err != nil {
		t.Fatal(err)
	}
	defer r.Deregister(ctxT(t), s)
	wantNodes(t, r, "api", "api-x@10.4.0.1=10.4.0.1:8080", "beacon-1=127.0.0.1:9000")
	got, _ := r.GetService(ctxT(t), "api")
	if len(got) != 2 || got[0].Version != "1.0.0" || got[1].Version != "2.0.0" {
		t.Errorf("versions: %v", got)
	}
}
