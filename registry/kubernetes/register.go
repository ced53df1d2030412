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

	coordinationv1 "k8s.io/api/coordination/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

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
	meta := map[string]any{"name": name, "namespace": r.ns, "labels": labels, "annotations": annotations}
	if ttl > 0 {
		secs := int32(min(math.Ceil(ttl.Seconds()), math.MaxInt32))
		lease := map[string]any{
			"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
			"metadata": map[string]any{"name": name, "namespace": r.ns,
				"labels": map[string]string{LabelAppManagedBy: ManagedBy}, "annotations": map[string]string{AnnotationService: one.Name}},
			"spec": map[string]any{"holderIdentity": n.ID, "leaseDurationSeconds": max(secs, 1), "renewTime": metav1.NewMicroTime(r.o.now())},
		}
		var l coordinationv1.Lease
		if err := r.api.apply(ctx, resLeases, name, lease, &l); err != nil {
			return apiErr("apply Lease", name, err)
		}
		annotations[AnnotationLease] = name
		meta["ownerReferences"] = []map[string]any{{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "name": l.Name, "uid": l.UID}}
	}
	addrType, ip, port := sliceEndpoint(n)
	p := map[string]any{"port": port, "protocol": "TCP"}
	if proto := n.Metadata[registry.MetaProtocol]; proto != "" && len(validation.IsDNS1123Label(proto)) == 0 {
		p["name"] = proto
	}
	slice := map[string]any{
		"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": meta,
		"addressType": addrType, "ports": []any{p},
	}
	if ip != "" {
		slice["endpoints"] = []any{map[string]any{"addresses": []string{ip}, "conditions": map[string]any{"ready": true}}}
	}
	if err := r.api.apply(ctx, resEndpointSlices, name, slice, &discoveryv1.EndpointSlice{}); err != nil {
		return apiErr("apply EndpointSlice", name, err)
	}
	return nil
}

// sliceEndpoint returns the address type of a Beacon slice and, when the
// API accepts the address as an endpoint (an IP that is not loopback,
// link-local or unspecified), the endpoint that shows it to kubectl and
// other tools. Readers go by the node record, so a node on 127.0.0.1 or on a
// DNS name (FQDN endpoints are deprecated) works the same without one.
func sliceEndpoint(n *registry.Node) (typ discoveryv1.AddressType, ip string, port int) {
	host, portStr, _ := net.SplitHostPort(n.Address) // validated
	port, _ = strconv.Atoi(portStr)
	addr, err := netip.ParseAddr(host)
	if err != nil || addr.Zone() != "" {
		return discoveryv1.AddressTypeIPv4, "", port
	}
	typ = discoveryv1.AddressTypeIPv4
	if addr.Is6() && !addr.Is4In6() {
		typ = discoveryv1.AddressTypeIPv6
	}
	if addr.String() != host || addr.Is4In6() || addr.IsUnspecified() || addr.IsLoopback() || addr.IsLinkLocalUnicast() || addr.IsLinkLocalMulticast() {
		return typ, "", port
	}
	return typ, host, port
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
		if err := r.api.delete(ctx, resEndpointSlices, name, nil); err != nil && !apierrors.IsNotFound(err) {
			return apiErr("delete EndpointSlice", name, err)
		}
		if err := r.api.delete(ctx, resLeases, name, nil); err != nil && !apierrors.IsNotFound(err) {
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
