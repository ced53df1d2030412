package server

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/beacon-go/beacon/codec"
	"github.com/beacon-go/beacon/registry"
)

// ErrBadHandler: a value given to Handle is not a handler (no method of the
// handler form, or a method that looks like a handler but has another
// signature), or an endpoint was added twice.
var ErrBadHandler = errors.New("server: not a handler")

// handler is one endpoint: decode a request, run it, encode the response.
type handler struct {
	name     string
	endpoint *registry.Endpoint
	// source says who added it, for errors: "Handle(*pkg.T)" or
	// "HandleFunc[pkg.Req, pkg.Rsp]".
	source string
	// decode decodes a request body with c into a new request value.
	decode func(c codec.Codec, body []byte) (any, error)
	// call runs the method on a decoded request and returns the response
	// value to encode.
	call HandlerFunc
	// direct: Handle calls the method without reflect.Value.Call (for
	// tests).
	direct bool
	// cost is the handler's recent run time (ns, a moving average): quick
	// handlers run on the connection's reading goroutine (conn.inline).
	cost atomic.Int64
}

// observe adds a run time to h.cost (a moving average over about 8 runs;
// concurrent updates may lose one, which does not matter).
func (h *handler) observe(d time.Duration) {
	c := h.cost.Load()
	h.cost.Store(c + (int64(d)-c)/8)
}

var (
	ctxType   = reflect.TypeFor[context.Context]()
	errorType = reflect.TypeFor[error]()
)

// handlerForm is the signature of a handler method, for error messages.
const handlerForm = "func(ctx context.Context, req *Req, rsp *Rsp) error"

// handlersOf returns one handler per exported method of h of the form
//
//	func (T) Name(ctx context.Context, req *Req, rsp *Rsp) error
//
// named "T.Name" (T without its package and pointer). A handler-like method
// (see handlerLike) of another form, or one that needs a pointer receiver
// when h is not a pointer, is an error naming it; other methods are ignored.
func handlersOf(h any) ([]*handler, error) {
	v := reflect.ValueOf(h)
	if !v.IsValid() {
		return nil, fmt.Errorf("%w: nil", ErrBadHandler)
	}
	t := v.Type()
	typeName := reflect.Indirect(v).Type().Name()
	if typeName == "" {
		return nil, fmt.Errorf("%w: %s has no type name", ErrBadHandler, t)
	}
	var out []*handler
	var errs []error
	for i := range t.NumMethod() {
		m := t.Method(i)
		fn := v.Method(i)
		mt := fn.Type() // without the receiver
		name := typeName + "." + m.Name
		if !m.IsExported() || !handlerLike(inTypes(mt)) {
			continue
		}
		if why := badSignature(mt); why != "" {
			errs = append(errs, fmt.Errorf("%w: %s: %s", ErrBadHandler, name, why))
			continue
		}
		reqT, rspT := mt.In(1).Elem(), mt.In(2).Elem()
		reqPtrT := mt.In(1)
		call := directCall(v, m)
		direct := call != nil
		if !direct {
			call = reflectCall(fn)
		}
		out = append(out, &handler{
			name:     name,
			endpoint: &registry.Endpoint{Name: name, Request: describe(reqT.Name(), reqT, 0), Response: describe(rspT.Name(), rspT, 0)},
			source:   fmt.Sprintf("Handle(%s)", t),
			decode: func(c codec.Codec, body []byte) (any, error) {
				req := reflect.New(reqT).Interface() // a pointer: no allocation but the value
				if err := codec.UnmarshalRequest(c, body, req); err != nil {
					return nil, &decodeError{err}
				}
				return req, nil
			},
			call: func(ctx context.Context, req any) (any, error) {
				// reflect.TypeOf and ValueOf of a value held in an
				// interface read it: they do not allocate.
				if reflect.TypeOf(req) != reqPtrT {
					return nil, fmt.Errorf("server: %s: an interceptor passed a %T request, want *%s", name, req, reqT)
				}
				rsp := reflect.New(rspT)
				if err := call(ctx, reflect.ValueOf(req), rsp); err != nil {
					return nil, err
				}
				return rsp.Interface(), nil
			},
			direct: direct,
		})
	}
	if t.Kind() != reflect.Pointer {
		// Methods with a pointer receiver are not in the method set of a
		// value: say so rather than skip them.
		pt := reflect.PointerTo(t)
		for i := range pt.NumMethod() {
			m := pt.Method(i)
			if _, inValue := t.MethodByName(m.Name); inValue || !m.IsExported() {
				continue
			}
			if handlerLike(inTypes(m.Type)[1:]) {
				errs = append(errs, fmt.Errorf("%w: %s.%s: has a pointer receiver: pass a %s (got %s)", ErrBadHandler, typeName, m.Name, pt, t))
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %s has no method func(context.Context, *Req, *Rsp) error", ErrBadHandler, t)
	}
	return out, nil
}

// handlerLike tells whether a method with parameters in (without its
// receiver) was meant as a handler: it takes a context.Context at any
// position, or it takes exactly two pointers (a request and a response
// without the context).
func handlerLike(in []reflect.Type) bool {
	if slices.Contains(in, ctxType) {
		return true
	}
	return len(in) == 2 && in[0].Kind() == reflect.Pointer && in[1].Kind() == reflect.Pointer
}

// badSignature says what keeps a method of type mt (without its receiver)
// from being a handler, or returns "".
func badSignature(mt reflect.Type) string {
	switch {
	case mt.NumIn() != 3:
		s := "s"
		if mt.NumIn() == 1 {
			s = ""
		}
		return fmt.Sprintf("takes %d argument%s, want %s", mt.NumIn(), s, handlerForm)
	case mt.In(0) != ctxType:
		return fmt.Sprintf("first argument must be context.Context (got %s)", mt.In(0))
	case mt.In(1).Kind() != reflect.Pointer:
		return fmt.Sprintf("request must be a pointer (got %s)", mt.In(1))
	case mt.In(2).Kind() != reflect.Pointer:
		return fmt.Sprintf("response must be a pointer (got %s)", mt.In(2))
	case mt.NumOut() == 0:
		return "must return error (returns nothing)"
	case mt.NumOut() > 1:
		return fmt.Sprintf("must return only error (returns (%s))", joinTypes(outTypes(mt)))
	case mt.Out(0) != errorType:
		return fmt.Sprintf("must return error (returns %s)", mt.Out(0))
	}
	return ""
}

func inTypes(ft reflect.Type) []reflect.Type {
	ts := make([]reflect.Type, ft.NumIn())
	for i := range ts {
		ts[i] = ft.In(i)
	}
	return ts
}

func outTypes(ft reflect.Type) []reflect.Type {
	ts := make([]reflect.Type, ft.NumOut())
	for i := range ts {
		ts[i] = ft.Out(i)
	}
	return ts
}

func joinTypes(ts []reflect.Type) string {
	s := make([]string, len(ts))
	for i, t := range ts {
		s[i] = t.String()
	}
	return strings.Join(s, ", ")
}

// decodeError marks a request body that did not decode (status 400).
type decodeError struct{ err error }

func (e *decodeError) Error() string { return "decode request: " + e.err.Error() }
func (e *decodeError) Unwrap() error { return e.err }

// describe turns a type into a registry.Value tree (field names as encoded
// by encoding/json where tagged), to advertise endpoints' shapes.
func describe(name string, t reflect.Type, depth int) *registry.Value {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	v := &registry.Value{Name: name, Type: t.String()}
	if t.Kind() != reflect.Struct || depth >= 3 {
		return v
	}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		fname := f.Name
		if tag := f.Tag.Get("json"); tag != "" {
			if tag == "-" {
				continue
			}
			for j := 0; j < len(tag); j++ {
				if tag[j] == ',' {
					tag = tag[:j]
					break
				}
			}
			if tag != "" {
				fname = tag
			}
		}
		v.Values = append(v.Values, describe(fname, f.Type, depth+1))
	}
	return v
}

// HandlerOption configures the endpoints added by one Handle or HandleFunc
// call.
type HandlerOption func(*handlerOptions)

type handlerOptions struct {
	idempotent []string // nil: none; empty and idemAll: all
	idemAll    bool
	metadata   []endpointMeta
}

type endpointMeta struct {
	name string
	md   map[string]string
}

// Idempotent publishes endpoints as safe to run more than once (endpoint
// metadata registry.MetaIdempotent = "true"): clients then retry them on
// another node even after a failure after which they may have run (a
// timeout, a broken connection). With no names it marks every endpoint the
// call adds; a name is a method name ("Get") or an endpoint name
// ("Cache.Get"), and a name that matches no endpoint is an error.
func Idempotent(names ...string) HandlerOption {
	return func(o *handlerOptions) {
		if len(names) == 0 {
			o.idemAll = true
		}
		o.idempotent = append(o.idempotent, names...)
	}
}

// EndpointMetadata publishes metadata on one endpoint, named by method or
// endpoint name (checked against the registry's limits at Start).
func EndpointMetadata(name string, md map[string]string) HandlerOption {
	return func(o *handlerOptions) { o.metadata = append(o.metadata, endpointMeta{name, md}) }
}

// applyHandlerOptions sets the endpoints' metadata from opts.
func applyHandlerOptions(hs []*handler, opts []HandlerOption) error {
	if len(opts) == 0 {
		return nil
	}
	var o handlerOptions
	for _, f := range opts {
		f(&o)
	}
	set := func(name, k, v string) error {
		found := false
		for _, h := range hs {
			if name == "" || h.name == name || strings.TrimPrefix(h.name, h.name[:strings.LastIndexByte(h.name, '.')+1]) == name {
				if h.endpoint.Metadata == nil {
					h.endpoint.Metadata = map[string]string{}
				}
				h.endpoint.Metadata[k] = v
				found = true
			}
		}
		if !found {
			return fmt.Errorf("%w: handler option names %q, which matches no endpoint added", ErrBadHandler, name)
		}
		return nil
	}
	if o.idemAll {
		if err := set("", registry.MetaIdempotent, "true"); err != nil {
			return err
		}
	}
	for _, n := range o.idempotent {
		if err := set(n, registry.MetaIdempotent, "true"); err != nil {
			return err
		}
	}
	for _, m := range o.metadata {
		for k, v := range m.md {
			if err := set(m.name, k, v); err != nil {
				return err
			}
		}
	}
	return nil
}

// methodCall calls a handler method on req and rsp, both pointers (of the
// method's types: the caller checks).
type methodCall func(ctx context.Context, req, rsp reflect.Value) error

// rawMethod is the form every handler method has once its receiver, its
// request and its response are seen as the pointers they are.
type rawMethod func(recv unsafe.Pointer, ctx context.Context, req, rsp unsafe.Pointer) error

// directCall returns a call of method m of recv (a value of type
// recv.Type(), the m.Index'th method of that type) that does not go
// through reflect.Value.Call, or nil when it cannot make one.
//
// reflect.Value.Call costs about four allocations a call (the arguments'
// and the results' slices, the method value's receiver) and a good deal
// of time; the server calls every request's handler this way.
//
// For a receiver of pointer type *T, the method expression (*T).M, of
// type func(*T, context.Context, *Req, *Rsp) error, is called through a
// variable of type rawMethod holding the same func value. This relies on
// the gc compiler's calling convention (ABIInternal, and ABI0 the same):
// arguments are assigned to registers and stack slots by their shapes
// alone, and *T, *Req, *Rsp and unsafe.Pointer are all one pointer word
// (same registers, same stack slots, same pointer maps for the garbage
// collector), context.Context and error are the same interface types on
// both sides. The func value itself is a real one (a pointer to a closure
// whose first word is the method's code) that reflect made for the method
// expression, copied into the rawMethod variable by reflect (reflect.NewAt
// and Set with the method's func type, so the write is typed). Nothing is
// converted but the static types of pointers; the callee sees exactly the
// arguments it would see from reflect.Value.Call or a direct call of
// (*T).M. The receiver is kept alive by the closure below; req and rsp by
// the caller.
//
// A receiver of another kind (a struct, a named map or func...) is passed
// by value, in as many registers as its type needs: for those the pointer
// type's method set has a compiler-generated wrapper (*T).M that copies *p
// and calls T.M; the closure holds a pointer to a copy of the receiver
// (the value given to Handle was already a copy, in its interface, and a
// value method gets a copy of it on every call, so nothing can tell). When
// *T has no such method (reflect made *T at run time, without methods),
// directCall returns nil and the handler is called with reflection.
func directCall(recv reflect.Value, m reflect.Method) methodCall {
	var fn reflect.Value // the method expression, its receiver a pointer
	var p unsafe.Pointer // the receiver
	switch t := recv.Type(); {
	case t.Kind() == reflect.Pointer:
		fn, p = m.Func, recv.UnsafePointer()
	default:
		pm, ok := reflect.PointerTo(t).MethodByName(m.Name)
		if !ok {
			return nil
		}
		cp := reflect.New(t)
		cp.Elem().Set(recv)
		fn, p = pm.Func, cp.UnsafePointer()
	}
	if ft := fn.Type(); ft.NumIn() != 4 || ft.In(0).Kind() != reflect.Pointer || ft.In(1) != ctxType ||
		ft.In(2).Kind() != reflect.Pointer || ft.In(3).Kind() != reflect.Pointer || ft.NumOut() != 1 || ft.Out(0) != errorType {
		return nil // not the shape rawMethod stands for (cannot happen after badSignature)
	}
	var raw rawMethod
	reflect.NewAt(fn.Type(), unsafe.Pointer(&raw)).Elem().Set(fn)
	return func(ctx context.Context, req, rsp reflect.Value) error {
		return raw(p, ctx, req.UnsafePointer(), rsp.UnsafePointer())
	}
}

// reflectCall calls fn, a method value, with reflect.Value.Call.
func reflectCall(fn reflect.Value) methodCall {
	return func(ctx context.Context, req, rsp reflect.Value) error {
		res := fn.Call([]reflect.Value{reflect.ValueOf(&ctx).Elem(), req, rsp})
		err, _ := res[0].Interface().(error)
		return err
	}
}
