package registry

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// Limits of BadRecords.
const (
	// BadRecordLogEvery is the shortest interval between two log lines about
	// the same bad key.
	BadRecordLogEvery = 10 * time.Minute
	// BadRecordLogBurst is how many bad keys are named in the log per
	// BadRecordLogWindow; the others are counted in a summary line.
	BadRecordLogBurst = 5
	// BadRecordLogWindow is the window of BadRecordLogBurst.
	BadRecordLogWindow = time.Minute
	// MaxBadRecords is how many bad keys a BadRecords remembers.
	MaxBadRecords = 1024
)

// BadRecords remembers records that a backend could not decode, so that it
// need not fetch or decode the same version of a record again, and limits
// the warnings about them: a key is named in the log at most once per
// BadRecordLogEvery (with how many times it was skipped since), and at most
// BadRecordLogBurst keys are named per BadRecordLogWindow; the records not
// named are counted in a summary line (Flush). Every bad key is named
// eventually, as long as it stays bad and is read again. For backend
// authors; safe for concurrent use.
//
// A record's version is a token of the backend's (etcd: the key's mod
// revision) that changes whenever the record is written; zero means none.
// sum is a hash of its bytes (zero: unknown), which recognizes the same bad
// bytes written again.
type BadRecords struct {
	log *slog.Logger
	msg string
	now func() time.Time

	mu       sync.Mutex
	keys     map[string]*badRecord
	window   time.Time // start of the current BadRecordLogWindow
	named    int       // keys named in the window
	unnamed  int       // reports of keys not named since the last summary
	lastSumm time.Time
}

type badRecord struct {
	version    uint64
	sum        uint64
	size       int
	err        string
	loggedAt   time.Time // zero: never named
	suppressed int       // reports since loggedAt that were not logged
}

// NewBadRecords returns a BadRecords that logs to log with the message msg
// (e.g. "etcd registry: skipping malformed record").
func NewBadRecords(log *slog.Logger, msg string) *BadRecords {
	return &BadRecords{log: log, msg: msg, now: time.Now, keys: make(map[string]*badRecord)}
}

// Report records that key, at version, with sum, of size bytes (-1:
// unknown), is bad because of err, and logs it unless the limits say
// otherwise.
func (b *BadRecords) Report(key string, version, sum uint64, size int, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.keys[key]
	if e == nil {
		if len(b.keys) >= MaxBadRecords {
			for k := range b.keys { // forget an arbitrary one
				delete(b.keys, k)
				break
			}
		}
		e = &badRecord{}
		b.keys[key] = e
	}
	e.version, e.sum, e.size = version, sum, size
	if err != nil {
		e.err = clip(err.Error(), 200)
	}
	b.seenLocked(key, e)
}

// Known reports whether key was reported bad at version (non-zero), or
// with sum (non-zero): the caller skips it, which counts as a report of it.
func (b *BadRecords) Known(key string, version, sum uint64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.keys[key]
	if e == nil || (version == 0 || e.version != version) && (sum == 0 || e.sum != sum) {
		return false
	}
	if version != 0 {
		e.version = version
	}
	b.seenLocked(key, e)
	return true
}

// Has reports whether key is remembered as bad, at any version.
func (b *BadRecords) Has(key string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.keys[key]
	return ok
}

// Any reports whether some key remembered as bad starts with prefix.
func (b *BadRecords) Any(prefix string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for k := range b.keys {
		if strings.HasPrefix(k, prefix) {
			return true
		}
	}
	return false
}

// Forget drops key (deleted, or decoded fine now).
func (b *BadRecords) Forget(key string) {
	b.mu.Lock()
	delete(b.keys, key)
	b.mu.Unlock()
}

// Flush logs the summary of the reports not named individually, at most
// once per BadRecordLogWindow. Backends call it at the end of a listing.
func (b *BadRecords) Flush() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.flushLocked(b.now())
}

func (b *BadRecords) flushLocked(now time.Time) {
	if b.unnamed == 0 || !b.lastSumm.IsZero() && now.Sub(b.lastSumm) < BadRecordLogWindow {
		return
	}
	b.log.Warn(b.msg+"s not named above", "skipped", b.unnamed, "bad_keys_remembered", len(b.keys),
		"named_at_most", fmt.Sprintf("%d keys per %v, each once per %v", BadRecordLogBurst, BadRecordLogWindow, BadRecordLogEvery))
	b.unnamed, b.lastSumm = 0, now
}

// seenLocked logs a report of key if the limits allow, else counts it.
func (b *BadRecords) seenLocked(key string, e *badRecord) {
	now := b.now()
	if now.Sub(b.window) >= BadRecordLogWindow {
		b.flushLocked(now)
		b.window, b.named = now, 0
	}
	if !e.loggedAt.IsZero() && now.Sub(e.loggedAt) < BadRecordLogEvery {
		e.suppressed++
		return
	}
	if b.named >= BadRecordLogBurst {
		e.suppressed++
		b.unnamed++
		return
	}
	b.named++
	attrs := []any{"key", clip(key, 256)}
	if e.size >= 0 {
		attrs = append(attrs, "bytes", e.size)
	}
	attrs = append(attrs, "err", e.err)
	if e.suppressed > 0 {
		attrs = append(attrs, "skipped_since_last_logged", e.suppressed)
	}
	b.log.Warn(b.msg, attrs...)
	e.loggedAt, e.suppressed = now, 0
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
