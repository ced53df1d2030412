// Command server runs one greeter node. Flags and environment choose the
// registry (default mdns), e.g. `server --registry etcd --registry_address
// 127.0.0.1:2379`; --node names the node in answers; --log_level debug logs
// one line per request.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/beacon-go/beacon"
	"github.com/beacon-go/beacon/cmd"
	"github.com/beacon-go/beacon/examples/greeter"
	"github.com/beacon-go/beacon/server"
)

func main() {
	g := &greeter.Greeter{}
	svc, err := cmd.NewService(cmd.App{
		Usage: "run one node of the greeter service",
		Flags: []cli.Flag{&cli.StringFlag{Name: "node", EnvVars: []string{"GREETER_NODE"}, Usage: "node name shown in answers"},
			&cli.DurationFlag{Name: "delay", Usage: "answer each call after this delay (to watch load balancing)"}},
		Action: func(c *cli.Context) error {
			g.Delay = c.Duration("delay")
			g.Node = c.String("node")
			if g.Node == "" {
				g.Node, _ = os.Hostname()
			}
			return nil
		},
	}, beacon.Name("greeter"), beacon.Version("1.0.0"))
	if errors.Is(err, cmd.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "greeter:", err)
		os.Exit(1)
	}
	// Hello has no side effects: callers may retry it on another node even
	// after a failure after which it may have run (a timeout, a node killed).
	if err := svc.Handle(g, server.Idempotent("Hello")); err != nil {
		fmt.Fprintln(os.Stderr, "greeter:", err)
		os.Exit(1)
	}
	if err := svc.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "greeter:", err)
		os.Exit(1)
	}
}
