// Package metadata carries key-value pairs with a call: from the caller's
// context to the handler's (request metadata), and from the handler back to
// the caller (response metadata).
//
// A caller attaches metadata with NewOutgoingContext or
// AppendToOutgoingContext; the handler reads it with FromIncomingContext. A
// handler sets response metadata with server.SetResponseMetadata, and the
// caller reads it with the client.ResponseMetadata call option. Over HTTP,
// request headers become request metadata and response metadata becomes
// response headers (keys lower-cased).
//
// Keys are lower-case ASCII letters, digits and "-", "_", "."; values are
// printable ASCII or UTF-8 without control characters (so that both travel
// as HTTP headers). A call carries at most MaxEntries pairs and MaxSize
// bytes of keys and values in each direction; the client refuses a call
// over the limits before sending it, the server refuses one without running
// it (status 431), and a response over them loses its metadata, not its
// body. The deadline and cancellation are not metadata: they travel on
// their own, as before.
//
// An MD handed to a context, or read from one, is shared: treat it as
// read-only and Copy it to change it (the Append and Set helpers do).
package metadata

import (
	"context"
	"fmt"
	"maps"
	"strings"
)

// Limits on the metadata of one call, in each direction.
const (
	// MaxEntries is the most pairs a call carries.
	MaxEntries = 64
	// MaxSize is the most bytes of keys and values a call carries (like
	// HTTP servers' 8 KiB header limit).
	MaxSize = 8 << 10
	// MaxKeyLen is the longest key.
	MaxKeyLen = 255
)

// MD is call metadata: lower-case keys to values.
type MD map[string]string

// New returns an MD of the key-value pairs kv (keys lower-cased); a key
// without a value gets "".
func New(kv ...string) MD {
	md := make(MD, (len(kv)+1)/2)
	for i := 0; i < len(kv); i += 2 {
		v := ""
		if i+1 < len(kv) {
			v = kv[i+1]
		}
		md[strings.ToLower(kv[i])] = v
	}
	return md
}

// Get returns the value of key (looked up lower-cased).
func (md MD) Get(key string) string {
	if v, ok := md[key]; ok {
		return v
	}
	return md[strings.ToLower(key)]
}

// Copy returns a copy of md (nil for nil).
func (md MD) Copy() MD { return maps.Clone(md) }

// Size returns the bytes of md's keys and values.
func (md MD) Size() int {
	n := 0
	for k, v := range md {
		n += len(k) + len(v)
	}
	return n
}

// Join returns the union of mds; later ones win on equal keys.
func Join(mds ...MD) MD {
	out := MD{}
	for _, md := range mds {
		maps.Copy(out, md)
	}
	return out
}

// Error is metadata over the limits or with a malformed key or value.
type Error struct {
	Key    string // the key at fault, if one is
	Reason string
}

func (e *Error) Error() string {
	if e.Key != "" {
		return fmt.Sprintf("metadata %q: %s", e.Key, e.Reason)
	}
	return "metadata: " + e.Reason
}

// Validate checks md against the limits and the key and value rules; it
// returns a *Error naming what is wrong, or nil.
func Validate(md MD) error {
	if len(md) > MaxEntries {
		return &Error{Reason: fmt.Sprintf("%d entries: the limit is %d (metadata.MaxEntries)", len(md), MaxEntries)}
	}
	size := 0
	for k, v := range md {
		if err := CheckKey(k); err != nil {
			return err
		}
		if err := CheckValue(k, v); err != nil {
			return err
		}
		size += len(k) + len(v)
	}
	if size > MaxSize {
		return &Error{Reason: fmt.Sprintf("%d bytes: the limit is %d (metadata.MaxSize)", size, MaxSize)}
	}
	return nil
}

// CheckKey checks one key.
func CheckKey(k string) error {
	if k == "" || len(k) > MaxKeyLen {
		return &Error{Key: k, Reason: fmt.Sprintf("key of %d bytes: want 1 to %d", len(k), MaxKeyLen)}
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return &Error{Key: k, Reason: fmt.Sprintf("key has %q at %d: keys are lower-case letters, digits, '-', '_' and '.'", c, i)}
		}
	}
	return nil
}

// CheckValue checks the value of key k.
func CheckValue(k, v string) error {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return &Error{Key: k, Reason: fmt.Sprintf("value has control character %#x at %d", c, i)}
		}
	}
	return nil
}

type outgoingKey struct{}
type incomingKey struct{}

// NewOutgoingContext returns ctx carrying md as the request metadata of the
// calls made with it (replacing any set before).
func NewOutgoingContext(ctx context.Context, md MD) context.Context {
	return context.WithValue(ctx, outgoingKey{}, md)
}

// AppendToOutgoingContext returns ctx carrying its outgoing metadata plus
// the key-value pairs kv (keys lower-cased; later values win).
func AppendToOutgoingContext(ctx context.Context, kv ...string) context.Context {
	md, _ := FromOutgoingContext(ctx)
	return NewOutgoingContext(ctx, Join(md, New(kv...)))
}

// FromOutgoingContext returns the request metadata set on ctx by the caller.
func FromOutgoingContext(ctx context.Context) (MD, bool) {
	md, ok := ctx.Value(outgoingKey{}).(MD)
	return md, ok && md != nil
}

// NewIncomingContext returns ctx carrying md as the metadata of the request
// being handled (servers set it; tests may too).
func NewIncomingContext(ctx context.Context, md MD) context.Context {
	return context.WithValue(ctx, incomingKey{}, md)
}

// FromIncomingContext returns the request metadata the caller sent, in a
// handler's context. It is not sent further by calls made with that
// context: forward what you mean to with NewOutgoingContext.
func FromIncomingContext(ctx context.Context) (MD, bool) {
	md, ok := ctx.Value(incomingKey{}).(MD)
	return md, ok && md != nil
}
