package registrar_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/registry/registrar"
)

// denying refuses every registration as the backends do when the
// credentials are wrong.
type denying struct{ registry.Registry }

func (denying) Register(context.Context, *registry.Service, ...registry.RegisterOption) error {
	return fmt.Errorf("%w: consul: register greeter-1: Unexpected response code: 403", registry.ErrPermission)
}

type leveled struct {
	mu   sync.Mutex
	recs []string // "LEVEL message"
}

func (l *leveled) Enabled(context.Context, slog.Level) bool { return true }
func (l *leveled) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.recs = append(l.recs, r.Level.String()+" "+r.Message)
	l.mu.Unlock()
	return nil
}
func (l *leveled) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *leveled) WithGroup(string) slog.Handler      { return l }
func (l *leveled) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.recs...)
}

func (l *leveled) count(prefix string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.recs {
		if strings.HasPrefix(r, prefix) {
			n++
		}
	}
	return n
}

// A registry that refuses the credentials is logged at Error as a
// permission error, at the first registration and at every retry.
func TestPermissionDeniedLogged(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	lg := &leveled{}
	r, err := registrar.New(denying{mem}, svc(), registrar.TTL(time.Second), registrar.Interval(100*time.Millisecond),
		registrar.DrainGrace(0), registrar.Logger(slog.New(lg)))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v, want nil (the heartbeat retries)", err)
	}
	waitFor(t, "two heartbeat errors", func() bool {
		return lg.count("ERROR registrar: heartbeat failed: registry permission denied") >= 2
	})
	if lg.count("ERROR registrar: register failed: registry permission denied") != 1 {
		t.Errorf("logs %v", lg.all())
	}
	if n := lg.count("WARN"); n != 0 {
		t.Errorf("%d warnings: a permission error is not a passing outage: %v", n, lg.all())
	}
	if err := r.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}
