package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/beacon-go/beacon/internal/testserver"
	"github.com/beacon-go/beacon/registry"
)

// Writing the same record again (a re-put by another client, or the same
// data formatted differently) produces no event; a change produces Update.
func TestWatchPutSameData(t *testing.T) {
	prefix := testPrefix(t)
	r := newReg(t, nil, WithPrefix(prefix))
	cli := rawClient(t)
	s := svc("same", "1.0.0", "n1")
	if err := r.Register(ctxT(t), s); err != nil {
		t.Fatal(err)
	}
	w := watchState(t, r, registry.WatchService("same"))
	w.ev.Expect(t, 5*time.Second, registry.Create, "n1")

	key := prefix + "same/n1"
	raw := stored(t, cli, key).Kvs[0].Value
	var indented strings.Builder
	var v any
	_ = json.Unmarshal(raw, &v)
	enc := json.NewEncoder(&indented)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
	for _, val := range []string{string(raw), indented.String(), string(raw)} {
		if _, err := cli.Put(ctxT(t), key, val); err != nil {
			t.Fatal(err)
		}
	}
	s.Nodes[0].Address = "127.0.0.1:9"
	if err := r.Register(ctxT(t), s); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-w.ev.C:
		if ev.Type != registry.Update || ev.Service.Nodes[0].Address != "127.0.0.1:9" {
			t.Fatalf("first event after re-puts of the same data: %v %+v, want the Update", ev.Type, ev.Service.Nodes[0])
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no Update event")
	}
}

// Records written by other tools under the prefix are skipped, with a log
// line, by GetService, ListServices and Watch.
func TestMalformedRecords(t *testing.T) {
	prefix := testPrefix(t)
	lb := newLogBuf()
	r := newReg(t, lb, WithPrefix(prefix))
	cli := rawClient(t)
	twoNodes, _ := json.Marshal(svc("bad", "1.0.0", "n4", "n4b"))
	other, _ := json.Marshal(svc("other", "1.0.0", "n5"))
	ok, _ := json.Marshal(svc("bad", "1.0.0", "ok"))
	huge := `{"name":"bad","version":"1.0.0","metadata":{"x":"` + strings.Repeat("x", MaxRecordSize+1000) + `"},"nodes":[{"id":"n6","address":"127.0.0.1:1"}]}`
	bad := map[string]string{
		"bad/n1":   "not json at all",
		"bad/n2":   "[1,2]",
		"bad/n3":   `{"name":"bad","version":"1.0.0","nodes":[]}`,
		"bad/n4":   string(twoNodes),
		"bad/n5":   string(other),
		"bad/n6":   huge,
		"bad":      string(ok),
		"bad/n7/x": string(ok),
		"bad/n8":   "\x00\xff\xfe binary",
	}
	for k, v := range bad {
		if _, err := cli.Put(ctxT(t), prefix+k, v); err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
	}
	if _, err := cli.Put(ctxT(t), prefix+"bad/ok", string(ok)); err != nil {
		t.Fatal(err)
	}

	got, err := r.GetService(ctxT(t), "bad")
	if err != nil {
		t.Fatal(err)
	}
	if ids := nodeIDs(got); len(ids) != 1 || ids[0] != "ok" {
		t.Errorf("GetService(bad) nodes = %v, want [ok]", ids)
	}
	list, err := r.ListServices(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Name != "bad" || len(list[0].Nodes) != 1 {
		t.Errorf("ListServices = %v, want only bad with node ok", describe(list))
	}
	// The first BadRecordLogBurst bad keys are named, the others counted.
	named := 0
	for _, k := range []string{"bad/n1", "bad/n2", "bad/n3", "bad/n4", "bad/n5", "bad/n6", "bad/n7/x", "bad/n8"} {
		if lb.Has("skipping malformed record", prefix+k+" ") {
			named++
		}
	}
	if named != registry.BadRecordLogBurst || !lb.Has("skipping malformed records not named above", "skipped=3") {
		t.Errorf("%d bad keys named, want %d, and the 3 others counted:\n%s", named, registry.BadRecordLogBurst, strings.Join(lb.lines(), "\n"))
	}

	all := watchState(t, r)
	one := watchState(t, r, registry.WatchService("bad"))
	all.waitFor(t, 5*time.Second, "[ok]", hasIDs("ok"))
	one.waitFor(t, 5*time.Second, "[ok]", hasIDs("ok"))

	// A valid node overwritten with garbage is no longer a node: Delete.
	if _, err := cli.Put(ctxT(t), prefix+"bad/ok", "{garbage"); err != nil {
		t.Fatal(err)
	}
	one.ev.Expect(t, 5*time.Second, registry.Delete, "ok")
	if _, err := cli.Put(ctxT(t), prefix+"bad/ok", string(ok)); err != nil {
		t.Fatal(err)
	}
	one.ev.Expect(t, 5*time.Second, registry.Create, "ok")
	// Garbage arriving through the watch is skipped, the watch goes on.
	if _, err := cli.Put(ctxT(t), prefix+"bad/n9", huge); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctxT(t), prefix+"bad/n1"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctxT(t), prefix+"bad/ok"); err != nil {
		t.Fatal(err)
	}
	one.ev.Expect(t, 5*time.Second, registry.Delete, "ok")
	all.ev.Expect(t, 5*time.Second, registry.Delete, "ok")
	for _, st := range []*state{all, one} {
		st.drain()
		for _, ev := range st.all {
			if id := ev.Service.Nodes[0].ID; id != "ok" {
				t.Errorf("event %v for malformed node %s", ev.Type, id)
			}
		}
	}
}

func nodeIDs(ss []*registry.Service) []string {
	var ids []string
	for _, s := range ss {
		for _, n := range s.Nodes {
			ids = append(ids, n.ID)
		}
	}
	return ids
}

func describe(ss []*registry.Service) string {
	var parts []string
	for _, s := range ss {
		parts = append(parts, fmt.Sprintf("%s@%s(%v)", s.Name, s.Version, nodeIDs([]*registry.Service{s})))
	}
	return strings.Join(parts, " ")
}

// A watcher disconnected while its next revision is compacted lists again
// when it reconnects and reports exactly what changed meanwhile.
func TestWatchCompactedWhileDisconnected(t *testing.T) {
	prefix := testPrefix(t)
	lb := newLogBuf()
	p := startProxy(t, shared.Endpoints()[0], nil)
	writer := newReg(t, nil, WithPrefix(prefix))
	watcher := newReg(t, lb, WithPrefix(prefix), WithAddrs(p.Addr()))
	cli := rawClient(t)

	s := svc("compact", "1.0.0", "a", "b", "c")
	if err := writer.Register(ctxT(t), s); err != nil {
		t.Fatal(err)
	}
	w := watchState(t, watcher, registry.WatchService("compact"))
	w.waitFor(t, 5*time.Second, "[a b c]", hasIDs("a", "b", "c"))

	p.Cut()
	if err := writer.Deregister(ctxT(t), &registry.Service{Name: "compact", Nodes: []*registry.Node{{ID: "a"}}}); err != nil {
		t.Fatal(err)
	}
	b := svc("compact", "1.0.0", "b")
	b.Nodes[0].Metadata["changed"] = "yes"
	if err := writer.Register(ctxT(t), b); err != nil {
		t.Fatal(err)
	}
	if err := writer.Register(ctxT(t), svc("compact", "1.0.0", "d")); err != nil {
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

	w.waitFor(t, 10*time.Second, "[b c d]", hasIDs("b", "c", "d"))
	w.mu.Lock()
	if w.set["b"].Nodes[0].Metadata["changed"] != "yes" {
		t.Errorf("b not updated after the re-list: %v", w.set["b"].Nodes[0].Metadata)
	}
	var evs []string
	for _, ev := range w.all[3:] {
		evs = append(evs, ev.Type.String()+" "+ev.Service.Nodes[0].ID)
	}
	w.mu.Unlock()
	if want := "update b,create d,delete a"; strings.Join(evs, ",") != want {
		t.Errorf("events after reconnecting = %v, want %s", evs, want)
	}
	if !lb.Has("compacted") {
		t.Error("the compaction was not logged")
	}
	// And the watch goes on after the re-list.
	if err := writer.Register(ctxT(t), svc("compact", "1.0.0", "e")); err != nil {
		t.Fatal(err)
	}
	w.ev.Expect(t, 5*time.Second, registry.Create, "e")
}

// A watch resuming from a revision that is compacted already (as if it had
// been away for long) re-lists and emits the difference.
func TestWatchFromCompactedRevision(t *testing.T) {
	prefix := testPrefix(t)
	r := newReg(t, nil, WithPrefix(prefix))
	cli := rawClient(t)
	if err := r.Register(ctxT(t), svc("old", "1.0.0", "x", "y")); err != nil {
		t.Fatal(err)
	}
	state := make(map[string]entry)
	rev, err := r.listRecords(ctxT(t), r.spans("old"), &decoder{}, func() {}, func(key string, kv *mvccpb.KeyValue, s *registry.Service) {
		state[key] = entryOf(valueSum(kv.Value), s)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Deregister(ctxT(t), svc("old", "1.0.0", "x")); err != nil {
		t.Fatal(err)
	}
	if err := r.Register(ctxT(t), svc("old", "1.0.0", "z")); err != nil {
		t.Fatal(err)
	}
	now := stored(t, cli, prefix+"old/z").Header.Revision
	if _, err := cli.Compact(ctxT(t), now); err != nil {
		t.Fatal(err)
	}

	w := r.newWatcher(r.spans("old"), state, rev)
	w.ctx, w.cancel = context.WithCancel(r.ctx)
	w.q = registry.NewQueue(context.Background(), w.cancel)
	r.wg.Add(1)
	go w.run()
	defer w.q.Stop()

	var got []string
	for len(got) < 2 {
		ev, err := nextWithin(t, w.q, 5*time.Second)
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		got = append(got, ev.Type.String()+" "+ev.Service.Nodes[0].ID)
	}
	if want := []string{"create z", "delete x"}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("events after the re-list = %v, want %v", got, want)
	}
}

func nextWithin(t *testing.T, w registry.Watcher, d time.Duration) (*registry.Event, error) {
	type res struct {
		ev  *registry.Event
		err error
	}
	c := make(chan res, 1)
	go func() {
		ev, err := w.Next()
		c <- res{ev, err}
	}()
	select {
	case r := <-c:
		return r.ev, r.err
	case <-time.After(d):
		w.Stop()
		<-c
		return nil, errors.New("no event in time")
	}
}

// The records are plain JSON under /micro/registry/ that etcdctl prints,
// and go-micro's records are read as they are.
func TestInteropDefaultPrefix(t *testing.T) {
	r := newReg(t, nil) // DefaultPrefix
	cli := rawClient(t)
	t.Cleanup(func() { cli.Delete(context.Background(), DefaultPrefix, clientv3.WithPrefix()) })
	s := svc("interop", "1.2.0", "interop-1")
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(30*time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctxT(t), DefaultPrefix+goMicroKey, goMicroRecord); err != nil {
		t.Fatal(err)
	}
	got, err := r.GetService(ctxT(t), "go.micro.srv.greeter")
	if err != nil {
		t.Fatalf("GetService of a go-micro record: %v", err)
	}
	if len(got) != 1 || got[0].Version != "latest" || got[0].Nodes[0].Address != "10.0.0.7:36211" || got[0].Endpoints[0].Name != "Say.Hello" {
		t.Errorf("go-micro record read as %s", describe(got))
	}

	etcdctl := testserver.Require(t, "etcdctl")
	cmd := exec.Command(etcdctl, "--endpoints="+strings.Join(shared.Endpoints(), ","), "get", "--prefix", "/micro/registry/interop/")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("etcdctl: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 2 || lines[0] != "/micro/registry/interop/interop-1" {
		t.Fatalf("etcdctl get --prefix printed:\n%s", out)
	}
	var rec registry.Service
	if err := json.Unmarshal([]byte(lines[1]), &rec); err != nil {
		t.Fatalf("etcdctl printed a value that is not JSON: %v\n%s", err, lines[1])
	}
	if rec.Name != "interop" || len(rec.Nodes) != 1 || rec.Nodes[0].ID != "interop-1" {
		t.Errorf("record = %+v", rec)
	}
	t.Logf("etcdctl get --prefix /micro/registry/interop/:\n%s", out)
}
