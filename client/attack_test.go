package client_test

import (
	"context"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/internal/wire"
	"github.com/beacon-go/beacon/server"
)

// TestMeasureAttacks measures what hostile peers cost a server and whether a
// well-behaved client is still served: the README's "Hostile peers" table.
// It runs with BEACON_MEASURE=1 (without -race for the README's figures):
//
//	BEACON_MEASURE=1 go test -run MeasureAttacks -v ./client
func TestMeasureAttacks(t *testing.T) {
	if os.Getenv("BEACON_MEASURE") != "1" {
		t.Skip("set BEACON_MEASURE=1 to measure")
	}
	mem := func() (int, uint64) {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return runtime.NumGoroutine(), m.HeapInuse + m.StackInuse
	}
	body := `{"name":"` + strings.Repeat("x", 4000) + `"}`
	attacks := []struct {
		name string
		run  func(t *testing.T, addr string)
	}{
		{"5,000 idle connections", func(t *testing.T, addr string) {
			for range 5000 {
				rawConn(t, addr)
			}
		}},
		{"one connection sends 100,000 4 KB requests and never reads", func(t *testing.T, addr string) {
			c, _ := rawConn(t, addr)
			var sent atomic.Int64
			go func() {
				var b []byte
				for i := range 100_000 {
					b, _ = wire.AppendRequest(b[:0], uint64(i+1), "Greeter.Hello", "", 0, nil, []byte(body))
					if _, err := c.Write(b); err != nil {
						return
					}
					sent.Add(1)
				}
			}()
			time.Sleep(time.Second)
			t.Logf("  the server took %d requests before it stopped reading or closed the connection", sent.Load())
		}},
		{"1,000 connections announce a 4 MiB frame and send 9 bytes", func(t *testing.T, addr string) {
			for range 1000 {
				c, _ := rawConn(t, addr)
				c.Write([]byte{0, 0x40, 0, 0, wire.KindRequest, 0, 0, 0, 0, 0, 0, 0, 1})
			}
		}},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			e := newEnv(t, 1, server.MaxConcurrentRequests(64))
			addr := e.servers[0].Addr().String()
			cli := client.New(nil)
			defer cli.Close()
			g0, m0 := mem()
			a.run(t, addr)
			time.Sleep(300 * time.Millisecond)
			g1, m1 := mem()
			ok, worst := 0, time.Duration(0)
			for range 1000 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				start := time.Now()
				if cli.Call(ctx, "greeter", "Greeter.Hello", &HelloReq{Name: "good"}, new(HelloRsp), client.WithAddress(addr)) == nil {
					ok++
				}
				worst = max(worst, time.Since(start))
				cancel()
			}
			t.Logf("%s: +%d goroutines, +%.1f MiB (server and attacker); well-behaved client %d/1000 ok, slowest %v",
				a.name, g1-g0, float64(int64(m1)-int64(m0))/(1<<20), ok, worst.Round(time.Millisecond))
			if ok < 990 {
				t.Errorf("only %d of 1000 well-behaved calls succeeded", ok)
			}
		})
	}
}
