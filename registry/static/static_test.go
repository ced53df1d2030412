package static

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/registrytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const wait = 5 * time.Second

// logs keeps slog records for assertions.
type logs struct {
	mu   sync.Mutex
	recs []string
}

func (l *logs) Enabled(context.Context, slog.Level) bool { return true }
func (l *logs) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	r.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.String())
		return true
	})
	l.mu.Lock()
	l.recs = append(l.recs, b.String())
	l.mu.Unlock()
	return nil
}
func (l *logs) WithAttrs(attrs []slog.Attr) slog.Handler { return &withAttrs{l, attrs} }
func (l *logs) WithGroup(string) slog.Handler            { return l }

// has reports whether a record contains all parts.
func (l *logs) has(parts ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
next:
	for _, r := range l.recs {
		for _, p := range parts {
			if !strings.Contains(r, p) {
				continue next
			}
		}
		return true
	}
	return false
}

func (l *logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.recs, "\n")
}

type withAttrs struct {
	l     *logs
	attrs []slog.Attr
}

func (h *withAttrs) Enabled(context.Context, slog.Level) bool { return true }
func (h *withAttrs) Handle(ctx context.Context, r slog.Record) error {
	r.AddAttrs(h.attrs...)
	return h.l.Handle(ctx, r)
}
func (h *withAttrs) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &withAttrs{h.l, append(slices.Clone(h.attrs), attrs...)}
}
func (h *withAttrs) WithGroup(string) slog.Handler { return h }

var tmpSeq atomic.Int64

// replaceFile writes data next to path and renames it over path, as editors
// and ConfigMap volumes do.
func replaceFile(t testing.TB, path, data string) {
	t.Helper()
	tmp := fmt.Sprintf("%s.tmp%d", path, tmpSeq.Add(1))
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t testing.TB, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestConformance runs the read-only conformance suite: Seed rewrites the
// watched file (by rename), so every lookup and watch case goes through a
// real reload.
func TestConformance(t *testing.T) {
	var mu sync.Mutex
	paths := map[registry.Registry]string{}
	registrytest.Run(t, registrytest.Config{
		New: func(t *testing.T) (registry.Registry, error) {
			path := filepath.Join(t.TempDir(), "services.json")
			writeFile(t, path, `{"services": []}`)
			r, err := New(WithFile(path, FormatAuto), WithLogger(slog.New(&logs{})))
			if err == nil {
				mu.Lock()
				paths[r] = path
				mu.Unlock()
			}
			return r, err
		},
		Seed: func(t *testing.T, r registry.Registry, services []*registry.Service) error {
			mu.Lock()
			path := paths[r]
			mu.Unlock()
			data, err := json.Marshal(File{Services: append([]*registry.Service{}, services...)})
			if err != nil {
				return err
			}
			replaceFile(t, path, string(data))
			return nil
		},
	})
}

func TestReadOnly(t *testing.T) {
	r, err := New(WithInline("greeter=127.0.0.1:8001"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	s := &registry.Service{Name: "greeter", Nodes: []*registry.Node{{ID: "x", Address: "127.0.0.1:1"}}}
	err = r.Register(context.Background(), s)
	if !errors.Is(err, registry.ErrReadOnly) || !strings.Contains(err.Error(), `Register of "greeter" refused: its nodes come from inline`) {
		t.Errorf("Register = %v", err)
	}
	if err := r.Deregister(context.Background(), s); !errors.Is(err, registry.ErrReadOnly) {
		t.Errorf("Deregister = %v", err)
	}
	got, err := r.GetService(context.Background(), "greeter")
	if err != nil || len(got) != 1 || len(got[0].Nodes) != 1 || got[0].Nodes[0].Address != "127.0.0.1:8001" {
		t.Errorf("GetService = %v, %v", got, err)
	}
	r.Close()
	if err := r.Register(context.Background(), s); !errors.Is(err, registry.ErrClosed) {
		t.Errorf("Register after Close = %v, want ErrClosed", err)
	}
}

func TestNewErrors(t *testing.T) {
	if _, err := New(); !errors.Is(err, registry.ErrInvalid) || !strings.Contains(err.Error(), "exactly one source") {
		t.Errorf("New() = %v", err)
	}
	if _, err := New(WithInline("a=127.0.0.1:1"), WithFile("x.json", FormatAuto)); !errors.Is(err, registry.ErrInvalid) {
		t.Errorf("two sources = %v", err)
	}
	if _, err := New(WithInline("a=127.0.0.1")); !errors.Is(err, registry.ErrInvalid) {
		t.Errorf("bad inline = %v", err)
	}
	missing := filepath.Join(t.TempDir(), "nope.yaml")
	if _, err := New(WithFile(missing, FormatAuto)); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing file = %v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	writeFile(t, bad, "services: [{name: a}]")
	if _, err := New(WithFile(bad, FormatAuto)); !errors.Is(err, registry.ErrInvalid) || !strings.Contains(err.Error(), "bad.yaml") {
		t.Errorf("malformed file = %v", err)
	}
	if _, err := New(WithServices(&registry.Service{Name: "a b"})); !errors.Is(err, registry.ErrInvalid) {
		t.Errorf("bad services = %v", err)
	}
	// WithServices copies.
	s := &registry.Service{Name: "a", Nodes: []*registry.Node{{ID: "n", Address: "127.0.0.1:1"}}}
	r, err := New(WithServices(s))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	s.Nodes[0].Address = "127.0.0.1:2"
	if got, _ := r.GetService(context.Background(), "a"); got[0].Nodes[0].Address != "127.0.0.1:1" {
		t.Errorf("WithServices aliases its input")
	}
}

type evt struct {
	typ     registry.EventType
	id      string
	address string
}

func (e evt) String() string { return e.typ.String() + " " + e.id + " " + e.address }

// expectEvents reads exactly want (in any order across nodes) and then
// checks that nothing else arrives within quiet.
func expectEvents(t *testing.T, ev *registrytest.Events, quiet time.Duration, want ...evt) {
	t.Helper()
	var got []evt
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for len(got) < len(want) {
		select {
		case e, ok := <-ev.C:
			if !ok {
				t.Fatalf("watcher ended; got %v, want %v", got, want)
			}
			got = append(got, evt{e.Type, e.Service.Nodes[0].ID, e.Service.Nodes[0].Address})
		case <-timer.C:
			t.Fatalf("got %v within %v, want %v", got, wait, want)
		}
	}
	select {
	case e := <-ev.C:
		got = append(got, evt{e.Type, e.Service.Nodes[0].ID, e.Service.Nodes[0].Address})
	case <-time.After(quiet):
	}
	key := func(a, b evt) int { return strings.Compare(a.String(), b.String()) }
	slices.SortFunc(got, key)
	want = slices.Clone(want)
	slices.SortFunc(want, key)
	if !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
}

const fileA = `services:
- name: greeter
  version: 1.0.0
  nodes:
  - {id: g1, address: 127.0.0.1:8001}
  - {id: g2, address: 127.0.0.1:8002}
  - {id: g3, address: 127.0.0.1:8003}
- name: orders
  nodes:
  - {id: o1, address: 127.0.0.1:9001}
`

// fileB from fileA: g1 unchanged, g2 moved, g3 gone, g4 new, orders gone,
// billing new.
const fileB = `services:
- name: greeter
  version: 1.0.0
  nodes:
  - {id: g1, address: 127.0.0.1:8001}
  - {id: g2, address: 127.0.0.1:8102}
  - {id: g4, address: 127.0.0.1:8004}
- name: billing
  nodes:
  - {id: b1, address: 127.0.0.1:7001}
`

func newFileRegistry(t *testing.T, content string, opts ...Option) (*Registry, string, *logs) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "services.yaml")
	writeFile(t, path, content)
	l := &logs{}
	r, err := New(append([]Option{WithFile(path, FormatAuto), WithLogger(slog.New(l))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, path, l
}

func nodesOf(t *testing.T, r registry.Registry, name string) []string {
	t.Helper()
	got, err := r.GetService(context.Background(), name)
	if errors.Is(err, registry.ErrNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range got {
		for _, n := range s.Nodes {
			out = append(out, n.ID+"="+n.Address)
		}
	}
	return out
}

// TestWatchDiff: a reload is delivered as the difference, per node, and
// nothing for nodes that did not change.
func TestWatchDiff(t *testing.T) {
	for _, mode := range []string{"in place", "rename", "polling"} {
		t.Run(mode, func(t *testing.T) {
			var opts []Option
			if mode == "polling" {
				opts = append(opts, WithPolling(20*time.Millisecond))
			}
			r, path, _ := newFileRegistry(t, fileA, opts...)
			all := registrytest.Watch(t, r)
			expectEvents(t, all, 50*time.Millisecond,
				evt{registry.Create, "g1", "127.0.0.1:8001"}, evt{registry.Create, "g2", "127.0.0.1:8002"},
				evt{registry.Create, "g3", "127.0.0.1:8003"}, evt{registry.Create, "o1", "127.0.0.1:9001"})
			greeter := registrytest.Watch(t, r, registry.WatchService("greeter"))
			expectEvents(t, greeter, 50*time.Millisecond,
				evt{registry.Create, "g1", "127.0.0.1:8001"}, evt{registry.Create, "g2", "127.0.0.1:8002"},
				evt{registry.Create, "g3", "127.0.0.1:8003"})
			if mode == "rename" {
				replaceFile(t, path, fileB)
			} else {
				if mode == "polling" {
					time.Sleep(20 * time.Millisecond) // a new mtime even on coarse clocks
				}
				writeFile(t, path, fileB)
			}
			expectEvents(t, all, 200*time.Millisecond,
				evt{registry.Update, "g2", "127.0.0.1:8102"}, evt{registry.Delete, "g3", "127.0.0.1:8003"},
				evt{registry.Create, "g4", "127.0.0.1:8004"}, evt{registry.Delete, "o1", "127.0.0.1:9001"},
				evt{registry.Create, "b1", "127.0.0.1:7001"})
			expectEvents(t, greeter, 50*time.Millisecond,
				evt{registry.Update, "g2", "127.0.0.1:8102"}, evt{registry.Delete, "g3", "127.0.0.1:8003"},
				evt{registry.Create, "g4", "127.0.0.1:8004"})
			if got := nodesOf(t, r, "greeter"); !slices.Equal(got, []string{"g1=127.0.0.1:8001", "g2=127.0.0.1:8102", "g4=127.0.0.1:8004"}) {
				t.Errorf("greeter = %v", got)
			}
			if got := nodesOf(t, r, "orders"); got != nil {
				t.Errorf("orders = %v, want gone", got)
			}
			// Rewriting the same bytes is no change.
			replaceFile(t, path, fileB)
			expectEvents(t, all, 300*time.Millisecond)
		})
	}
}

// TestMalformedEditKeepsLastGood: an edit that does not parse is logged
// with its reason and changes nothing; the next good edit applies.
func TestMalformedEditKeepsLastGood(t *testing.T) {
	r, path, l := newFileRegistry(t, fileA)
	ev := registrytest.Watch(t, r, registry.WatchService("greeter"))
	ev.Expect(t, wait, registry.Create, "g3")
	writeFile(t, path, strings.Replace(fileB, "127.0.0.1:8102", "127.0.0.1:99999", 1))
	registrytest.Eventually(t, wait, func() error {
		if !l.has("WARN static registry: file refused; keeping the last good content", "path="+path, "port must be 1-65535") {
			return fmt.Errorf("no log of the refused edit in:\n%s", l)
		}
		return nil
	})
	if err := r.Reload(); !errors.Is(err, registry.ErrInvalid) || !strings.Contains(err.Error(), `services[0] ("greeter"): invalid node[1].address "127.0.0.1:99999"`) {
		t.Errorf("Reload = %v", err)
	}
	if got := nodesOf(t, r, "orders"); len(got) != 1 {
		t.Errorf("orders = %v: last good content lost", got)
	}
	// Truncated mid-write, then a half file: still the last good content.
	writeFile(t, path, "")
	writeFile(t, path, fileB[:40])
	time.Sleep(200 * time.Millisecond)
	if got := nodesOf(t, r, "greeter"); len(got) != 3 || got[1] != "g2=127.0.0.1:8002" {
		t.Errorf("greeter = %v after malformed edits", got)
	}
	select {
	case e := <-ev.C:
		t.Fatalf("malformed edit produced an event: %v", e.Type)
	default:
	}
	replaceFile(t, path, fileB)
	ev.Expect(t, wait, registry.Update, "g2")
	ev.Expect(t, wait, registry.Delete, "g3")
	registrytest.Eventually(t, wait, func() error { // logged just after the events
		if !l.has("INFO static registry: file reloaded", "services=2", "changes=5") {
			return fmt.Errorf("no reload log:\n%s", l)
		}
		return nil
	})
}

// TestFileRemovedAndBack: a removed file keeps the last content; when it
// comes back, it is read.
func TestFileRemovedAndBack(t *testing.T) {
	r, path, l := newFileRegistry(t, fileA)
	ev := registrytest.Watch(t, r, registry.WatchService("orders"))
	ev.Expect(t, wait, registry.Create, "o1")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	registrytest.Eventually(t, wait, func() error {
		if !l.has("WARN static registry: cannot read the file; keeping the last good content", "no such file") {
			return fmt.Errorf("no log of the missing file in:\n%s", l)
		}
		return nil
	})
	if got := nodesOf(t, r, "orders"); len(got) != 1 {
		t.Errorf("orders = %v after remove", got)
	}
	writeFile(t, path, fileB)
	ev.Expect(t, wait, registry.Delete, "o1")
}

// TestConfigMapSwap: a Kubernetes ConfigMap volume presents the file as a
// symlink through "..data", and updates by pointing "..data" at a new
// directory (a rename of a symlink); the file's own name sees no event.
func TestConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	v1 := filepath.Join(dir, "..2026_11_28_v1")
	if err := os.Mkdir(v1, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(v1, "services.yaml"), fileA)
	must(t, os.Symlink("..2026_11_28_v1", filepath.Join(dir, "..data")))
	must(t, os.Symlink("..data/services.yaml", filepath.Join(dir, "services.yaml")))
	r, err := New(WithFile(filepath.Join(dir, "services.yaml"), FormatAuto), WithLogger(slog.New(&logs{})))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ev := registrytest.Watch(t, r, registry.WatchService("billing"))
	v2 := filepath.Join(dir, "..2026_11_28_v2")
	must(t, os.Mkdir(v2, 0o755))
	writeFile(t, filepath.Join(v2, "services.yaml"), fileB)
	must(t, os.Symlink("..2026_11_28_v2", filepath.Join(dir, "..data_tmp")))
	must(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
	must(t, os.RemoveAll(v1))
	ev.Expect(t, wait, registry.Create, "b1")
}

// TestSymlinkTarget: a path that is a symlink to a file elsewhere follows
// edits of the target.
func TestSymlinkTarget(t *testing.T) {
	target := filepath.Join(t.TempDir(), "real.yaml")
	writeFile(t, target, fileA)
	link := filepath.Join(t.TempDir(), "services.yaml")
	must(t, os.Symlink(target, link))
	r, err := New(WithFile(link, FormatAuto), WithLogger(slog.New(&logs{})))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ev := registrytest.Watch(t, r, registry.WatchService("billing"))
	replaceFile(t, target, fileB)
	ev.Expect(t, wait, registry.Create, "b1")
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
