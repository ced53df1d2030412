// Package backoff is the capped, jittered exponential backoff and the
// context-aware sleep shared by Beacon's retry loops.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is a capped exponential backoff with jitter. It is not safe for
// concurrent use: each retry loop owns one.
type Backoff struct {
	base, max, cur time.Duration
}

// New returns a Backoff starting at base and doubling up to max.
func New(base, max time.Duration) *Backoff { return &Backoff{base: base, max: max, cur: base} }

// Peek returns the current step (the upper bound of the next delay).
func (b *Backoff) Peek() time.Duration { return b.cur }

// Next returns a delay between half the current step and the step, then
// doubles the step up to max.
func (b *Backoff) Next() time.Duration {
	d := b.cur/2 + rand.N(b.cur/2+1)
	b.cur = min(b.cur*2, b.max)
	return d
}

// Reset returns to the first step.
func (b *Backoff) Reset() { b.cur = b.base }

// Sleep waits d or until ctx is done; it reports whether the whole d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
