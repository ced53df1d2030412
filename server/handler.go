package server

import (
	"context"
	"errors"
	"fmt"
	"reflect"

	"github.com/beacon-go/beacon/codec"
	"github.com/beacon-go/beacon/registry"
)

// ErrBadHandler: a value given to Handle has no method of the handler form.
var ErrBadHandler = errors.New("server: not a handler")

// handler is one endpoint: decode a request, run it, encode the response.
type handler struct {
	name     string
	endpoint *registry.Endpoint
	// serve decodes body with c, runs the method, and returns the response
	// value to encode.
	serve func(ctx context.Context, c codec.Codec, body []byte) (any, error)
}

var (
	ctxType   = reflect.TypeFor[context.Context]()
	errorType = reflect.TypeFor[error]()
)

// handlersOf returns one handler per exported method of h of the form
//
//	func (T) Name(ctx context.Context, req *Req, rsp *Rsp) error
//
// named "T.Name" (T without its package and pointer).
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
	for i := range t.NumMethod() {
		m := t.Method(i)
		mt := m.Type
		if !m.IsExported() || mt.NumIn() != 4 || mt.NumOut() != 1 || mt.In(1) != ctxType ||
			mt.In(2).Kind() != reflect.Pointer || mt.In(3).Kind() != reflect.Pointer || mt.Out(0) != errorType {
			continue
		}
		reqT, rspT := mt.In(2).Elem(), mt.In(3).Elem()
		fn := v.Method(i)
		name := typeName + "." + m.Name
		out = append(out, &handler{
			name:     name,
			endpoint: &registry.Endpoint{Name: name, Request: describe(reqT.Name(), reqT, 0), Response: describe(rspT.Name(), rspT, 0)},
			serve: func(ctx context.Context, c codec.Codec, body []byte) (any, error) {
				req := reflect.New(reqT)
				if err := c.Unmarshal(body, req.Interface()); err != nil {
					return nil, &decodeError{err}
				}
				rsp := reflect.New(rspT)
				res := fn.Call([]reflect.Value{reflect.ValueOf(ctx), req, rsp})
				if err, _ := res[0].Interface().(error); err != nil {
					return nil, err
				}
				return rsp.Interface(), nil
			},
		})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %s has no method func(context.Context, *Req, *Rsp) error", ErrBadHandler, t)
	}
	return out, nil
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
