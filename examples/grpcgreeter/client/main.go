// Command client is a plain grpc-go client of the gRPC greeter: it dials
// beacon:///greeter through Beacon's resolver (the registry chosen by the
// standard flags, default mdns) and calls SayHello --count times, one call
// every --every, printing the node that answered each call.
//
//	client --registry etcd --registry_address 127.0.0.1:2379 --count 10
//
// --balancer picks the load-balancing policy (beacon_least_loaded,
// beacon_round_robin, beacon_random, or grpc-go's round_robin, pick_first);
// --retry=false drops the retry policy (grpcgreeter.RetryPolicy) that retries
// UNAVAILABLE attempts on another node.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/beacon-go/beacon/beacongrpc"
	"github.com/beacon-go/beacon/cmd"
	"github.com/beacon-go/beacon/examples/grpcgreeter"
	"github.com/beacon-go/beacon/registry/cache"
)

func main() {
	failed, err := run(os.Args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpcgreeter client:", err)
		os.Exit(1)
	}
	if failed > 0 {
		os.Exit(1)
	}
}

func run(args []string) (failed int, err error) {
	var (
		count   int
		every   time.Duration
		name    string
		lb      string
		retry   bool
		health  bool
		timeout time.Duration
	)
	cfg, help, err := cmd.Parse(cmd.App{Name: "client", Usage: "call the gRPC greeter through beacon:///greeter"}, args, []cli.Flag{
		&cli.IntFlag{Name: "count", Value: 6, Usage: "number of calls"},
		&cli.DurationFlag{Name: "every", Value: 200 * time.Millisecond, Usage: "pause between calls"},
		&cli.StringFlag{Name: "name", Value: "Ann", Usage: "who to greet"},
		&cli.StringFlag{Name: "balancer", Value: beacongrpc.LeastLoaded, Usage: "load-balancing policy of the service config"},
		&cli.BoolFlag{Name: "retry", Value: true, Usage: "retry UNAVAILABLE attempts on another node (grpcgreeter.RetryPolicy)"},
		&cli.BoolFlag{Name: "health_check", Usage: "client-side health checking: skip nodes whose health service says NOT_SERVING"},
		&cli.DurationFlag{Name: "timeout", Value: 5 * time.Second, Usage: "deadline of each call"},
	}, func(c *cmd.Context) error {
		count, every, name = c.Int("count"), c.Duration("every"), c.String("name")
		lb, retry, timeout = c.String("balancer"), c.Bool("retry"), c.Duration("timeout")
		health = c.Bool("health_check")
		return nil
	})
	if err != nil || help {
		return 0, err
	}
	if cfg.TLS.Enabled() {
		return 0, errors.New("the TLS flags are not supported by this example (give grpc.NewClient credentials)")
	}
	log, err := cmd.NewLogger(os.Stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return 0, err
	}
	ctx := context.Background()
	reg, err := cmd.NewRegistry(ctx, cfg.Registry, cfg.RegistryAddress, log, cfg.RegistryOptions()...)
	if err != nil {
		return 0, err
	}
	defer reg.Close()

	beacongrpc.RegisterBalancers() // once, before the first client
	// The cache keeps the last nodes for --registry_empty_hold (default:
	// the register TTL) when a registry restarted empty says there are none.
	b := beacongrpc.NewBuilder(reg, beacongrpc.WithLogger(log),
		beacongrpc.WithCacheOptions(cache.WithEmptyHold(cfg.RegistryEmptyHold)))
	defer b.Close()
	conn, err := grpc.NewClient(grpcgreeter.Target,
		grpc.WithResolvers(b),
		grpc.WithDefaultServiceConfig(grpcgreeter.ServiceConfig(lb, retry, health)),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return 0, err
	}
	defer conn.Close()

	for i := range count {
		if i > 0 {
			time.Sleep(every)
		}
		cctx, cancel := context.WithTimeout(ctx, timeout)
		// WaitForReady: the first call waits for the resolver's first
		// answer and a connection instead of failing at once.
		rsp, err := grpcgreeter.Hello(cctx, conn, name, 0, grpc.WaitForReady(true))
		cancel()
		if err != nil {
			failed++
			fmt.Printf("call %d: error: %v\n", i+1, err)
			continue
		}
		fmt.Printf("call %d: %s (from %s)\n", i+1, rsp.Message, rsp.Node)
	}
	return failed, nil
}
