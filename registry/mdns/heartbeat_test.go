package mdns

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/beacon-go/beacon/internal/netns"
	"github.com/beacon-go/beacon/registry"
)

// TestHeartbeatKeepsRecords checks the bookkeeping behind "a heartbeat
// sends nothing and changes nothing": the node's records are the same, no
// announcement is scheduled; changed data re-announces; a new TTL only
// changes the answers' TTL.
func TestHeartbeatKeepsRecords(t *testing.T) {
	netns.Require(t)
	r, err := New(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx := context.Background()
	s := testService("hb-1", "127.0.0.1:8080")
	key := nodeKey(s.Name, "hb-1")
	state := func() (*localNode, localNode) {
		r.mu.Lock()
		defer r.mu.Unlock()
		ln := r.nodes[key]
		if ln == nil {
			t.Fatal("node not registered")
		}
		return ln, *ln
	}
	if err := r.Register(ctx, s, registry.RegisterTTL(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	ln0, st0 := state()
	if st0.annLeft != announcements-1 {
		t.Fatalf("after register %d announcements left, want %d", st0.annLeft, announcements-1)
	}
	if ttl := st0.rec.ttl; ttl != 10 {
		t.Fatalf("record TTL %d, want 10", ttl)
	}
	// Pretend the announcements are done, then heartbeat.
	r.mu.Lock()
	ln0.annLeft = 0
	r.mu.Unlock()
	if err := r.Register(ctx, s, registry.RegisterTTL(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	ln1, st1 := state()
	if ln1 != ln0 || st1.rec != st0.rec || st1.annLeft != 0 || !st1.expires.After(st0.expires) {
		t.Fatalf("heartbeat changed the node: records %p -> %p, announcements left %d, expiry %v -> %v",
			st0.rec, st1.rec, st1.annLeft, st0.expires, st1.expires)
	}
	// Same data, new TTL: answers carry it, still no announcement.
	if err := r.Register(ctx, s, registry.RegisterTTL(20*time.Second)); err != nil {
		t.Fatal(err)
	}
	ln2, st2 := state()
	if ln2 != ln0 || st2.annLeft != 0 || st2.rec.ttl != 20 {
		t.Fatalf("TTL change: announcements left %d, TTL %d", st2.annLeft, st2.rec.ttl)
	}
	// Changed data: announced again.
	s.Nodes[0].Metadata["zone"] = "z2"
	if err := r.Register(ctx, s, registry.RegisterTTL(20*time.Second)); err != nil {
		t.Fatal(err)
	}
	ln3, st3 := state()
	if ln3 != ln0 || st3.annLeft != announcements-1 || st3.svc.Nodes[0].Metadata["zone"] != "z2" {
		t.Fatalf("update: announcements left %d", st3.annLeft)
	}
}

func TestRecordTooLarge(t *testing.T) {
	netns.Require(t)
	r, err := New(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	s := testService("big-1", "127.0.0.1:8080")
	// Valid for registry.Validate, too big for one mDNS record: random
	// metadata that zlib cannot shrink.
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := range 40 {
		b := make([]byte, 400)
		for j := range b {
			b[j] = byte('a' + rnd.IntN(26))
		}
		s.Metadata[fmt.Sprint("k", i)] = string(b)
	}
	err = r.Register(context.Background(), s)
	var tl *RecordTooLargeError
	var ve *registry.ValidationError
	if !errors.As(err, &tl) || !errors.Is(err, registry.ErrInvalid) || !errors.As(err, &ve) {
		t.Fatalf("Register(huge) = %v, want a *RecordTooLargeError matching ErrInvalid", err)
	}
	if tl.Size <= MaxRecordSize || tl.Max != MaxRecordSize || tl.Node != "big-1" {
		t.Errorf("error fields %+v", tl)
	}
	t.Logf("%v", err)
	r.mu.Lock()
	n := len(r.nodes)
	r.mu.Unlock()
	if n != 0 {
		t.Errorf("a rejected registration left %d nodes", n)
	}
}

// TestOneLoopPerService: watchers of one service share one query loop,
// which stops with the last of them.
func TestOneLoopPerService(t *testing.T) {
	netns.Require(t)
	r, err := New(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	loops := func() int {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.loops)
	}
	w1, err := r.Watch(context.Background(), registry.WatchService("shared"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w2, err := r.Watch(ctx, registry.WatchService("shared"))
	if err != nil {
		t.Fatal(err)
	}
	w3, err := r.Watch(context.Background()) // all services: a loop of its own
	if err != nil {
		t.Fatal(err)
	}
	if n := loops(); n != 2 {
		t.Fatalf("%d loops for two watchers of one service and one of all, want 2", n)
	}
	cancel()
	if _, err := w2.Next(); !errors.Is(err, registry.ErrWatcherStopped) {
		t.Fatalf("Next after cancel = %v", err)
	}
	if n := loops(); n != 2 {
		t.Fatalf("%d loops with one watcher left, want 2", n)
	}
	w1.Stop()
	w3.Stop()
	if n := loops(); n != 0 {
		t.Fatalf("%d loops after the last watcher stopped, want 0", n)
	}
}
