package backoff

import (
	"context"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	b := New(100*time.Millisecond, time.Second)
	for i, step := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		step *= time.Millisecond
		if b.Peek() != step {
			t.Fatalf("step %d = %v, want %v", i, b.Peek(), step)
		}
		if d := b.Next(); d < step/2 || d > step {
			t.Fatalf("delay %v outside [%v, %v]", d, step/2, step)
		}
	}
	b.Reset()
	if b.Peek() != 100*time.Millisecond {
		t.Fatal("Reset did not return to the first step")
	}
}

func TestSleep(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if Sleep(ctx, time.Hour) {
		t.Fatal("Sleep ignored a canceled context")
	}
	if !Sleep(context.Background(), time.Millisecond) {
		t.Fatal("Sleep did not complete")
	}
}
