// Command beacon inspects a registry and calls services by name.
//
//	beacon services                        every service, its versions and node counts
//	beacon describe greeter                versions, nodes, addresses, metadata, endpoints
//	beacon watch [greeter]                 live registry events until interrupted
//	beacon call greeter Greeter.Hello '{"name":"Ann"}'
//	beacon call greeter helloworld.Greeter.SayHello '{"name":"Ann"}'   a gRPC node
//
// call reaches Beacon nodes and gRPC nodes (registry.ProtocolGRPC, e.g.
// grpc-go servers registered with package beacongrpc): the JSON request is
// turned into the method's protobuf request with the descriptors of the
// node's server reflection (grpc.reflection.v1), and the response back into
// JSON; a gRPC node without reflection gets the JSON as it is (it must
// accept JSON: beacongrpc.JSONCodec). gRPC endpoints are named
// package.Service.Method; Service.Method works too when the node serves
// reflection. --address calls one node directly (--protocol grpc for a
// gRPC node).
//
// The registry is chosen like a service's: --registry / BEACON_REGISTRY /
// MICRO_REGISTRY (default mdns) and --registry_address. Output is a
// human-readable table; --json prints JSON for scripts. The exit code is 0 on
// success, 1 on a failed call or lookup, 2 on bad usage.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/beacon-go/beacon/beacongrpc"
	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/cmd"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/selector"
	"github.com/beacon-go/beacon/status"
	"github.com/beacon-go/beacon/transport"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// exitError carries an exit code through urfave/cli.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func fail(code int, format string, args ...any) error {
	return &exitError{code: code, err: fmt.Errorf(format, args...)}
}

// run is the whole program; it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	// The CLI logs like a service (cmd.NewLogger: --log_format), at warn
	// unless --log_level or --verbose (debug) says otherwise.
	log := slog.New(slog.DiscardHandler)
	var reg registry.Registry
	open := func(c *cli.Context) (registry.Registry, error) {
		cfg, err := cmd.ConfigFrom(c)
		if err != nil {
			return nil, &exitError{code: 2, err: err}
		}
		level := slog.LevelWarn
		if cfg.Set[cmd.FlagLogLevel] {
			level = cfg.LogLevel
		}
		if c.Bool("verbose") {
			level = slog.LevelDebug
		}
		if log, err = cmd.NewLogger(stderr, level, cfg.LogFormat); err != nil {
			return nil, &exitError{code: 2, err: err}
		}
		octx, cancel := context.WithTimeout(ctx, c.Duration("timeout"))
		defer cancel()
		r, err := cmd.NewRegistry(octx, cfg.Registry, cfg.RegistryAddress, log, cfg.RegistryOptions()...)
		if err != nil {
			return nil, fail(1, "registry %s: %w", cfg.Registry, err)
		}
		reg = r
		return r, nil
	}
	defer func() {
		if reg != nil {
			reg.Close()
		}
	}()
	app := &cli.App{
		Name:            "beacon",
		Usage:           "inspect a service registry and call services by name",
		HideHelpCommand: true,
		Writer:          stdout,
		ErrWriter:       stderr,
		ExitErrHandler:  func(*cli.Context, error) {},
		Flags: append(cmd.Flags(),
			&cli.BoolFlag{Name: "json", Usage: "print JSON instead of tables"},
			&cli.DurationFlag{Name: "timeout", Value: 10 * time.Second, Usage: "bound on registry lookups and calls"},
			&cli.BoolFlag{Name: "verbose", Usage: "log debug messages to stderr"},
		),
		Commands: []*cli.Command{
			{
				Name: "services", Aliases: []string{"list", "ls"}, Usage: "list services with their versions and node counts",
				Action: func(c *cli.Context) error {
					r, err := open(c)
					if err != nil {
						return err
					}
					lctx, cancel := context.WithTimeout(ctx, c.Duration("timeout"))
					defer cancel()
					list, err := r.ListServices(lctx)
					if err != nil {
						return fail(1, "list services: %w", err)
					}
					return printServices(c, stdout, list)
				},
			},
			{
				Name: "describe", Aliases: []string{"get"}, Usage: "show a service's versions, nodes, metadata and endpoints", ArgsUsage: "NAME",
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return fail(2, "usage: beacon describe NAME")
					}
					r, err := open(c)
					if err != nil {
						return err
					}
					gctx, cancel := context.WithTimeout(ctx, c.Duration("timeout"))
					defer cancel()
					svcs, err := r.GetService(gctx, c.Args().First())
					if err != nil {
						return fail(1, "describe %s: %w", c.Args().First(), err)
					}
					return printDescribe(c, stdout, svcs)
				},
			},
			{
				Name: "watch", Usage: "print registry events as they happen (until interrupted)", ArgsUsage: "[NAME]",
				Action: func(c *cli.Context) error {
					r, err := open(c)
					if err != nil {
						return err
					}
					var opts []registry.WatchOption
					if c.NArg() > 0 {
						opts = append(opts, registry.WatchService(c.Args().First()))
					}
					w, err := r.Watch(ctx, opts...)
					if err != nil {
						return fail(1, "watch: %w", err)
					}
					defer w.Stop()
					for {
						ev, err := w.Next()
						if err != nil {
							if ctx.Err() != nil {
								return nil
							}
							return fail(1, "watch: %w", err)
						}
						printEvent(c, stdout, ev)
					}
				},
			},
			{
				Name: "call", Usage: "call an endpoint of a service by name with a JSON request", ArgsUsage: "NAME ENDPOINT [JSON]",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "address", Usage: "call this node address directly"},
					&cli.StringFlag{Name: "protocol", Value: registry.ProtocolBeacon, Usage: "the protocol of the node called with --address: beacon or grpc"},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() < 2 || c.NArg() > 3 {
						return fail(2, "usage: beacon call NAME ENDPOINT [JSON]")
					}
					body := c.Args().Get(2)
					if body == "" {
						body = "{}"
					}
					if !json.Valid([]byte(body)) {
						return fail(2, "request is not valid JSON: %s", body)
					}
					cfg, err := cmd.ConfigFrom(c)
					if err != nil {
						return &exitError{code: 2, err: err}
					}
					var sel selector.Selector
					var opts []client.CallOption
					addr := c.String("address")
					switch proto := c.String("protocol"); {
					case proto != registry.ProtocolBeacon && proto != registry.ProtocolGRPC:
						return fail(2, "--protocol %q: want %s or %s", proto, registry.ProtocolBeacon, registry.ProtocolGRPC)
					case proto == registry.ProtocolGRPC && addr == "":
						return fail(2, "--protocol is for --address; nodes found in the registry say their protocol")
					}
					if addr != "" {
						opts = append(opts, client.WithAddress(addr))
					} else {
						r, err := open(c)
						if err != nil {
							return err
						}
						strategy, _ := cmd.NewStrategy(cfg.Selector)
						s := selector.New(r, selector.WithStrategy(strategy), selector.WithLogger(log),
							selector.WithProtocols(registry.ProtocolBeacon, registry.ProtocolGRPC))
						defer s.Close()
						sel = s
					}
					_, tlsOpts, err := cfg.TLS.Options(false, log) // --tls_ca, --tls_cert, --tls_key
					if err != nil {
						return &exitError{code: 2, err: err}
					}
					grpcCaller := beacongrpc.NewCaller(beacongrpc.WithReflection())
					cl := client.New(sel, append([]client.Option{client.Retries(cfg.ClientRetries), client.RequestTimeout(cfg.ClientRequestTimeout), client.Logger(log),
						client.WithCaller(registry.ProtocolGRPC, grpcCaller)}, tlsOpts...)...)
					defer cl.Close()
					cctx, cancel := context.WithTimeout(ctx, c.Duration("timeout"))
					defer cancel()
					var rsp json.RawMessage
					if addr != "" && c.String("protocol") == registry.ProtocolGRPC {
						err = callDirect(cctx, grpcCaller, addr, c.Args().Get(0), c.Args().Get(1), body, &rsp, cfg.ClientRequestTimeout)
					} else {
						err = cl.Call(cctx, c.Args().Get(0), c.Args().Get(1), json.RawMessage(body), &rsp, opts...)
					}
					if err != nil {
						if c.Bool("json") {
							out, _ := json.Marshal(map[string]any{"error": err.Error(), "code": status.Code(err)})
							fmt.Fprintln(stdout, string(out))
						}
						return fail(1, "call %s %s: %w", c.Args().Get(0), c.Args().Get(1), err)
					}
					if c.Bool("json") {
						fmt.Fprintln(stdout, string(rsp))
						return nil
					}
					var pretty any
					if json.Unmarshal(rsp, &pretty) == nil {
						out, _ := json.MarshalIndent(pretty, "", "  ")
						fmt.Fprintln(stdout, string(out))
					} else {
						fmt.Fprintln(stdout, string(rsp))
					}
					return nil
				},
			},
		},
	}
	if err := app.Run(args); err != nil {
		fmt.Fprintln(stderr, "beacon:", err)
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		return 2
	}
	return 0
}

// callDirect calls a node at addr with a transport.Caller, once, without
// the client's selection and retries (a client calls addresses directly
// only over Beacon's wire).
func callDirect(ctx context.Context, caller transport.Caller, addr, service, endpoint, body string, out *json.RawMessage, timeout time.Duration) error {
	req := &transport.Request{Service: service, Endpoint: endpoint, ContentType: "application/json", Body: []byte(body)}
	if timeout > 0 {
		req.Deadline = time.Now().Add(timeout)
	}
	var rsp transport.Response
	if err := caller.Call(ctx, addr, req, &rsp); err != nil {
		code := status.Unavailable
		if te := (*transport.Error)(nil); errors.As(err, &te) && te.Op == "timeout" {
			code = status.Timeout
		}
		return &status.Error{Code: code, Detail: fmt.Sprintf("call %s %s at %s", service, endpoint, addr), Causes: []error{err}}
	}
	if rsp.Status != status.OK {
		return status.New(rsp.Status, rsp.Detail)
	}
	*out = append((*out)[:0], rsp.Body...)
	return nil
}

type serviceRow struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Nodes   int    `json:"nodes"`
}

func printServices(c *cli.Context, w io.Writer, list []*registry.Service) error {
	rows := make([]serviceRow, 0, len(list))
	for _, s := range list {
		rows = append(rows, serviceRow{Name: s.Name, Version: s.Version, Nodes: len(s.Nodes)})
	}
	if c.Bool("json") {
		return json.NewEncoder(w).Encode(rows)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tVERSION\tNODES")
	for _, r := range rows {
		v := r.Version
		if v == "" {
			v = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\n", r.Name, v, r.Nodes)
	}
	return tw.Flush()
}

func printDescribe(c *cli.Context, w io.Writer, svcs []*registry.Service) error {
	if c.Bool("json") {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(svcs)
	}
	for i, s := range svcs {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "service  %s\nversion  %s\n", s.Name, orDash(s.Version))
		if len(s.Metadata) > 0 {
			fmt.Fprintf(w, "metadata %s\n", kv(s.Metadata))
		}
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tADDRESS\tMETADATA")
		for _, n := range s.Nodes {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", n.ID, n.Address, orDash(kv(n.Metadata)))
		}
		tw.Flush()
		if len(s.Endpoints) > 0 {
			fmt.Fprintln(w)
			tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			withMeta := slices.ContainsFunc(s.Endpoints, func(e *registry.Endpoint) bool { return len(e.Metadata) > 0 })
			if withMeta {
				fmt.Fprintln(tw, "ENDPOINT\tREQUEST\tRESPONSE\tMETADATA")
			} else {
				fmt.Fprintln(tw, "ENDPOINT\tREQUEST\tRESPONSE")
			}
			for _, e := range s.Endpoints {
				if withMeta {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Name, shape(e.Request), shape(e.Response), orDash(kv(e.Metadata)))
				} else {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", e.Name, shape(e.Request), shape(e.Response))
				}
			}
			tw.Flush()
		}
	}
	return nil
}

func printEvent(c *cli.Context, w io.Writer, ev *registry.Event) {
	var n *registry.Node
	if len(ev.Service.Nodes) > 0 {
		n = ev.Service.Nodes[0]
	} else {
		n = &registry.Node{}
	}
	if c.Bool("json") {
		out, _ := json.Marshal(map[string]any{"type": ev.Type.String(), "time": ev.Timestamp, "service": ev.Service})
		fmt.Fprintln(w, string(out))
		return
	}
	fmt.Fprintf(w, "%s  %-6s  %s  %s  %s  %s\n", ev.Timestamp.Format("15:04:05.000"), ev.Type, ev.Service.Name,
		orDash(ev.Service.Version), n.ID, orDash(n.Address))
}

func shape(v *registry.Value) string {
	if v == nil {
		return "-"
	}
	if len(v.Values) == 0 {
		return v.Name
	}
	var fields []string
	for _, f := range v.Values {
		fields = append(fields, f.Name+" "+f.Type)
	}
	return v.Name + "{" + strings.Join(fields, ", ") + "}"
}

func kv(m map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, " ")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
