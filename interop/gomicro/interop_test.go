package gomicro

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/beacon-go/beacon/internal/netns"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/mdns"
	"github.com/beacon-go/beacon/registry/registrytest"
)

func lanAddr(lab *netns.Lab, host int) string { return lab.IP(host).String() + ":8080" }

// TestGoMicroSeesBeacon: go-micro v5.30.0's mdns registry, in host 3,
// sees Beacon nodes of hosts 0-2: GetService and Watch find them with
// their address and node metadata, ListServices their service; a clean stop is a delete event; a node
// whose heartbeat stopped is withdrawn by its registry when its TTL runs
// out, a delete event too; a SIGKILLed node is gone from GetService at once
// (go-micro's watcher has no expiry: it never reports that one). A node
// that signs its records is read as well (go-micro ignores the signature).
func TestGoMicroSeesBeacon(t *testing.T) {
	const svc = "bcn"
	lab := netns.RequireLab(t, 4)
	gm := start(t, lab, 3, "gomicro-observer", svc, "")

	// Register -> create event, GetService.
	a := start(t, lab, 0, "beacon-node", svc, "bcn-a", envTTL+"=3s")
	ev := gm.event(t, "create", "bcn-a", 10*time.Second)
	n := ev.Nodes[0]
	if n.Address != lanAddr(lab, 0) || ev.Version != "1.0.0" || len(n.Metadata) != 1 || n.Metadata["zone"] != "a" {
		t.Errorf("go-micro's watcher reads %+v, want address %s, version 1.0.0, the node's metadata {zone: a}", ev, lanAddr(lab, 0))
	}
	registrytest.Eventually(t, 10*time.Second, func() error {
		got := gm.get(t)
		if len(got.Nodes) != 1 || got.Nodes[0].ID != "bcn-a" || got.Nodes[0].Address != lanAddr(lab, 0) || got.Nodes[0].Metadata["zone"] != "a" {
			return fmt.Errorf("go-micro's GetService = %+v", got)
		}
		return nil
	})

	registrytest.Eventually(t, 10*time.Second, func() error {
		if names := gm.list(t); !slices.Contains(names, svc) {
			return fmt.Errorf("go-micro's ListServices = %v, want %s", names, svc)
		}
		return nil
	})

	// Clean stop -> delete event, GetService empty.
	a.send(t, "stop")
	stopped := a.expectTime(t, "STOP ")
	del := gm.event(t, "delete", "bcn-a", 5*time.Second)
	t.Logf("Beacon node stopped -> go-micro delete event after %v", time.Unix(0, del.At).Sub(stopped))
	if got := gm.get(t); len(got.Nodes) != 0 {
		t.Errorf("go-micro's GetService after the stop = %+v", got)
	}

	// Heartbeat stops -> the node's registry withdraws it at its TTL ->
	// delete event.
	b := start(t, lab, 1, "beacon-node", svc, "bcn-b", envTTL+"=2s")
	gm.event(t, "create", "bcn-b", 10*time.Second)
	b.send(t, "hang")
	hung := b.expectTime(t, "HUNG ")
	del = gm.event(t, "delete", "bcn-b", 10*time.Second)
	took := time.Unix(0, del.At).Sub(hung)
	t.Logf("Beacon node's heartbeat stopped -> go-micro delete event after %v (TTL 2s, last heartbeat up to TTL/3 before)", took)
	if took > 3*time.Second {
		t.Errorf("withdrawal took %v with a TTL of 2s", took)
	}

	// SIGKILL -> gone from go-micro's GetService at once.
	c := start(t, lab, 2, "beacon-node", svc, "bcn-c", envKey+"=a key of at least sixteen bytes")
	ev = gm.event(t, "create", "bcn-c", 10*time.Second)
	if ev.Nodes[0].Address != lanAddr(lab, 2) {
		t.Errorf("go-micro reads the signed node as %+v", ev)
	}
	if got := gm.get(t); len(got.Nodes) != 1 || got.Nodes[0].ID != "bcn-c" {
		t.Errorf("go-micro's GetService of the signed node = %+v", got)
	}
	c.kill(t)
	if got := gm.get(t); len(got.Nodes) != 0 {
		t.Errorf("go-micro's GetService after SIGKILL = %+v", got)
	}
}

// TestBeaconSeesGoMicro: Beacon's mdns registry, in host 2, sees go-micro
// nodes of hosts 0 and 1: watch and GetService with address, version and
// node metadata; a clean stop (go-micro's goodbye: SRV, A, TXT at TTL 0,
// no PTR) is a Delete at once; a SIGKILLed go-micro node is dropped within
// the crash bound. A Registry with a key does not see go-micro nodes.
func TestBeaconSeesGoMicro(t *testing.T) {
	const svc = "gmsvc"
	lab := netns.RequireLab(t, 3)
	var obs, keyed *mdns.Registry
	err := lab.Do(2, func() error {
		log := slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
		var err error
		if obs, err = mdns.New(context.Background(), mdns.WithInterfaceName(netns.LabIface), mdns.WithLogger(log)); err != nil {
			return err
		}
		keyed, err = mdns.New(context.Background(), mdns.WithInterfaceName(netns.LabIface), mdns.WithLogger(log),
			mdns.WithKey([]byte("a key of at least sixteen bytes")))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Close()
	defer keyed.Close()
	ev := registrytest.Watch(t, obs, registry.WatchService(svc))

	x := start(t, lab, 0, "gomicro-node", svc, "gm-x")
	e := ev.Expect(t, 10*time.Second, registry.Create, "gm-x")
	n := e.Service.Nodes[0]
	if n.Address != lanAddr(lab, 0) || e.Service.Version != "2.0.0" || n.Metadata["zone"] != "gm" {
		t.Errorf("Beacon reads the go-micro node as %+v %+v", e.Service, n)
	}
	got, err := obs.GetService(ctxT(t), svc)
	if err != nil || len(got) != 1 || len(got[0].Nodes) != 1 || got[0].Nodes[0].Address != lanAddr(lab, 0) {
		t.Fatalf("GetService = %v, %v", got, err)
	}
	if got, err := keyed.GetService(ctxT(t), svc); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("a Registry with a key sees the unsigned go-micro node: %v, %v", got, err)
	}

	// Clean stop: go-micro's goodbye is a Delete at once (it used to take
	// missed query rounds: 2.8 s).
	x.send(t, "stop")
	stopped := x.expectTime(t, "STOP ")
	d := ev.Expect(t, 5*time.Second, registry.Delete, "gm-x")
	took := d.Timestamp.Sub(stopped)
	t.Logf("go-micro node stopped -> Beacon Delete after %v", took)
	if took > time.Second {
		t.Errorf("go-micro's goodbye took %v to count", took)
	}

	// SIGKILL: dropped after missed query rounds.
	y := start(t, lab, 1, "gomicro-node", svc, "gm-y")
	ev.Expect(t, 10*time.Second, registry.Create, "gm-y")
	killed := time.Now()
	y.kill(t)
	bound := time.Duration(mdns.DefaultMissedQueries)*mdns.DefaultQueryInterval*11/10 + mdns.DefaultQueryInterval/2
	d = ev.Expect(t, bound+2*time.Second, registry.Delete, "gm-y")
	t.Logf("go-micro node SIGKILLed -> Beacon Delete after %v (bound %v)", d.Timestamp.Sub(killed), bound)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}
