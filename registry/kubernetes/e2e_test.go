package kubernetes

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/examples/greeter"
	"github.com/beacon-go/beacon/selector"
	"github.com/beacon-go/beacon/server"
)

// TestServersAndClient: two Beacon servers register through the registry
// (each with a registry of its own, as two pods would), their heartbeats
// keep Leases alive, a client calls the service by name through the
// selector's watch; after one stops, every call goes to the other.
func TestServersAndClient(t *testing.T) {
	ns := namespace(t)
	quiet := slog.New(slog.DiscardHandler)
	start := func(node string) *server.Server {
		reg, _ := newRegistry(t, ns)
		s, err := server.New(server.Name("k8s-greeter"), server.Version("1.0.0"), server.ID(node), server.Address("127.0.0.1:0"),
			server.Registry(reg), server.RegisterTTL(2*time.Second), server.RegisterInterval(500*time.Millisecond),
			server.DrainGrace(300*time.Millisecond), server.Logger(quiet))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Handle(&greeter.Greeter{Node: node}); err != nil {
			t.Fatal(err)
		}
		if err := s.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Stop(context.Background()) })
		return s
	}
	a, b := start("a"), start("b")
	reg, _ := newRegistry(t, ns)
	sel := selector.New(reg, selector.WithStrategy(selector.RoundRobin()), selector.WithLogger(quiet))
	defer sel.Close()
	c := client.New(sel, client.Logger(quiet))
	defer c.Close()
	call := func() string {
		t.Helper()
		rsp := new(greeter.HelloRsp)
		if err := c.Call(ctxT(t), "k8s-greeter", "Greeter.Hello", &greeter.HelloReq{Name: "k8s"}, rsp); err != nil {
			t.Fatal(err)
		}
		return rsp.Node
	}
	wantNodes(t, reg, "k8s-greeter", "a="+a.Addr().String(), "b="+b.Addr().String())
	seen := map[string]int{}
	deadline := time.Now().Add(wait)
	for len(seen) < 2 && time.Now().Before(deadline) {
		seen[call()]++
	}
	if len(seen) != 2 {
		t.Fatalf("calls reached %v, want both nodes", seen)
	}
	// Heartbeats keep both through several TTLs.
	time.Sleep(3 * time.Second)
	if got, err := reg.GetService(ctxT(t), "k8s-greeter"); err != nil || len(got[0].Nodes) != 2 {
		t.Fatalf("after 1.5 TTL: %v, %v", got, err)
	}
	if err := a.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if n := call(); n != "b" {
			t.Fatalf("a call reached %s after it stopped", n)
		}
	}
}
