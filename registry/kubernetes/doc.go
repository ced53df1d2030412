// Package kubernetes is a Registry on the Kubernetes API (client-go
// v0.37.2): it discovers ordinary Kubernetes Services from their
// EndpointSlices, and registers Beacon servers as EndpointSlices of their
// own kept alive by coordination.k8s.io/v1 Leases. Reads come from
// informers (one list, then a watch per kind; no polling).
//
// # Ordinary Services
//
// A Service's nodes are the ready endpoints (condition ready true or unset)
// of the EndpointSlices labelled kubernetes.io/service-name=<service>, in
// the registry's namespace: ID "<pod>@<ip>" (the IP alone without a target
// pod), address "<ip>:<port>", metadata MetaPod, MetaNode and MetaZone when
// known. The port is the one named by the Service's annotation
// beacon-go.github.io/port, else by WithPortName, else the slice's only
// port; a slice with several ports and no choice is skipped (logged). The
// version is the Service's annotation beacon-go.github.io/version, else its
// label app.kubernetes.io/version; annotations
// meta.beacon-go.github.io/<key> become its metadata. Kubernetes has no
// endpoint list for a Service, so nodes carry none.
//
// # Beacon servers
//
// Register writes, per node, an EndpointSlice named ObjectName(service,
// node ID) labelled endpointslice.kubernetes.io/managed-by=beacon (the
// EndpointSlice controller leaves it alone) and
// app.kubernetes.io/managed-by=beacon, with the node's record (name,
// version, metadata, endpoints, node) in the annotation
// beacon-go.github.io/node, and, with a TTL, a Lease of the same name whose
// renewTime each Register moves on. Readers hide a node once its Lease's
// renewTime + leaseDurationSeconds has passed (the clocks of writers and
// readers must agree to well within TTL - register interval, as NTP keeps
// them), and, after WithCollectExpiredAfter (default one minute), delete
// the Lease and the slice of a crashed node. Deregister deletes both. A
// Beacon slice does not carry the kubernetes.io/service-name label, so
// kube-proxy never routes a Kubernetes Service's traffic to it; it shows
// its address as an endpoint where the API accepts one (not for loopback
// or link-local addresses), but readers go by the record. A Beacon service
// and an ordinary Service of the same name are one service to readers.
//
// # Configuration
//
// The client configuration is, in this order: WithConfig; a kubeconfig
// (WithKubeconfig, the address item kubeconfig=<path>, then $KUBECONFIG);
// the pod's service account (rest.InClusterConfig) when
// KUBERNETES_SERVICE_HOST is set; ~/.kube/config. The namespace is
// WithNamespace's (address item namespace=<ns>), else the kubeconfig
// context's, else in a pod the service account's namespace file
// (NamespaceFile), else "default". RBAC (rbac.yaml, proven by
// TestInClusterRBAC): list and watch on services, endpointslices
// (discovery.k8s.io) and leases (coordination.k8s.io) in the namespace;
// create, patch and delete on endpointslices and leases to register.
package kubernetes
