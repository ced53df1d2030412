package registrytest_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/registry/registrytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// readOnly serves what Seed put in an inner memory registry and refuses
// writes: the smallest read-only backend, to test the read-only suite
// itself (registry/static runs it against a watched file).
type readOnly struct {
	*memory.Registry
	mu   sync.Mutex
	have []*registry.Service
}

func (r *readOnly) Register(context.Context, *registry.Service, ...registry.RegisterOption) error {
	return fmt.Errorf("%w: test backend", registry.ErrReadOnly)
}

func (r *readOnly) Deregister(context.Context, *registry.Service, ...registry.DeregisterOption) error {
	return fmt.Errorf("%w: test backend", registry.ErrReadOnly)
}

func (r *readOnly) seed(services []*registry.Service) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	ctx := context.Background()
	keep := map[string]bool{}
	for _, s := range services {
		for _, n := range s.Nodes {
			keep[s.Name+"\x00"+n.ID] = true
		}
		if err := r.Registry.Register(ctx, s); err != nil {
			return err
		}
	}
	for _, s := range r.have {
		for _, n := range s.Nodes {
			if !keep[s.Name+"\x00"+n.ID] {
				if err := r.Registry.Deregister(ctx, &registry.Service{Name: s.Name, Nodes: []*registry.Node{n}}); err != nil {
					return err
				}
			}
		}
	}
	r.have = services
	return nil
}

func TestReadOnlySuite(t *testing.T) {
	registrytest.Run(t, registrytest.Config{
		New: func(*testing.T) (registry.Registry, error) { return &readOnly{Registry: memory.New()}, nil },
		Seed: func(_ *testing.T, r registry.Registry, services []*registry.Service) error {
			return r.(*readOnly).seed(services)
		},
	})
}
