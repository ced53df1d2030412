package kubernetes_test

import (
	"log"

	"github.com/beacon-go/beacon/registry/kubernetes"
)

// Kubernetes Services (ready EndpointSlice endpoints) and Beacon nodes
// (Beacon-managed EndpointSlices with a Lease as TTL). In a pod, New() with
// no options uses the in-cluster config and the pod's namespace.
func ExampleNew() {
	reg, err := kubernetes.New(kubernetes.WithKubeconfig("/home/me/.kube/config"), kubernetes.WithNamespace("shop"))
	if err != nil {
		log.Fatal(err)
	}
	defer reg.Close()
}
