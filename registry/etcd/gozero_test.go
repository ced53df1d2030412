package etcd

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/registrytest"
)

// goZeroPublish writes a key the way go-zero's discov.Publisher does
// (core/discov/publisher.go, register): a lease of ttl seconds, then
// Put("<key>/<lease ID in decimal>", "ip:port", WithLease). It returns the
// lease and the node ID Beacon reads.
func goZeroPublish(t *testing.T, cli *clientv3.Client, key, addr string, ttl int64) (clientv3.LeaseID, string) {
	t.Helper()
	lease, err := cli.Grant(ctxT(t), ttl)
	if err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("%d", int64(lease.ID))
	if _, err := cli.Put(ctxT(t), key+"/"+id, addr, clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	return lease.ID, id
}

// goZeroTestKey returns a go-zero key of the test's own: a path, read as
// the service name "name" through "name=key".
func goZeroTestKey(t *testing.T) string {
	return fmt.Sprintf("/gozero-test/%s-%08x/greeter.rpc", strings.ReplaceAll(t.Name(), "/", "-"), rand.Uint32())
}

func TestGoZeroOptions(t *testing.T) {
	var o options
	WithGoZero("a.rpc", " b = /x/b.rpc , ", "c=c")(&o)
	want := []goZeroKey{{"a.rpc", "a.rpc"}, {"b", "/x/b.rpc"}, {"c", "c"}}
	if !reflect.DeepEqual(o.gozero, want) {
		t.Fatalf("WithGoZero parsed %v, want %v", o.gozero, want)
	}
	for _, tc := range []struct {
		opts []Option
		want string
	}{
		{[]Option{WithGoZero("/apps/greeter.rpc")}, "character '/' not allowed"},
		{[]Option{WithGoZero("x=")}, "empty"},
		{[]Option{WithGoZero("x=k/")}, "ends with '/'"},
		{[]Option{WithGoZero("a=k", "b=k")}, "overlaps go-zero key"},
		{[]Option{WithGoZero("a=k", "b=k/sub")}, "overlaps go-zero key"},
		{[]Option{WithGoZero("a=/micro/registry/a")}, "overlaps the registry prefix"},
		{[]Option{WithGoZero("a=/micro")}, "overlaps the registry prefix"},
		{[]Option{WithGoZero("a=/beacon/a"), WithPrefix("/beacon")}, "overlaps the registry prefix"},
	} {
		// Checked before connecting: no etcd needed.
		_, err := New(context.Background(), append(tc.opts, WithAddrs("127.0.0.1:1"))...)
		if !errors.Is(err, registry.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%v): %v, want ErrInvalid with %q", tc.opts, err, tc.want)
		}
	}
}

func TestDecodeGoZero(t *testing.T) {
	g := goZeroKey{name: "greeter.rpc", key: "greeter.rpc"}
	s, err := decodeGoZero(g, "greeter.rpc/7587890123456789", []byte("127.0.0.1:8080"))
	if err != nil {
		t.Fatal(err)
	}
	want := &registry.Service{Name: "greeter.rpc", Nodes: []*registry.Node{{ID: "7587890123456789", Address: "127.0.0.1:8080",
		Metadata: map[string]string{"protocol": "grpc", "gozero_key": "greeter.rpc/7587890123456789"}}}}
	if !reflect.DeepEqual(s, want) {
		t.Fatalf("decoded %+v, want %+v", s.Nodes[0], want.Nodes[0])
	}
	for _, tc := range []struct{ key, value string }{
		{"greeter.rpc/1", ""},
		{"greeter.rpc/1", "127.0.0.1"},
		{"greeter.rpc/1", "127.0.0.1:0"},
		{"greeter.rpc/1", `{"name":"greeter.rpc"}`},
		{"greeter.rpc/1", strings.Repeat("1", 2000) + ":80"},
		{"greeter.rpc/", "127.0.0.1:80"},
		{"greeter.rpc/1/2", "127.0.0.1:80"},
		{"greeter.rpc/a b", "127.0.0.1:80"},
	} {
		if s, err := decodeGoZero(g, tc.key, []byte(tc.value)); !errors.Is(err, registry.ErrMalformed) {
			t.Errorf("decodeGoZero(%q, %q) = %v, %v; want ErrMalformed", tc.key, trunc(tc.value), s, err)
		}
	}
}

// go-zero publishers' keys, written as go-zero writes them, are nodes of a
// Beacon service: GetService, ListServices and watches (of the service and
// of all) see them come with their Put and go with their lease (revoked, as
// a stopped publisher does, or expired, as after a crash). Beacon records of
// the same name are merged in; malformed go-zero keys are skipped.
func TestGoZeroServices(t *testing.T) {
	prefix := testPrefix(t)
	key := goZeroTestKey(t)
	lb := newLogBuf()
	r := newReg(t, lb, WithPrefix(prefix), WithGoZero("greeter.rpc="+key))
	cli := rawClient(t)

	if _, err := r.GetService(ctxT(t), "greeter.rpc"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("GetService before any publisher: %v, want ErrNotFound", err)
	}
	one := watchState(t, r, registry.WatchService("greeter.rpc"))
	all := watchState(t, r)
	seq := registrytest.Watch(t, r, registry.WatchService("greeter.rpc"))

	lease1, id1 := goZeroPublish(t, cli, key, "127.0.0.1:40001", 30)
	_, id2 := goZeroPublish(t, cli, key, "127.0.0.1:40002", 30)
	// Keys go-zero's publisher never writes are skipped.
	for k, v := range map[string]string{key + "/3": "not an address", key + "/4/5": "127.0.0.1:1", key + "/": "127.0.0.1:1"} {
		if _, err := cli.Put(ctxT(t), k, v); err != nil {
			t.Fatal(err)
		}
	}
	// A Beacon server of the same name.
	beacon := svc("greeter.rpc", "1.0.0", "b1")
	beacon.Nodes[0].Metadata[registry.MetaProtocol] = registry.ProtocolGRPC
	if err := r.Register(ctxT(t), beacon); err != nil {
		t.Fatal(err)
	}

	for _, st := range []*state{one, all} {
		st.waitFor(t, 5*time.Second, "the two publishers and b1", hasIDs(id1, id2, "b1"))
	}
	got, err := r.GetService(ctxT(t), "greeter.rpc")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Version != "" || got[1].Version != "1.0.0" {
		t.Fatalf("GetService = %s, want the go-zero nodes (no version) and b1@1.0.0", describe(got))
	}
	nodes := map[string]*registry.Node{}
	for _, n := range got[0].Nodes {
		nodes[n.ID] = n
	}
	for id, addr := range map[string]string{id1: "127.0.0.1:40001", id2: "127.0.0.1:40002"} {
		n := nodes[id]
		if n == nil || n.Address != addr || n.Metadata[registry.MetaProtocol] != registry.ProtocolGRPC || n.Metadata[MetaGoZeroKey] != key+"/"+id {
			t.Errorf("node %s = %+v, want address %s, protocol grpc, gozero_key %s/%s", id, n, addr, key, id)
		}
	}
	list, err := r.ListServices(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if d := describe(list); d != fmt.Sprintf("greeter.rpc@([%s %s]) greeter.rpc@1.0.0([b1])", min(id1, id2), max(id1, id2)) {
		t.Errorf("ListServices = %s", d)
	}
	if !lb.Has("malformed", key+"/3") || !lb.Has("malformed", key+"/4/5") {
		t.Error("malformed go-zero keys were not logged")
	}

	// Deregister never deletes go-zero keys.
	if err := r.Deregister(ctxT(t), &registry.Service{Name: "greeter.rpc", Nodes: []*registry.Node{{ID: id1}}}); err != nil {
		t.Fatal(err)
	}
	if resp := stored(t, cli, key+"/"+id1); len(resp.Kvs) != 1 {
		t.Fatal("Deregister deleted a go-zero key")
	}

	// The publisher re-puts its key after someone deleted it: Delete, then
	// Create.
	if _, err := cli.Delete(ctxT(t), key+"/"+id1); err != nil {
		t.Fatal(err)
	}
	seq.Expect(t, 5*time.Second, registry.Delete, id1)
	if _, err := cli.Put(ctxT(t), key+"/"+id1, "127.0.0.1:40001", clientv3.WithLease(lease1)); err != nil {
		t.Fatal(err)
	}
	seq.Expect(t, 5*time.Second, registry.Create, id1)
	// The same value put again (no event), then a new address (Update).
	for _, v := range []string{"127.0.0.1:40001", "127.0.0.1:40011"} {
		if _, err := cli.Put(ctxT(t), key+"/"+id1, v, clientv3.WithLease(lease1)); err != nil {
			t.Fatal(err)
		}
	}
	if ev := seq.Expect(t, 5*time.Second, registry.Update, id1); ev.Service.Nodes[0].Address != "127.0.0.1:40011" {
		t.Errorf("Update carries %s", ev.Service.Nodes[0].Address)
	}

	// A stopped publisher revokes its lease; a crashed one's lease (here
	// 2 s; go-zero's is 10 s) expires.
	start := time.Now()
	if _, err := cli.Revoke(ctxT(t), lease1); err != nil {
		t.Fatal(err)
	}
	seq.Expect(t, 2*time.Second, registry.Delete, id1)
	t.Logf("revoked lease: Delete seen %v after the revoke", time.Since(start).Round(time.Millisecond))
	crashedLease, _ := cli.Grant(ctxT(t), 2)
	if crashedLease == nil {
		t.Fatal("grant failed")
	}
	start = time.Now()
	if _, err := cli.Put(ctxT(t), key+"/"+id2, "127.0.0.1:40002", clientv3.WithLease(crashedLease.ID)); err != nil {
		t.Fatal(err)
	}
	seq.Expect(t, 6*time.Second, registry.Delete, id2)
	t.Logf("expiring lease (2 s): Delete seen %v after the put", time.Since(start).Round(time.Millisecond))
	for _, st := range []*state{one, all} {
		st.waitFor(t, 5*time.Second, "only b1 left", hasIDs("b1"))
	}
	if err := r.Deregister(ctxT(t), beacon); err != nil {
		t.Fatal(err)
	}
	one.waitFor(t, 5*time.Second, "empty", hasIDs())
	if _, err := r.GetService(ctxT(t), "greeter.rpc"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("GetService after all left: %v, want ErrNotFound", err)
	}
	one.drain()
	var evs []string
	for _, ev := range one.all {
		evs = append(evs, ev.Type.String()+" "+ev.Service.Nodes[0].ID)
	}
	for _, want := range [][]string{
		{"create " + id1, "delete " + id1, "create " + id1, "update " + id1, "delete " + id1},
		{"create " + id2, "delete " + id2},
		{"create b1", "delete b1"},
	} {
		id := strings.Fields(want[0])[1]
		var got []string
		for _, e := range evs {
			if strings.HasSuffix(e, " "+id) {
				got = append(got, e)
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("events of %s: %v, want %v", id, got, want)
		}
	}
	if len(evs) != 9 {
		t.Errorf("events %v, want 9", evs)
	}
}

// A service that is not a go-zero key does not see go-zero keys, and the
// registry without WithGoZero does not read them at all.
func TestGoZeroOnlyMappedKeys(t *testing.T) {
	prefix := testPrefix(t)
	key := fmt.Sprintf("gz%08x.rpc", rand.Uint32())
	cli := rawClient(t)
	_, id := goZeroPublish(t, cli, key, "127.0.0.1:40001", 30)

	with := newReg(t, nil, WithPrefix(prefix), WithGoZero(key))
	without := newReg(t, nil, WithPrefix(prefix))
	if err := with.Register(ctxT(t), svc("other", "1.0.0", "o1")); err != nil {
		t.Fatal(err)
	}
	got, err := with.GetService(ctxT(t), key)
	if err != nil || len(got) != 1 || len(got[0].Nodes) != 1 || got[0].Nodes[0].ID != id {
		t.Fatalf("GetService(%s) with WithGoZero = %s, %v", key, describe(got), err)
	}
	if got, err := with.GetService(ctxT(t), "other"); err != nil || describe(got) != "other@1.0.0([o1])" {
		t.Fatalf("GetService(other) = %s, %v", describe(got), err)
	}
	if _, err := without.GetService(ctxT(t), key); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("GetService(%s) without WithGoZero: %v, want ErrNotFound", key, err)
	}
	list, err := without.ListServices(ctxT(t))
	if err != nil || describe(list) != "other@1.0.0([o1])" {
		t.Fatalf("ListServices without WithGoZero = %s, %v", describe(list), err)
	}
	w := watchState(t, with, registry.WatchService("other"))
	w.waitFor(t, 5*time.Second, "[o1]", hasIDs("o1"))
	goZeroPublish(t, cli, key, "127.0.0.1:40002", 30)
	if err := with.Register(ctxT(t), svc("other", "1.0.0", "o2")); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, 5*time.Second, "[o1 o2]", hasIDs("o1", "o2"))
	w.drain()
	if len(w.all) != 2 {
		t.Errorf("watch of another service got %d events, want 2", len(w.all))
	}
}

// A watch of a Beacon prefix and a go-zero key disconnected while both
// change and the revision is compacted lists both again at one revision and
// reports exactly the difference; a mere disconnect resumes each span from
// its own revision.
func TestGoZeroWatchReconnect(t *testing.T) {
	prefix := testPrefix(t)
	key := goZeroTestKey(t)
	lb := newLogBuf()
	p := startProxy(t, shared.Endpoints()[0], nil)
	writer := newReg(t, nil, WithPrefix(prefix))
	watcher := newReg(t, lb, WithPrefix(prefix), WithGoZero("greeter.rpc="+key), WithAddrs(p.Addr()))
	cli := rawClient(t)

	if err := writer.Register(ctxT(t), svc("greeter.rpc", "1.0.0", "b1")); err != nil {
		t.Fatal(err)
	}
	lease1, id1 := goZeroPublish(t, cli, key, "127.0.0.1:40001", 30)
	w := watchState(t, watcher, registry.WatchService("greeter.rpc"))
	w.waitFor(t, 5*time.Second, "[b1 "+id1+"]", hasIDs("b1", id1))

	// Disconnect: changes on both spans while away.
	p.Cut()
	_, id2 := goZeroPublish(t, cli, key, "127.0.0.1:40002", 30)
	if err := writer.Register(ctxT(t), svc("greeter.rpc", "1.0.0", "b2")); err != nil {
		t.Fatal(err)
	}
	p.Restore()
	w.waitFor(t, 10*time.Second, "[b1 b2 "+id1+" "+id2+"]", hasIDs("b1", "b2", id1, id2))

	// Disconnect and compaction: the re-list covers both spans.
	p.Cut()
	if _, err := cli.Revoke(ctxT(t), lease1); err != nil {
		t.Fatal(err)
	}
	_, id3 := goZeroPublish(t, cli, key, "127.0.0.1:40003", 30)
	if err := writer.Deregister(ctxT(t), svc("greeter.rpc", "1.0.0", "b1")); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Put(ctxT(t), prefix+"unrelated", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctxT(t), resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	p.Restore()
	w.waitFor(t, 10*time.Second, "[b2 "+id2+" "+id3+"]", hasIDs("b2", id2, id3))
	w.drain()
	w.mu.Lock()
	counts := map[string]int{}
	for _, ev := range w.all {
		counts[ev.Type.String()+" "+ev.Service.Nodes[0].ID]++
	}
	w.mu.Unlock()
	for _, e := range []string{"create b1", "create b2", "create " + id1, "create " + id2, "create " + id3, "delete b1", "delete " + id1} {
		if counts[e] != 1 {
			t.Errorf("%q seen %d times, want once (all events: %v)", e, counts[e], counts)
		}
	}
	if len(counts) != 7 {
		t.Errorf("events %v, want exactly 7 kinds", counts)
	}
	if !lb.Has("compacted") {
		t.Error("the compaction was not logged")
	}
	// And both spans are still watched.
	_, id4 := goZeroPublish(t, cli, key, "127.0.0.1:40004", 30)
	w.waitFor(t, 5*time.Second, "with "+id4, hasIDs("b2", id2, id3, id4))
}
