package client_test

import (
	"context"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/beacon-go/beacon/client"
)

// TestSoak makes many calls over kept-alive connections: none may be lost
// or stall (a stall past the 2 s attempt timeout fails the call, since
// retries are off), and the heap must not grow with the number of calls.
// BEACON_SOAK_CALLS sets the count (default 20000; 2000 with -short).
func TestSoak(t *testing.T) {
	n := 20000
	if testing.Short() {
		n = 2000
	}
	if v, err := strconv.Atoi(os.Getenv("BEACON_SOAK_CALLS")); err == nil && v > 0 {
		n = v
	}
	e := newEnv(t, 1)
	ctx := context.Background()
	opts := []client.CallOption{client.WithRetries(0), client.WithRequestTimeout(2 * time.Second)}
	one := func() time.Duration {
		start := time.Now()
		var rsp HelloRsp
		if err := e.cli.Call(ctx, "greeter", "Greeter.Hello", benchReq, &rsp, opts...); err != nil || rsp.Msg != "Hello Ann" {
			t.Fatalf("call lost: %v %+v", err, rsp)
		}
		return time.Since(start)
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse
	}
	for range 1000 { // warm up pools and connections
		one()
	}
	before := heap()
	lat := make([]time.Duration, 0, n)
	for range n {
		lat = append(lat, one())
	}
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n / 16 {
				var rsp HelloRsp
				if err := e.cli.Call(ctx, "greeter", "Greeter.Hello", benchReq, &rsp, opts...); err != nil {
					t.Errorf("concurrent call lost: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	after := heap()
	slices.Sort(lat)
	t.Logf("%d sequential + %d concurrent calls, none lost; latency p50 %v p99 %v max %v; heap in use %d KiB -> %d KiB",
		n, n/16*16, lat[n/2], lat[n*99/100], lat[n-1], before>>10, after>>10)
	if grow := int64(after) - int64(before); grow > 4<<20 {
		t.Fatalf("heap grew by %d KiB over %d calls", grow>>10, 2*n)
	}
}
