package cache

import (
	"math/rand/v2"
	"time"
)

// backoff is a capped exponential backoff with jitter; not concurrency safe.
type backoff struct {
	base, max, cur time.Duration
}

func newBackoff(base, max time.Duration) *backoff { return &backoff{base: base, max: max, cur: base} }

func (b *backoff) peek() time.Duration { return b.cur }

// next returns a delay between cur/2 and cur and doubles cur up to max.
func (b *backoff) next() time.Duration {
	d := b.cur/2 + rand.N(b.cur/2+1)
	b.cur = min(b.cur*2, b.max)
	return d
}

func (b *backoff) reset() { b.cur = b.base }
