package consul

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/registrytest"
)

// fakeConsul answers the few endpoints the registry reads with whatever
// body the test sets (a consul that went mad, or a proxy in front of it).
type fakeConsul struct {
	srv    *httptest.Server
	health atomic.Pointer[string] // body of /v1/health/service/*
	index  atomic.Uint64
	served atomic.Int64 // health answers given
}

func newFakeConsul(t *testing.T) *fakeConsul {
	f := &fakeConsul{}
	empty := "[]"
	f.health.Store(&empty)
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v1/status/leader":
			io.WriteString(w, `"127.0.0.1:8300"`)
		case strings.HasPrefix(r.URL.Path, "/v1/health/service/"):
			if r.URL.Query().Get("index") != "" {
				// A blocking query: answer a little later, so that a
				// watch loop does not spin.
				select {
				case <-time.After(20 * time.Millisecond):
				case <-r.Context().Done():
					return
				}
			}
			w.Header().Set("X-Consul-Index", itoa(f.index.Add(1)))
			io.WriteString(w, *f.health.Load())
			f.served.Add(1)
		case r.URL.Path == "/v1/catalog/services":
			w.Header().Set("X-Consul-Index", "1")
			io.WriteString(w, `{"x": []}`)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func itoa(n uint64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func (f *fakeConsul) set(body string) { f.health.Store(&body) }

func TestGarbageAnswers(t *testing.T) {
	t.Parallel()
	f := newFakeConsul(t)
	r := newRegistryAt(t, strings.TrimPrefix(f.srv.URL, "http://"))
	var c codec
	good := service("x", "1", 0, 1)
	meta, err := c.encodeMeta(good, good.Nodes[0])
	if err != nil {
		t.Fatal(err)
	}
	metaJSON, _ := json.Marshal(meta)
	goodBody := `[{"Node":{"Node":"n","Address":"127.0.0.1"},"Service":{"ID":"x-node-0","Service":"x","Address":"127.0.0.1","Port":20000,"Meta":` +
		string(metaJSON) + `},"Checks":[{"Status":"passing"}]}]`
	tests := []struct {
		name    string
		body    string
		wantErr error // nil: a (possibly empty) answer
		want    int   // visible nodes
	}{
		{"good", goodBody, nil, 1},
		{"not JSON", "<html>oops</html>", registry.ErrUnavailable, 0},
		{"truncated", goodBody[:len(goodBody)/2], registry.ErrUnavailable, 0},
		{"object instead of list", `{"a":1}`, registry.ErrUnavailable, 0},
		{"wrong field types", `[{"Service":{"ID":7,"Port":"80"}}]`, registry.ErrUnavailable, 0},
		{"null entries", `[null, {}, {"Service":null}, {"Node":null,"Service":{"ID":"a","Service":"x","Port":80}}]`, registry.ErrNotFound, 0},
		{"other service's entry", strings.Replace(goodBody, `"Service":"x"`, `"Service":"y"`, 1), registry.ErrNotFound, 0},
		{"deeply nested junk", `[{"Service":{"Meta":` + strings.Repeat(`{"a":`, 5000) + `1` + strings.Repeat(`}`, 5000) + `}}]`, registry.ErrUnavailable, 0},
		{"good again", goodBody, nil, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f.set(tc.body)
			got, err := r.GetService(ctxT(t), "x")
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if n := len(nodeIDs(got)); n != tc.want {
				t.Errorf("%d nodes, want %d", n, tc.want)
			}
		})
	}

	// A watcher keeps its state through garbage: no Delete until a
	// successful answer says so.
	f.set(goodBody)
	ev := registrytest.Watch(t, r, registry.WatchService("x"))
	ev.Expect(t, 5*time.Second, registry.Create, "x-node-0")
	f.set("garbage")
	n0 := f.served.Load()
	registrytest.Eventually(t, 5*time.Second, func() error {
		if f.served.Load() < n0+3 {
			return errors.New("the watch has not met the garbage three times yet")
		}
		return nil
	})
	select {
	case e := <-ev.C:
		t.Fatalf("event %v %s from garbage answers", e.Type, e.Service.Nodes[0].ID)
	default:
	}
	f.set("[]")
	ev.Expect(t, 5*time.Second, registry.Delete, "x-node-0")
}

func TestResponseSizeLimit(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strings.Repeat("x", 1000))
	}))
	defer srv.Close()
	base := &http.Transport{}
	defer base.CloseIdleConnections()
	for _, tc := range []struct {
		max     int64
		wantErr bool
	}{{999, true}, {1000, false}, {5000, false}} {
		c := &http.Client{Transport: &limitedTransport{base: base, max: tc.max}}
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, srv.URL, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if tc.wantErr != (err != nil) || (!tc.wantErr && len(body) != 1000) {
			t.Errorf("limit %d: read %d bytes, err %v", tc.max, len(body), err)
		}
	}
}
