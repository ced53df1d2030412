package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

type lines struct {
	mu sync.Mutex
	l  []string
}

func (l *lines) Enabled(context.Context, slog.Level) bool { return true }
func (l *lines) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool { b.WriteString(" " + a.String()); return true })
	l.mu.Lock()
	l.l = append(l.l, b.String())
	l.mu.Unlock()
	return nil
}
func (l *lines) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *lines) WithGroup(string) slog.Handler      { return l }
func (l *lines) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.l
	l.l = nil
	return out
}

func TestBadRecordsLimitsWarnings(t *testing.T) {
	var lg lines
	b := NewBadRecords(slog.New(&lg), "bad record")
	now := time.Unix(1000, 0)
	b.now = func() time.Time { return now }
	bad := errors.New("not JSON")

	// 50 bad keys: the first BadRecordLogBurst are named, the rest counted.
	for i := range 50 {
		b.Report(fmt.Sprintf("k%02d", i), 1, 7, 100, bad)
	}
	b.Flush()
	got := lg.take()
	if len(got) != BadRecordLogBurst+1 || !strings.Contains(got[0], "key=k00") || !strings.Contains(got[BadRecordLogBurst], "skipped=45") {
		t.Fatalf("first listing logged:\n%s", strings.Join(got, "\n"))
	}
	// The same keys again, known by version or by bytes: no line within
	// the window.
	for i := range 50 {
		key := fmt.Sprintf("k%02d", i)
		if !b.Known(key, 1, 0) || !b.Known(key, 2, 7) || b.Known(key, 3, 8) {
			t.Fatalf("%s: Known by version or by sum is wrong", key)
		}
	}
	b.Flush()
	if got := lg.take(); len(got) != 0 {
		t.Fatalf("second pass logged:\n%s", strings.Join(got, "\n"))
	}
	// A minute later: the summary of the skips of keys not named (45 x 2),
	// then the next keys get named, with their skips.
	now = now.Add(BadRecordLogWindow)
	for i := range 50 {
		b.Known(fmt.Sprintf("k%02d", i), 2, 0)
	}
	b.Flush()
	got = lg.take()
	if len(got) != BadRecordLogBurst+1 || !strings.Contains(got[0], "skipped=90") ||
		!strings.Contains(got[1], "key=k05") || !strings.Contains(got[1], "skipped_since_last_logged=3") {
		t.Fatalf("a window later:\n%s", strings.Join(got, "\n"))
	}
	// A named key is named again only BadRecordLogEvery later, with the
	// count of its skips since.
	now = now.Add(BadRecordLogEvery)
	b.Known("k00", 2, 0)
	if got := strings.Join(lg.take(), "\n"); !strings.Contains(got, "key=k00 bytes=100 err=not JSON skipped_since_last_logged=3") {
		t.Fatalf("k00 again:\n%s", got)
	}
	b.Forget("k00")
	if b.Has("k00") || b.Known("k00", 2, 7) || !b.Any("k0") || b.Any("x") {
		t.Fatal("Forget, Has or Any")
	}
}

func TestBadRecordsBounded(t *testing.T) {
	b := NewBadRecords(slog.New(slog.DiscardHandler), "bad record")
	for i := range 3 * MaxBadRecords {
		b.Report(fmt.Sprintf("k%d", i), 1, 1, 1, errors.New("x"))
	}
	if n := len(b.keys); n != MaxBadRecords {
		t.Fatalf("%d keys remembered, want at most %d", n, MaxBadRecords)
	}
}
