package server

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

func TestRegisterBounds(t *testing.T) {
	tests := []struct {
		name          string
		ttl, interval time.Duration
		want          error
	}{
		{"defaults", DefaultRegisterTTL, DefaultRegisterInterval, nil},
		{"TTL at the maximum", MaxRegisterTTL, 5 * time.Second, nil},
		{"interval just below the maximum TTL", MaxRegisterTTL, MaxRegisterTTL - time.Nanosecond, nil},
		{"TTL above the maximum", MaxRegisterTTL + time.Nanosecond, 5 * time.Second, ErrBadTTL},
		{"TTL of a wrapped number of seconds", 431459 * time.Hour, 5 * time.Second, ErrBadTTL},
		{"largest TTL", math.MaxInt64, 5 * time.Second, ErrBadTTL},
		{"interval at the maximum TTL", MaxRegisterTTL, MaxRegisterTTL, ErrBadInterval},
		{"zero TTL", 0, 5 * time.Second, ErrBadInterval},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(Name("x"), RegisterTTL(tc.ttl), RegisterInterval(tc.interval))
			if !errors.Is(err, tc.want) {
				t.Fatalf("New(TTL %v, interval %v) = %v, want %v", tc.ttl, tc.interval, err, tc.want)
			}
			if errors.Is(err, ErrBadTTL) && !strings.Contains(err.Error(), "at most "+MaxRegisterTTL.String()) {
				t.Fatalf("error %q does not give the maximum", err)
			}
		})
	}
}
