package memory_test

import (
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/registry/registrytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConformance(t *testing.T) {
	t.Parallel()
	registrytest.Run(t, registrytest.Config{
		New:         func(*testing.T) (registry.Registry, error) { return memory.New(), nil },
		TTL:         300 * time.Millisecond,
		ExpiryGrace: 500 * time.Millisecond,
	})
}
