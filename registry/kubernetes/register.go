package kubernetes

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	coordinationac "k8s.io/client-go/applyconfigurations/coordination/v1"
	discoveryac "k8s.io/client-go/applyconfigurations/discovery/v1"
	metaac "k8s.io/client-go/applyconfigurations/meta/v1"

	"github.com/beacon-go/beacon/registry"
)

// maxAnnotations is Kubernetes' limit on an object's annotations, keys and
// values together.
const maxAnnotations = 256 << 10

// ObjectName is the name of the EndpointSlice and of the Lease of a Beacon
// node: "beacon-", the service name made a DNS label (at most 39
// characters), "-" and 16 hex digits of a hash of the service name and node
// ID: at most 63 characters, a DNS label. Node IDs may hold characters
// object names cannot, so the ID itself is in the node record.
func ObjectName(service, nodeID string) string {
	h := sha256.Sum256([]byte(service + "\x00" + nodeID))
	var b strings.Builder
	dash := false
	for _, c := range strings.ToLower(service) {
		if b.Len() >= 39 {
			break
		}
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' {
			b.WriteRune(c)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	base := strings.TrimRight(b.String(), "-")
	if base == "" {
		return "beacon-" + hex.EncodeToString(h[:8])
	}
	return "beacon-" + base + "-" + hex.EncodeToString(h[:8])
}

// Register implements registry.Registry. Each node becomes a Beacon
// EndpointSlice (labels LabelManagedBy and LabelAppManagedBy "beacon", the
// node's record in AnnotationNode) and, with a TTL, a
// coordination.k8s.io/v1 Lease of the same name whose renew time Register
// moves on: readers hide the node once renew time + duration has passed
// (the duration is the TTL rounded up to whole seconds). Both are written
// with server-side apply, so a heartbeat is one request per object, a
// heartbeat of unchanged data leaves the slice untouched, and a slice or
// Lease deleted by someone else is made again. The slice is owned by the
// Lease (an owner reference), so Kubernetes' garbage collector deletes it
// with the Lease.
func (r *Registry) Register(ctx context.Context, s *registry.Service, opts ...registry.RegisterOption) error {
	if err := registry.Validate(s); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if r.isClosed() {
		return registry.ErrClosed
	}
	o := registry.ApplyRegister(opts...)
	s = s.Copy()
	for _, n := range s.Nodes {
		one := &registry.Service{Name: s.Name, Version: s.Version, Metadata: s.Metadata, Endpoints: s.Endpoints, Nodes: []*registry.Node{n}}
		if err := r.registerNode(ctx, one, o.TTL); err != nil {
			return err
		}
	}
	return nil
}

func (r *Registry) registerNode(ctx context.Context, one *registry.Service, ttl time.Duration) error {
	n := one.Nodes[0]
	name := ObjectName(one.Name, n.ID)
	record, err := json.Marshal(one)
	if err != nil {
		return fmt.Errorf("kubernetes registry: %w", err)
	}
	if len(record)+len(AnnotationNode)+len(AnnotationService)+len(one.Name)+len(AnnotationLease)+len(name) > maxAnnotations {
		return &registry.ValidationError{Field: "service", Value: one.Name,
			Reason: fmt.Sprintf("a node record of %d bytes does not fit in Kubernetes' %d bytes of annotations", len(record), maxAnnotations)}
	}
	labels := map[string]string{LabelManagedBy: ManagedBy, LabelAppManagedBy: ManagedBy}
	if len(validation.IsValidLabelValue(one.Name)) == 0 {
		labels[LabelService] = one.Name
	}
	annotations := map[string]string{AnnotationService: one.Name, AnnotationNode: string(record)}
	slice := discoveryac.EndpointSlice(name, r.ns)
	if ttl > 0 {
		secs := int32(min(math.Ceil(ttl.Seconds()), math.MaxInt32))
		lease := coordinationac.Lease(name, r.ns).
			WithLabels(map[string]string{LabelAppManagedBy: ManagedBy}).
			WithAnnotations(map[string]string{AnnotationService: one.Name}).
			WithSpec(coordinationac.LeaseSpec().
				WithHolderIdentity(n.ID).
				WithLeaseDurationSeconds(max(secs, 1)).
				WithRenewTime(metav1.NewMicroTime(r.o.now())))
		l, err := r.client.CoordinationV1().Leases(r.ns).Apply(ctx, lease, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
		if err != nil {
			return apiErr("apply Lease", name, err)
		}
		annotations[AnnotationLease] = name
		slice.WithOwnerReferences(metaac.OwnerReference().
			WithAPIVersion("coordination.k8s.io/v1").WithKind("Lease").WithName(l.Name).WithUID(l.UID))
	}
	addrType, ep, port := sliceEndpoint(n)
	p := discoveryac.EndpointPort().WithPort(int32(port)).WithProtocol(corev1.ProtocolTCP)
	if proto := n.Metadata[registry.MetaProtocol]; proto != "" && len(validation.IsDNS1123Label(proto)) == 0 {
		p.WithName(proto)
	}
	slice.WithLabels(labels).WithAnnotations(annotations).WithAddressType(addrType).WithPorts(p)
	if ep != nil {
		slice.WithEndpoints(ep)
	}
	if _, err := r.client.DiscoveryV1().EndpointSlices(r.ns).Apply(ctx, slice, metav1.ApplyOptions{FieldManager: FieldManager, Force: true}); err != nil {
		return apiErr("apply EndpointSlice", name, err)
	}
	return nil
}

// sliceEndpoint returns the address type of a Beacon slice and, when the
// API accepts the address as an endpoint (an IP that is not loopback,
// link-local or unspecified), the endpoint that shows it to kubectl and
// other tools. Readers go by the node record, so a node on 127.0.0.1 or on a
// DNS name (FQDN endpoints are deprecated) works the same without one.
func sliceEndpoint(n *registry.Node) (discoveryv1.AddressType, *discoveryac.EndpointApplyConfiguration, int) {
	host, portStr, _ := net.SplitHostPort(n.Address) // validated
	port, _ := strconv.Atoi(portStr)
	ip, err := netip.ParseAddr(host)
	if err != nil || ip.Zone() != "" {
		return discoveryv1.AddressTypeIPv4, nil, port
	}
	typ := discoveryv1.AddressTypeIPv4
	if ip.Is6() && !ip.Is4In6() {
		typ = discoveryv1.AddressTypeIPv6
	}
	if ip.String() != host || ip.Is4In6() || ip.IsUnspecified() || ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() {
		return typ, nil, port
	}
	return typ, discoveryac.Endpoint().WithAddresses(host).WithConditions(discoveryac.EndpointConditions().WithReady(true)), port
}

// Deregister implements registry.Registry: it deletes the nodes'
// EndpointSlices, then their Leases. Objects already gone are not an error.
func (r *Registry) Deregister(ctx context.Context, s *registry.Service, _ ...registry.DeregisterOption) error {
	if err := registry.ValidateDeregister(s); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if r.isClosed() {
		return registry.ErrClosed
	}
	for _, n := range s.Nodes {
		name := ObjectName(s.Name, n.ID)
		if err := r.client.DiscoveryV1().EndpointSlices(r.ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return apiErr("delete EndpointSlice", name, err)
		}
		if err := r.client.CoordinationV1().Leases(r.ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return apiErr("delete Lease", name, err)
		}
	}
	return nil
}

// apiErr wraps an API error with registry.ErrUnavailable; the API error
// stays reachable (apierrors.IsForbidden, ...).
func apiErr(op, name string, err error) error {
	return fmt.Errorf("%w: kubernetes registry: %s %s: %w", registry.ErrUnavailable, op, name, err)
}
