// Command client calls the greeter service by name, --count times, one call
// every --every, and prints which node answered each call.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/beacon-go/beacon"
	"github.com/beacon-go/beacon/cmd"
	"github.com/beacon-go/beacon/examples/greeter"
)

func main() {
	var count int
	var every time.Duration
	var name string
	svc, err := cmd.NewService(cmd.App{
		Usage: "call the greeter service by name and print which node answers",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "count", Value: 6, Usage: "number of calls"},
			&cli.DurationFlag{Name: "every", Value: 200 * time.Millisecond, Usage: "pause between calls"},
			&cli.StringFlag{Name: "name", Value: "Ann", Usage: "who to greet"},
		},
		Action: func(c *cli.Context) error {
			count, every, name = c.Int("count"), c.Duration("every"), c.String("name")
			return nil
		},
	}, beacon.LogLevel(slog.LevelWarn)) // --log_level overrides it
	if errors.Is(err, cmd.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		os.Exit(1)
	}
	defer svc.Stop(context.Background())
	failed := 0
	for i := range count {
		if i > 0 {
			time.Sleep(every)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		rsp := new(greeter.HelloRsp)
		err := svc.Client().Call(ctx, "greeter", "Greeter.Hello", &greeter.HelloReq{Name: name}, rsp)
		cancel()
		if err != nil {
			failed++
			fmt.Printf("call %d: error: %v\n", i+1, err)
			continue
		}
		fmt.Printf("call %d: %s (from %s)\n", i+1, rsp.Msg, rsp.Node)
	}
	if failed > 0 {
		os.Exit(1)
	}
}
