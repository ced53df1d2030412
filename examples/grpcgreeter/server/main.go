// Command server runs one node of the gRPC greeter: a plain grpc.Server
// serving helloworld.Greeter, kept registered with Beacon by
// beacongrpc.Server. The standard flags choose the registry (default mdns),
// e.g.
//
//	server --registry etcd --registry_address 127.0.0.1:2379 --server_address 127.0.0.1:50051 --node a
//
// --register_ttl and --register_interval set the registration's TTL and
// heartbeat, --drain_grace how long it keeps serving after deregistering;
// --node names the node in replies. On SIGINT or SIGTERM it drains: health
// NOT_SERVING, deregister, the drain grace, GracefulStop (bounded by
// --stop_timeout).
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"

	"github.com/beacon-go/beacon/beacongrpc"
	"github.com/beacon-go/beacon/cmd"
	"github.com/beacon-go/beacon/examples/grpcgreeter"
	"github.com/beacon-go/beacon/registry/registrar"
)

func main() {
	if err := run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "grpcgreeter server:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	g := &grpcgreeter.Server{}
	var grace, stopTimeout time.Duration
	cfg, help, err := cmd.Parse(cmd.App{Name: "server", Usage: "a gRPC greeter node registered with Beacon"}, args, []cli.Flag{
		&cli.StringFlag{Name: "node", EnvVars: []string{"GREETER_NODE"}, Usage: "node name shown in replies (default: the host name)"},
		&cli.DurationFlag{Name: "delay", Usage: "answer each call after this delay"},
		&cli.DurationFlag{Name: "drain_grace", Value: registrar.DefaultDrainGrace, Usage: "how long to keep serving after deregistering, on SIGTERM"},
		&cli.DurationFlag{Name: "stop_timeout", Value: beacongrpc.DefaultStopTimeout, Usage: "bound of GracefulStop, on SIGTERM"},
	}, func(c *cmd.Context) error {
		g.Node, g.Delay = c.String("node"), c.Duration("delay")
		grace, stopTimeout = c.Duration("drain_grace"), c.Duration("stop_timeout")
		return nil
	})
	if err != nil || help {
		return err
	}
	if cfg.TLS.Enabled() {
		return errors.New("the TLS flags are not supported by this example (give grpc.NewServer credentials)")
	}
	if g.Node == "" {
		g.Node, _ = os.Hostname()
	}
	log, err := cmd.NewLogger(os.Stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	reg, err := cmd.NewRegistry(ctx, cfg.Registry, cfg.RegistryAddress, log, cfg.RegistryOptions()...)
	if err != nil {
		return err
	}
	defer reg.Close()

	gs := grpc.NewServer()
	g.Register(gs)
	srv, err := beacongrpc.NewServer(gs, reg,
		beacongrpc.Name(grpcgreeter.Name), beacongrpc.Version("1.0.0"),
		beacongrpc.RegisterTTL(cfg.RegisterTTL), beacongrpc.RegisterInterval(cfg.RegisterInterval),
		beacongrpc.DrainGrace(grace), beacongrpc.StopTimeout(stopTimeout),
		beacongrpc.Descriptors(grpcgreeter.Files), beacongrpc.Logger(log))
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.ServerAddress)
	if err != nil {
		return err
	}
	if err := srv.Start(ctx, ln); err != nil {
		return err
	}
	log.Info("grpcgreeter: serving", "node", g.Node, "addr", ln.Addr().String(), "registry", cfg.Registry)

	<-ctx.Done()
	stop() // a second signal kills at once
	log.Info("grpcgreeter: signal received; draining", "node", g.Node)
	sctx, cancel := context.WithTimeout(context.Background(), grace+stopTimeout+registrar.DeregisterTimeout)
	defer cancel()
	if err := srv.Stop(sctx); err != nil {
		log.Warn("grpcgreeter: deregister failed", "err", err)
	}
	return nil
}
