package registry

import (
	"errors"
	"fmt"
)

var (
	// ErrNotFound: the service has no nodes in the registry.
	ErrNotFound = errors.New("registry: service not found")
	// ErrWatcherStopped: the watcher was stopped, its context ended, or the
	// registry was closed.
	ErrWatcherStopped = errors.New("registry: watcher stopped")
	// ErrClosed: the registry was closed.
	ErrClosed = errors.New("registry: closed")
	// ErrInvalid: the input failed validation. The concrete error is a
	// *ValidationError.
	ErrInvalid = errors.New("registry: invalid input")
	// ErrUnavailable: the backend could not be reached or answered with an
	// error. Backends wrap their cause with it.
	ErrUnavailable = errors.New("registry: backend unavailable")
	// ErrMalformed: a record read from the backend could not be decoded
	// (written by another tool, truncated, or hostile).
	ErrMalformed = errors.New("registry: malformed record")
	// ErrReadOnly: the backend serves nodes it does not own (a static list,
	// a file) and refuses Register and Deregister.
	ErrReadOnly = errors.New("registry: read-only")
	// ErrPermission: the backend refused the credentials (a wrong password,
	// an unknown or missing ACL token, a client certificate it does not
	// accept as a user) or denied the operation to them. Backends wrap their
	// cause with it, never with ErrUnavailable as well: retrying does not
	// help until the credentials or the backend's grants change.
	ErrPermission = errors.New("registry: permission denied")
)

// ValidationError says which field of which input is invalid and why. It
// matches ErrInvalid with errors.Is.
type ValidationError struct {
	Field  string // e.g. "service.name", "node[0].address"
	Value  string // the offending value, truncated
	Reason string
}

func (e *ValidationError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("registry: invalid %s: %s", e.Field, e.Reason)
	}
	return fmt.Sprintf("registry: invalid %s %q: %s", e.Field, e.Value, e.Reason)
}

// Is reports whether target is ErrInvalid.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }
