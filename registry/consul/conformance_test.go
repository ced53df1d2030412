package consul

import (
	"context"
	"testing"
	"time"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/registrytest"
)

// TestConformance runs the registry contract against the shared consul
// agent. The expiry bound is the issue's: hidden within TTL + 1 s.
func TestConformance(t *testing.T) {
	registrytest.Run(t, registrytest.Config{
		New: func(t *testing.T) (registry.Registry, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return New(ctx, WithAddrs(agent.Addr()), WithLogger(testLogger(t)))
		},
		TTL:         time.Second,
		ExpiryGrace: time.Second,
	})
}

// TestConformanceFeed runs the contract with every watch fed (no blocking
// query of a single service): the shared watch of many services.
func TestConformanceFeed(t *testing.T) {
	registrytest.Run(t, registrytest.Config{
		New: func(t *testing.T) (registry.Registry, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return New(ctx, WithAddrs(agent.Addr()), WithLogger(testLogger(t)), WithServiceQueries(0))
		},
		TTL:         time.Second,
		ExpiryGrace: time.Second,
	})
}
