package ui

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/selector"
	"github.com/beacon-go/beacon/status"
)

// Info is the answer of GET /api/info.
type Info struct {
	Registry string `json:"registry"`
	Selector string `json:"selector"`
	MaxBody  int64  `json:"max_body"`
	// TimeoutMS is the calls' default timeout.
	TimeoutMS int64 `json:"timeout_ms"`
}

// ServiceRow is one service of GET /api/services.
type ServiceRow struct {
	Name     string       `json:"name"`
	Versions []VersionRow `json:"versions"`
	Nodes    int          `json:"nodes"`
}

// VersionRow is one version of a ServiceRow.
type VersionRow struct {
	Version string `json:"version"`
	Nodes   int    `json:"nodes"`
}

// ServiceView is the answer of GET /api/service?name=NAME: the service as
// the registry has it, one entry per version, with the selector's health
// figures of its nodes.
type ServiceView struct {
	Name     string        `json:"name"`
	Versions []VersionView `json:"versions"`
	// Selected: the dashboard's selector knows the service (it was called
	// from the dashboard), so nodes have health figures.
	Selected bool `json:"selected"`
}

// VersionView is one version of a service.
type VersionView struct {
	Version   string               `json:"version"`
	Metadata  map[string]string    `json:"metadata"`
	Nodes     []NodeView           `json:"nodes"`
	Endpoints []*registry.Endpoint `json:"endpoints"`
}

// NodeView is a node and its health.
type NodeView struct {
	ID       string            `json:"id"`
	Address  string            `json:"address"`
	Metadata map[string]string `json:"metadata"`
	Health   *Health           `json:"health"` // nil: the selector has no figures of it (yet)
}

// Health is selector.NodeHealth as JSON.
type Health struct {
	InFlight  int64      `json:"in_flight"`
	LatencyNS int64      `json:"latency_ns"` // latency EWMA; 0 before an answer
	Weight    int        `json:"weight"`
	Ejected   bool       `json:"ejected"`
	Probing   bool       `json:"probing"`
	Until     *time.Time `json:"until,omitempty"` // end of the cool-off
	Incidents int        `json:"incidents"`
	Foreign   bool       `json:"foreign"` // speaks a protocol the client does not
}

// CallRequest is the body of POST /api/call.
type CallRequest struct {
	Service  string          `json:"service"`
	Endpoint string          `json:"endpoint"`
	Request  json.RawMessage `json:"request"`           // the endpoint's request; default {}
	Node     string          `json:"node,omitempty"`    // only this node (by ID)
	Version  string          `json:"version,omitempty"` // only nodes of this version
	// TimeoutMS bounds the call, retries included (default the server's
	// Timeout; at most MaxCallTimeout).
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
}

// CallResult is the answer of POST /api/call (status 200 whatever the
// call's outcome; OK says it).
type CallResult struct {
	OK     bool   `json:"ok"`
	Code   int    `json:"code"` // the status code (0: OK)
	Error  string `json:"error,omitempty"`
	NotRun bool   `json:"not_run,omitempty"` // the call provably did not run
	// Response is the answer when it is JSON; ResponseText when not.
	Response     json.RawMessage `json:"response,omitempty"`
	ResponseText string          `json:"response_text,omitempty"`
	DurationNS   int64           `json:"duration_ns"`
	Attempts     []Attempt       `json:"attempts"`
}

// Attempt is one attempt of a call.
type Attempt struct {
	Number     int    `json:"number"`
	Node       string `json:"node"`
	Address    string `json:"address"`
	DurationNS int64  `json:"duration_ns"`
	Code       int    `json:"code"`
	Error      string `json:"error,omitempty"`
}

func (s *Server) info(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, Info{Registry: s.reg.String(), Selector: s.sel.String(), MaxBody: s.o.maxBody, TimeoutMS: s.o.timeout.Milliseconds()})
}

func (s *Server) services(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), s.o.timeout)
	defer cancel()
	list, err := s.reg.ListServices(ctx)
	if err != nil {
		httpError(w, http.StatusBadGateway, "list services: "+err.Error())
		return
	}
	rows := []ServiceRow{}
	var bare []int // rows of names listed without nodes: looked up
	for _, sv := range list {
		if sv == nil {
			continue
		}
		if len(rows) == 0 || rows[len(rows)-1].Name != sv.Name {
			rows = append(rows, ServiceRow{Name: sv.Name, Versions: []VersionRow{}})
		}
		row := &rows[len(rows)-1]
		if sv.Nodes == nil {
			if len(bare) == 0 || bare[len(bare)-1] != len(rows)-1 {
				bare = append(bare, len(rows)-1)
			}
		}
		row.Versions = append(row.Versions, VersionRow{Version: sv.Version, Nodes: len(sv.Nodes)})
		row.Nodes += len(sv.Nodes)
	}
	// Backends may list services without their nodes: count them.
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, i := range bare {
		wg.Add(1)
		sem <- struct{}{}
		go func(row *ServiceRow) {
			defer func() { <-sem; wg.Done() }()
			svcs, err := s.reg.GetService(ctx, row.Name)
			if err != nil {
				return // keep what the list said
			}
			row.Versions, row.Nodes = []VersionRow{}, 0
			for _, sv := range svcs {
				row.Versions = append(row.Versions, VersionRow{Version: sv.Version, Nodes: len(sv.Nodes)})
				row.Nodes += len(sv.Nodes)
			}
		}(&rows[i])
	}
	wg.Wait()
	writeJSON(w, http.StatusOK, rows)
}

func (s *Server) service(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("name")
	if name == "" {
		httpError(w, http.StatusBadRequest, "name is required")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.o.timeout)
	defer cancel()
	svcs, err := s.reg.GetService(ctx, name)
	switch {
	case errors.Is(err, registry.ErrNotFound):
		httpError(w, http.StatusNotFound, "service "+name+" not found")
		return
	case errors.Is(err, registry.ErrInvalid):
		httpError(w, http.StatusBadRequest, err.Error())
		return
	case err != nil:
		httpError(w, http.StatusBadGateway, "get service: "+err.Error())
		return
	}
	health := map[string]*Health{}
	hs := s.sel.Health(name)
	for i := range hs {
		h := &hs[i]
		hv := &Health{InFlight: h.InFlight, LatencyNS: int64(h.Latency), Weight: h.Weight, Ejected: h.Ejected,
			Probing: h.Probing, Incidents: h.Incidents, Foreign: h.Foreign}
		if !h.Until.IsZero() {
			u := h.Until
			hv.Until = &u
		}
		health[h.ID] = hv
	}
	view := ServiceView{Name: name, Versions: []VersionView{}, Selected: hs != nil}
	for _, sv := range svcs {
		if sv == nil {
			continue
		}
		v := VersionView{Version: sv.Version, Metadata: sv.Metadata, Nodes: []NodeView{}, Endpoints: []*registry.Endpoint{}}
		for _, n := range sv.Nodes {
			if n != nil {
				v.Nodes = append(v.Nodes, NodeView{ID: n.ID, Address: n.Address, Metadata: n.Metadata, Health: health[n.ID]})
			}
		}
		for _, e := range sv.Endpoints {
			if e != nil {
				e = e.Copy()
				e.Request, e.Response = trim(e.Request, 0), trim(e.Response, 0)
				v.Endpoints = append(v.Endpoints, e)
			}
		}
		slices.SortFunc(v.Endpoints, func(a, b *registry.Endpoint) int { return strings.Compare(a.Name, b.Name) })
		view.Versions = append(view.Versions, v)
	}
	writeJSON(w, http.StatusOK, view)
}

// Bounds of the value trees sent to the page (a registry record may hold
// anything).
const (
	maxValueDepth  = 8
	maxValueFields = 200
)

func trim(v *registry.Value, depth int) *registry.Value {
	if v == nil {
		return nil
	}
	if depth >= maxValueDepth {
		v.Values = nil
		return v
	}
	if len(v.Values) > maxValueFields {
		v.Values = v.Values[:maxValueFields]
	}
	vals := v.Values[:0]
	for _, c := range v.Values {
		if c != nil {
			vals = append(vals, trim(c, depth+1))
		}
	}
	v.Values = vals
	return v
}

// checkCall refuses what a page of another site could send: see the
// package doc.
func checkCall(r *http.Request) (int, error) {
	if r.Header.Get(HeaderName) == "" {
		return http.StatusForbidden, fmt.Errorf("the %s header is required", HeaderName)
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return http.StatusUnsupportedMediaType, errors.New("Content-Type must be application/json")
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || o == "null" || u.Host != r.Host || (u.Scheme != "http" && u.Scheme != "https") {
			return http.StatusForbidden, fmt.Errorf("cross-origin request refused (Origin %q, Host %q)", o, r.Host)
		}
	}
	if sf := r.Header.Get("Sec-Fetch-Site"); sf != "" && sf != "same-origin" && sf != "none" {
		return http.StatusForbidden, fmt.Errorf("cross-site request refused (Sec-Fetch-Site %q)", sf)
	}
	return 0, nil
}

func (s *Server) call(w http.ResponseWriter, r *http.Request) {
	if code, err := checkCall(r); err != nil {
		httpError(w, code, err.Error())
		return
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.o.maxBody))
	if err != nil {
		if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
			httpError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body over %d bytes", s.o.maxBody))
			return
		}
		httpError(w, http.StatusBadRequest, "request: "+err.Error())
		return
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var req CallRequest
	if err := dec.Decode(&req); err != nil {
		httpError(w, http.StatusBadRequest, "request: "+err.Error())
		return
	}
	if _, err := dec.Token(); err != io.EOF {
		httpError(w, http.StatusBadRequest, "request: data after the JSON object")
		return
	}
	if req.Service == "" || req.Endpoint == "" {
		httpError(w, http.StatusBadRequest, "service and endpoint are required")
		return
	}
	body := bytes.TrimSpace(req.Request)
	if len(body) == 0 || string(body) == "null" {
		body = []byte("{}")
	}
	timeout := s.o.timeout
	if req.TimeoutMS > 0 {
		timeout = min(time.Duration(req.TimeoutMS)*time.Millisecond, MaxCallTimeout)
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	rec := &recorder{}
	ctx = context.WithValue(ctx, recorderKey{}, rec)
	var filters []selector.Filter
	if req.Node != "" {
		id := req.Node
		filters = append(filters, func(_ *registry.Service, n *registry.Node) bool { return n.ID == id })
	}
	if req.Version != "" {
		filters = append(filters, selector.FilterVersion(req.Version))
	}
	var opts []client.CallOption
	if len(filters) > 0 {
		opts = append(opts, client.WithSelectOptions(selector.WithFilter(filters...)))
	}
	var rsp json.RawMessage
	start := time.Now()
	err = s.cl.Call(ctx, req.Service, req.Endpoint, json.RawMessage(body), &rsp, opts...)
	res := CallResult{OK: err == nil, Code: status.Code(err), DurationNS: int64(time.Since(start)), Attempts: rec.list()}
	if err != nil {
		res.Error = err.Error()
		res.NotRun = errors.Is(err, client.ErrNotRun)
	} else if json.Valid(rsp) {
		res.Response = rsp
	} else {
		res.ResponseText = string(rsp)
	}
	writeJSON(w, http.StatusOK, res)
}

// recorder collects a call's attempts (hedged ones concurrently).
type recorder struct {
	mu       sync.Mutex
	attempts []Attempt
}

type recorderKey struct{}

func (r *recorder) list() []Attempt {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := slices.Clone(r.attempts)
	if out == nil {
		out = []Attempt{}
	}
	slices.SortFunc(out, func(a, b Attempt) int { return a.Number - b.Number })
	return out
}

// recordAttempt is the client's attempt interceptor: it times the attempts
// of calls made by the form.
func recordAttempt(ctx context.Context, a *client.Attempt, next client.AttemptInvoker) error {
	rec, _ := ctx.Value(recorderKey{}).(*recorder)
	if rec == nil {
		return next(ctx, a)
	}
	start := time.Now()
	err := next(ctx, a)
	at := Attempt{Number: a.Number, Address: a.Address, DurationNS: int64(time.Since(start)), Code: status.Code(err)}
	if a.Node != nil {
		at.Node = a.Node.ID
	}
	if err != nil {
		at.Error = err.Error()
	}
	rec.mu.Lock()
	rec.attempts = append(rec.attempts, at)
	rec.mu.Unlock()
	return err
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code = http.StatusInternalServerError
		b, _ = json.Marshal(map[string]string{"error": err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

func httpError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]any{"error": msg, "code": code})
}
