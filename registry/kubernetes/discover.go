package kubernetes

import (
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/beacon-go/beacon/registry"
)

// serviceInfo reads a Kubernetes Service's version and metadata.
func serviceInfo(svc *corev1.Service) (version string, md map[string]string) {
	if svc == nil {
		return "", nil
	}
	version = svc.Labels[LabelVersion]
	if v, ok := svc.Annotations[AnnotationVersion]; ok {
		version = v
	}
	for k, v := range svc.Annotations {
		if key, ok := strings.CutPrefix(k, MetadataPrefix); ok && key != "" {
			if md == nil {
				md = map[string]string{}
			}
			md[key] = v
		}
	}
	return version, md
}

// pickPort chooses the port of an ordinary Service's slice: the one named
// want, else the only one. A name from the Service's annotation (strict)
// must be there; the option's name falls back to a slice's only port.
func pickPort(ports []discoveryv1.EndpointPort, want string, strict bool) (int, error) {
	var names []string
	for _, p := range ports {
		name := ""
		if p.Name != nil {
			name = *p.Name
		}
		names = append(names, strconv.Quote(name))
		if want != "" && name == want && p.Port != nil {
			return int(*p.Port), nil
		}
	}
	switch {
	case want != "" && (strict || len(ports) != 1):
		return 0, fmt.Errorf("no port named %q (ports %s)", want, strings.Join(names, ", "))
	case len(ports) == 0:
		return 0, fmt.Errorf("no ports")
	case len(ports) == 1 && ports[0].Port != nil:
		return int(*ports[0].Port), nil
	case len(ports) == 1:
		return 0, fmt.Errorf("its port has no number")
	}
	return 0, fmt.Errorf("ports %s: choose one with the Service annotation %s or the registry option (kubernetes.WithPortName, --registry_address port=<name>)",
		strings.Join(names, ", "), AnnotationPort)
}

// ordinaryNodes adds the ready endpoints of an ordinary Service's slice to
// set: ID "<pod>@<ip>" (or the IP without a pod), address ip:port.
func (r *Registry) ordinaryNodes(name string, svc *corev1.Service, s *discoveryv1.EndpointSlice, set registry.NodeSet) {
	version, md := serviceInfo(svc)
	if err := registry.ValidateMetadata("service.metadata", md); err != nil {
		r.warnLocked("meta/"+name, "kubernetes registry: ignoring the Service's metadata annotations", "service", name, "err", err)
		md = nil
	}
	want, strict := r.o.portName, false
	if svc != nil && svc.Annotations[AnnotationPort] != "" {
		want, strict = svc.Annotations[AnnotationPort], true
	}
	port, err := pickPort(s.Ports, want, strict)
	if err != nil {
		r.warnLocked("port/"+s.Name, "kubernetes registry: skipping an EndpointSlice", "service", name, "endpointslice", s.Name, "err", err.Error())
		return
	}
	delete(r.warned, "port/"+s.Name)
	for _, ep := range s.Endpoints {
		if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
			continue // nil means ready, as the API documents
		}
		if len(ep.Addresses) == 0 {
			continue
		}
		ip := ep.Addresses[0]
		id := ip
		nmd := map[string]string{}
		if ep.TargetRef != nil && ep.TargetRef.Name != "" {
			id = ep.TargetRef.Name + "@" + ip
			if ep.TargetRef.Kind == "Pod" {
				nmd[MetaPod] = ep.TargetRef.Name
			}
		}
		if ep.Zone != nil && *ep.Zone != "" {
			nmd[MetaZone] = *ep.Zone
		}
		if ep.NodeName != nil && *ep.NodeName != "" {
			nmd[MetaNode] = *ep.NodeName
		}
		one := &registry.Service{Name: name, Version: version, Metadata: md,
			Nodes: []*registry.Node{{ID: id, Address: net.JoinHostPort(ip, strconv.Itoa(port)), Metadata: nmd}}}
		if err := registry.Validate(one); err != nil {
			r.warnLocked("node/"+s.Name+"/"+id, "kubernetes registry: skipping an endpoint", "service", name, "endpointslice", s.Name, "err", err)
			continue
		}
		if _, dup := set[id]; dup {
			continue // the same endpoint in two slices (during a slice split)
		}
		set[id] = one
	}
}

// recordLocked decodes (once per resource version) a Beacon slice's node
// record; nil when it is malformed (logged once).
func (r *Registry) recordLocked(s *discoveryv1.EndpointSlice) *registry.Service {
	d, ok := r.records[s.UID]
	if !ok || d.rv != s.ResourceVersion {
		d = decoded{rv: s.ResourceVersion}
		var one registry.Service
		err := json.Unmarshal([]byte(s.Annotations[AnnotationNode]), &one)
		if err == nil && len(one.Nodes) != 1 {
			err = fmt.Errorf("%d nodes, want 1", len(one.Nodes))
		}
		if err == nil {
			err = registry.Validate(&one)
		}
		if err != nil {
			d.err = fmt.Errorf("%w: annotation %s: %w", registry.ErrMalformed, AnnotationNode, err)
		} else {
			d.svc = &one
		}
		r.records[s.UID] = d
	}
	if d.err != nil {
		r.warnLocked("record/"+s.Name, "kubernetes registry: ignoring a Beacon EndpointSlice", "endpointslice", s.Name, "err", d.err)
		return nil
	}
	delete(r.warned, "record/"+s.Name)
	return d.svc
}

// noteGarbage records a Beacon slice whose Lease expired at exp (zero: the
// Lease is missing) for collection after the collection delay.
func (r *Registry) noteGarbage(into map[string]*garbage, service string, s *discoveryv1.EndpointSlice, l *coordinationv1.Lease, node string, exp, now time.Time) {
	if r.o.collectAfter <= 0 || r.tried[s.UID] == s.ResourceVersion {
		return
	}
	g := &garbage{slice: s.Name, sliceUID: s.UID, sliceRV: s.ResourceVersion, lease: s.Annotations[AnnotationLease], service: service, node: node}
	if l != nil {
		g.hasLease, g.leaseUID, g.leaseRV = true, l.UID, l.ResourceVersion
		g.cause = "lease expired at " + exp.Format(time.RFC3339)
	} else {
		g.cause = "lease missing"
	}
	g.at = exp.Add(r.o.collectAfter)
	if exp.IsZero() {
		// The Lease is gone or incomplete: count from when this registry
		// first saw it so.
		g.at = now.Add(r.o.collectAfter)
		if prev := r.garbage[service][s.Name]; prev != nil && prev.sliceRV == g.sliceRV && prev.leaseRV == g.leaseRV {
			g.at = prev.at
		}
	}
	into[s.Name] = g
}

// dueGarbageLocked takes the garbage due at now out of the table and marks
// it tried.
func (r *Registry) dueGarbageLocked(now time.Time) []*garbage {
	var due []*garbage
	for svc, gs := range r.garbage {
		for name, g := range gs {
			if !g.at.After(now) {
				due = append(due, g)
				r.tried[g.sliceUID] = g.sliceRV
				delete(gs, name)
			}
		}
		if len(gs) == 0 {
			delete(r.garbage, svc)
		}
	}
	slices.SortFunc(due, func(a, b *garbage) int { return strings.Compare(a.slice, b.slice) })
	return due
}
