package registry

import (
	"context"
	"time"
)

// RegisterOptions are the settings of one Register call.
type RegisterOptions struct {
	// TTL is how long the nodes live without being registered again.
	// Zero means no expiry where the backend allows it.
	TTL time.Duration
}

// RegisterOption configures Register.
type RegisterOption func(*RegisterOptions)

// RegisterTTL sets the time to live of the registered nodes.
func RegisterTTL(d time.Duration) RegisterOption {
	return func(o *RegisterOptions) { o.TTL = d }
}

// DeregisterOptions are the settings of one Deregister call.
type DeregisterOptions struct{}

// DeregisterOption configures Deregister.
type DeregisterOption func(*DeregisterOptions)

// GetOptions are the settings of one GetService call.
type GetOptions struct{}

// GetOption configures GetService.
type GetOption func(*GetOptions)

// ListOptions are the settings of one ListServices call.
type ListOptions struct{}

// ListOption configures ListServices.
type ListOption func(*ListOptions)

// WatchOptions are the settings of one Watch call.
type WatchOptions struct {
	// Service limits the watch to one service name; empty watches all.
	Service string
}

// WatchOption configures Watch.
type WatchOption func(*WatchOptions)

// WatchService limits a watch to the named service.
func WatchService(name string) WatchOption {
	return func(o *WatchOptions) { o.Service = name }
}

// ApplyRegister folds opts into RegisterOptions; for backend authors.
func ApplyRegister(opts ...RegisterOption) RegisterOptions {
	var o RegisterOptions
	for _, f := range opts {
		f(&o)
	}
	return o
}

// ApplyWatch folds opts into WatchOptions; for backend authors.
func ApplyWatch(opts ...WatchOption) WatchOptions {
	var o WatchOptions
	for _, f := range opts {
		f(&o)
	}
	return o
}

// WatchArgs folds opts into WatchOptions and checks what every Watch must
// check first: a valid service name (if any) and a live ctx. For backend
// authors.
func WatchArgs(ctx context.Context, opts ...WatchOption) (WatchOptions, error) {
	o := ApplyWatch(opts...)
	if o.Service != "" {
		if err := ValidateName(o.Service); err != nil {
			return o, err
		}
	}
	return o, ctx.Err()
}
