package registry_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/beacon-go/beacon/registry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"greeter", true}, {"go.micro.srv.greeter", true}, {"a-b_c.d9", true}, {strings.Repeat("a", 63), true},
		{"", false}, {".x", false}, {"x.", false}, {"a..b", false}, {"a b", false}, {"grüß", false},
		{"-x", false}, {"a/b", false}, {strings.Repeat("a", 64), false}, {strings.Repeat("a.", 70) + "a", false},
	}
	for _, tc := range tests {
		err := registry.ValidateName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		var ve *registry.ValidationError
		if err != nil && (!errors.Is(err, registry.ErrInvalid) || !errors.As(err, &ve) || ve.Field != "service.name") {
			t.Errorf("ValidateName(%q) error %v is not a service.name ValidationError", tc.name, err)
		}
	}
}

func TestValidateAddress(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:80": true, "[::1]:8080": true, "host.example:443": true,
		"": false, "127.0.0.1": false, ":80": false, "h:0": false, "h:65536": false, "h:x": false, "a b:1": false,
	} {
		if err := registry.ValidateAddress("a", addr); (err == nil) != ok {
			t.Errorf("ValidateAddress(%q) = %v, want ok=%v", addr, err, ok)
		}
	}
}

func one(id, version, zone string) *registry.Service {
	return &registry.Service{Name: "s", Version: version, Nodes: []*registry.Node{{ID: id, Address: "127.0.0.1:1", Metadata: map[string]string{"zone": zone}}}}
}

func TestNodeSet(t *testing.T) {
	prev := registry.NodeSet{"a": one("a", "1", "x"), "b": one("b", "1", "x")}
	next := registry.NodeSet{"b": one("b", "1", "y"), "c": one("c", "2", "x")}
	var got []string
	for _, ev := range registry.Diff(prev, next, time.Now()) {
		got = append(got, ev.Type.String()+" "+ev.Service.Nodes[0].ID)
	}
	if fmt.Sprint(got) != "[update b create c delete a]" {
		t.Fatalf("Diff = %v", got)
	}
	set := registry.NodeSet{}
	for _, ev := range registry.Diff(prev, next, time.Now()) {
		set.Apply(ev)
	}
	if set.Apply(&registry.Event{Type: registry.Create, Service: one("c", "2", "x")}) {
		t.Fatal("applying an unchanged node reported a change")
	}
	groups := next.Group()
	if len(groups) != 2 || groups[0].Version != "1" || groups[1].Version != "2" || groups[1].Nodes[0].ID != "c" {
		t.Fatalf("Group = %+v", groups)
	}
	flat := registry.Flatten(groups)
	if len(flat) != 2 || !registry.SameNode(flat["b"], next["b"]) {
		t.Fatalf("Flatten(Group) lost data: %v", flat)
	}
}

func TestQueue(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	q := registry.NewQueue(ctx, func() { close(stopped) })
	for i := range 3 {
		q.Push(&registry.Event{Type: registry.Create, Service: one(fmt.Sprint(i), "1", "x")})
	}
	for i := range 3 {
		ev, err := q.Next()
		if err != nil || ev.Service.Nodes[0].ID != fmt.Sprint(i) {
			t.Fatalf("Next %d = %v, %v", i, ev, err)
		}
	}
	cancel()
	<-stopped
	if _, err := q.Next(); !errors.Is(err, registry.ErrWatcherStopped) {
		t.Fatalf("Next after cancel: %v", err)
	}
	if q.Push(&registry.Event{}) {
		t.Fatal("Push after stop accepted an event")
	}
}

func TestQueueOverflow(t *testing.T) {
	q := registry.NewQueue(context.Background(), nil)
	for range registry.MaxQueued + 1 {
		q.Push(&registry.Event{Type: registry.Create, Service: one("a", "1", "x")})
	}
	_, err := q.Next()
	if !errors.Is(err, registry.ErrWatcherStopped) || !errors.Is(err, registry.ErrOverflow) {
		t.Fatalf("Next after overflow = %v, want ErrWatcherStopped and ErrOverflow", err)
	}
}

func TestCopyIsDeep(t *testing.T) {
	s := &registry.Service{Name: "s", Metadata: map[string]string{"k": "v"},
		Endpoints: []*registry.Endpoint{{Name: "E", Request: &registry.Value{Name: "R", Values: []*registry.Value{{Name: "f"}}}}},
		Nodes:     []*registry.Node{{ID: "a", Metadata: map[string]string{"z": "1"}}}}
	c := s.Copy()
	c.Metadata["k"] = "x"
	c.Nodes[0].Metadata["z"] = "2"
	c.Endpoints[0].Request.Values[0].Name = "g"
	if s.Metadata["k"] != "v" || s.Nodes[0].Metadata["z"] != "1" || s.Endpoints[0].Request.Values[0].Name != "f" {
		t.Fatal("Copy shares state with the original")
	}
}
