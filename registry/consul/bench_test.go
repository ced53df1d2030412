package consul

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/beacon-go/beacon/registry"
)

// benchEntries returns n health entries of Beacon records as consul returns
// them (conformance-sized endpoints and metadata).
func benchEntries(b *testing.B, n int) []*entry {
	var c codec
	entries := make([]*entry, n)
	for i := range n {
		s := service("bench", "1.0.0", i, 1)
		meta, err := c.encodeMeta(s, s.Nodes[0])
		if err != nil {
			b.Fatal(err)
		}
		host, port, _ := splitAddr(s.Nodes[0].Address)
		entries[i] = &entry{
			Node:    &entryNode{Node: "agent", Address: "127.0.0.1"},
			Service: &entryService{ID: s.Nodes[0].ID, Service: "bench", Address: host, Port: port, Meta: meta, ModifyIndex: uint64(i + 1)},
			Checks:  []entryCheck{{Status: api.HealthPassing}, {Status: api.HealthPassing}},
		}
	}
	return entries
}

func BenchmarkEncodeMeta(b *testing.B) {
	var c codec
	s := service("bench", "1.0.0", 0, 1)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.encodeMeta(s, s.Nodes[0]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeEntry(b *testing.B) {
	e := benchEntries(b, 1)[0]
	var c codec
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.decodeEntry("bench", e); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHealthAnswer200 is the client-side cost of one blocking-query
// answer for a service of 200 nodes: JSON decoding (as consul/api does) and
// the NodeSet.
func BenchmarkHealthAnswer200(b *testing.B) {
	entries := benchEntries(b, 200)
	body, err := json.Marshal(entries)
	if err != nil {
		b.Fatal(err)
	}
	r := &Registry{log: slog.New(slog.DiscardHandler), warned: map[string]struct{}{}}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		var out []*entry
		if err := json.Unmarshal(body, &out); err != nil {
			b.Fatal(err)
		}
		if set := r.nodeSet(context.Background(), "bench", out, nil); len(set) != 200 {
			b.Fatal(len(set))
		}
	}
}

// BenchmarkHealthAnswer200Cached is BenchmarkHealthAnswer200 for a watch:
// one node changed since the previous answer.
func BenchmarkHealthAnswer200Cached(b *testing.B) {
	entries := benchEntries(b, 200)
	body, err := json.Marshal(entries)
	if err != nil {
		b.Fatal(err)
	}
	r := &Registry{log: slog.New(slog.DiscardHandler), warned: map[string]struct{}{}}
	var cache decodeCache
	r.nodeSet(context.Background(), "bench", entries, &cache)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		var out []*entry
		if err := json.Unmarshal(body, &out); err != nil {
			b.Fatal(err)
		}
		out[0].Service.Meta["version"] = fmt.Sprint(b.N)
		if set := r.nodeSet(context.Background(), "bench", out, &cache); len(set) != 200 {
			b.Fatal(len(set))
		}
	}
}

// BenchmarkHeartbeat is one Register of an unchanged node (a TTL update)
// against the shared agent.
func BenchmarkHeartbeat(b *testing.B) {
	r := newRegistry(b)
	s := service(fmt.Sprintf("bench-heartbeat-%d", time.Now().UnixNano()%1e6), "1", 0, 1)
	if err := r.Register(ctxT(b), s, registry.RegisterTTL(time.Minute)); err != nil {
		b.Fatal(err)
	}
	defer r.Deregister(ctxT(b), s)
	b.ReportAllocs()
	for b.Loop() {
		if err := r.Register(ctxT(b), s, registry.RegisterTTL(time.Minute)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGetService reads a service of 10 nodes from the shared agent.
func BenchmarkGetService(b *testing.B) {
	r := newRegistry(b)
	s := service(fmt.Sprintf("bench-get-%d", time.Now().UnixNano()%1e6), "1", 0, 10)
	if err := r.Register(ctxT(b), s, registry.RegisterTTL(time.Minute)); err != nil {
		b.Fatal(err)
	}
	defer r.Deregister(ctxT(b), s)
	wantNodes(b, r, 5*time.Second, s.Name, nodeIDs([]*registry.Service{s})...)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.GetService(ctxT(b), s.Name); err != nil {
			b.Fatal(err)
		}
	}
}
