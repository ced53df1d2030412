package etcd

import (
	"testing"
	"time"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/registrytest"
)

func TestConformance(t *testing.T) {
	prefix := testPrefix(t)
	registrytest.Run(t, registrytest.Config{
		New: func(t *testing.T) (registry.Registry, error) {
			return New(ctxT(t), WithAddrs(shared.Endpoints()...), WithPrefix(prefix), WithLogger(newLogBuf().Logger()))
		},
		TTL: 2 * time.Second,
	})
}
