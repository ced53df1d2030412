package kubernetes

import (
	"testing"
	"time"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/registrytest"
)

// TestConformance runs the full (read-write) conformance suite against the
// real kube-apiserver: Register writes EndpointSlices and Leases, reads and
// watches go through informers, TTLs are Leases.
func TestConformance(t *testing.T) {
	ns := namespace(t)
	registrytest.Run(t, registrytest.Config{
		New: func(t *testing.T) (registry.Registry, error) {
			return New(WithConfig(adminCfg), WithNamespace(ns), WithLogger(newLogBuf().Logger()))
		},
		TTL: time.Second, // Lease durations are whole seconds
	})
}
