package registry_test

import (
	"context"
	"errors"
	"testing"

	"github.com/beacon-go/beacon/registry"
)

// The events that report the state when a watch opens do not count
// against MaxQueued, however many: only the changes after them do.
func TestQueuePushInitial(t *testing.T) {
	q := registry.NewQueue(context.Background(), nil)
	defer q.Stop()
	first := make([]*registry.Event, registry.MaxQueued+10)
	for i := range first {
		first[i] = &registry.Event{Type: registry.Create}
	}
	q.PushInitial(first)
	for range registry.MaxQueued - 1 {
		if !q.Push(&registry.Event{Type: registry.Update}) {
			t.Fatal("a change was refused behind the initial events")
		}
	}
	for i := range len(first) + registry.MaxQueued - 1 {
		ev, ok, err := q.TryNext()
		if err != nil || !ok {
			t.Fatalf("event %d: %v %v", i, ok, err)
		}
		if want := registry.Create; i >= len(first) {
			if ev.Type != registry.Update {
				t.Fatalf("event %d is %v, want an update", i, ev.Type)
			}
		} else if ev.Type != want {
			t.Fatalf("event %d is %v, want a create", i, ev.Type)
		}
	}
	if _, ok, err := q.TryNext(); ok || err != nil {
		t.Fatalf("TryNext on an empty queue: %v %v", ok, err)
	}
	// The bound applies as before to changes.
	for range registry.MaxQueued {
		q.Push(&registry.Event{})
	}
	if q.Push(&registry.Event{}) {
		t.Fatal("pushed past MaxQueued")
	}
	if _, _, err := q.TryNext(); !errors.Is(err, registry.ErrOverflow) {
		t.Fatalf("after overflow: %v", err)
	}
	select {
	case <-q.Done():
	default:
		t.Fatal("not stopped after overflow")
	}
}
