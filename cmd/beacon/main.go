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
// MICRO_REGISTRY (default mdns) and --registry_address. Flags go before or
// after the command. Output is a human-readable table; --json prints JSON
// for scripts (errors too: {"error", "code", "detail"}). The exit code is 0
// on success, 1 on a failed call or lookup, 2 on bad usage (an unknown flag
// or command, a bad value, an invalid service name). call takes its JSON
// request as an argument, from a file (@file) or from stdin (-).
// --timeout bounds lookups and calls (a duration or whole seconds, above
// zero). beacon help [COMMAND] and beacon --version work as usual.
// Exit code 3: the registry refused the credentials (registry.ErrPermission:
// a wrong or missing consul ACL token, etcd user or password, or a user
// without permission on the prefix); bad registry TLS or credential settings
// are usage errors (2).
//
// TLS to the registry and its credentials come from --registry_tls_ca,
// --registry_tls_cert, --registry_tls_key, --registry_tls_server_name,
// --registry_username, --registry_password and --registry_token (with
// BEACON_* and MICRO_* variables), else from the registry's own variables
// (ETCDCTL_*, CONSUL_*): see package cmd, RegistrySecurity.Resolve.
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
	"runtime/debug"
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
	"github.com/beacon-go/beacon/ui"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := runIO(ctx, os.Args, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// version is the CLI's version from the build info: the module version
// when installed with go install, else the VCS revision.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 && (v == "" || v == "(devel)") {
			v = "(devel) " + s.Value[:12]
		}
	}
	if v == "" {
		v = "(devel)"
	}
	return v + " " + bi.GoVersion
}

// maxTimeout bounds --timeout.
const maxTimeout = time.Hour

// hoist moves the global flags found after the command to before it, so
// that flags may be given before or after the command (urfave/cli reads
// global flags only before it). args[0] is the program name.
func hoist(args []string, global []cli.Flag, commands []*cli.Command) []string {
	takesValue := map[string]bool{}
	for _, f := range global {
		_, isBool := f.(*cli.BoolFlag)
		for _, n := range f.Names() {
			takesValue[n] = !isBool
		}
	}
	isCommand := map[string]bool{}
	for _, c := range commands {
		for _, n := range c.Names() {
			isCommand[n] = true
		}
	}
	// Find the command: the first argument that is not a global flag or
	// its value.
	i := 1
	for i < len(args) {
		a := args[i]
		if a == "--" || !strings.HasPrefix(a, "-") {
			break
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		i++
		if takesValue[name] && !hasValue && i < len(args) {
			i++
		}
	}
	if i >= len(args) || !isCommand[args[i]] {
		return args
	}
	before := append([]string(nil), args[:i]...)
	var after []string
	rest := args[i+1:]
	for j := 0; j < len(rest); j++ {
		a := rest[j]
		if a == "--" {
			after = append(after, rest[j:]...)
			break
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		v, global := takesValue[name]
		if !strings.HasPrefix(a, "-") || a == "-" || !global {
			after = append(after, a)
			continue
		}
		before = append(before, a)
		if v && !hasValue && j+1 < len(rest) {
			j++
			before = append(before, rest[j])
		}
	}
	return append(append(before, args[i]), after...)
}

// readBody returns call's request: the argument, a file's content (@file),
// or stdin (-); "{}" when none.
func readBody(arg string, stdin io.Reader) (string, error) {
	switch {
	case arg == "":
		return "{}", nil
	case arg == "-":
		b, err := io.ReadAll(io.LimitReader(stdin, 64<<20))
		return string(b), err
	case strings.HasPrefix(arg, "@"):
		b, err := os.ReadFile(arg[1:])
		return string(b), err
	}
	return arg, nil
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

// exitPermission is the exit code when the registry refused the
// credentials (registry.ErrPermission).
const exitPermission = 3

// registryFail is the error of a failed registry operation: exit code 1,
// or exitPermission with a hint on the credential flags when the registry
// refused them.
func registryFail(op string, err error) error {
	if errors.Is(err, registry.ErrPermission) {
		return &exitError{code: exitPermission, err: fmt.Errorf("%s: %w\n  the registry refused the credentials: check --%s (consul), --%s/--%s (etcd), --%s/--%s/--%s or the registry's own variables (CONSUL_HTTP_TOKEN, ETCDCTL_USER, ...)",
			op, err, cmd.FlagRegistryToken, cmd.FlagRegistryUsername, cmd.FlagRegistryPassword, cmd.FlagRegistryTLSCA, cmd.FlagRegistryTLSCert, cmd.FlagRegistryTLSKey)}
	}
	return fail(1, "%s: %w", op, err)
}

// run is the whole program with an empty stdin; it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return runIO(ctx, args, strings.NewReader(""), stdout, stderr)
}

// runIO is the whole program; it returns the exit code.
func runIO(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
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
		octx, cancel := context.WithTimeout(ctx, timeout(c))
		defer cancel()
		r, err := cmd.NewRegistry(octx, cfg.Registry, cfg.RegistryAddress, log, cfg.RegistryOptions()...)
		switch {
		case errors.Is(err, cmd.ErrRegistrySecurity):
			return nil, &exitError{code: 2, err: fmt.Errorf("registry %s: %w", cfg.Registry, err)}
		case err != nil:
			return nil, registryFail("registry "+cfg.Registry, err)
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
		Name:           "beacon",
		Usage:          "inspect a service registry and call services by name",
		Version:        version(),
		Writer:         stdout,
		ErrWriter:      stderr,
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return &exitError{code: 2, err: err} // said once, without the whole help
		},
		Flags: append(cmd.ClientFlags(),
			&cli.BoolFlag{Name: "json", Usage: "print JSON instead of tables (errors too)"},
			cmd.DurationFlag("timeout", 10*time.Second, maxTimeout, true, "bound on registry lookups and calls (duration, or seconds; above 0)"),
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
					lctx, cancel := context.WithTimeout(ctx, timeout(c))
					defer cancel()
					list, err := r.ListServices(lctx)
					if err != nil {
						return registryFail("list services", err)
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
					if err := registry.ValidateName(c.Args().First()); err != nil {
						return fail(2, "describe: %w", err)
					}
					r, err := open(c)
					if err != nil {
						return err
					}
					gctx, cancel := context.WithTimeout(ctx, timeout(c))
					defer cancel()
					svcs, err := r.GetService(gctx, c.Args().First())
					if err != nil {
						return registryFail("describe "+c.Args().First(), err)
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
					if c.NArg() > 1 {
						return fail(2, "usage: beacon watch [NAME]")
					}
					if c.NArg() > 0 {
						if err := registry.ValidateName(c.Args().First()); err != nil {
							return fail(2, "watch: %w", err)
						}
						opts = append(opts, registry.WatchService(c.Args().First()))
					}
					w, err := r.Watch(ctx, opts...)
					if err != nil {
						return registryFail("watch", err)
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
				Name: "call", Usage: "call an endpoint of a service by name with a JSON request (an argument, @file, or - for stdin)", ArgsUsage: "NAME ENDPOINT [JSON|@FILE|-]",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "address", Usage: "call this node address directly"},
					&cli.StringFlag{Name: "protocol", Value: registry.ProtocolBeacon, Usage: "the protocol of the node called with --address: beacon or grpc"},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() < 2 || c.NArg() > 3 {
						return fail(2, "usage: beacon call NAME ENDPOINT [JSON|@FILE|-]")
					}
					if c.String("address") == "" {
						if err := registry.ValidateName(c.Args().Get(0)); err != nil {
							return fail(2, "call: %w", err)
						}
					}
					body, err := readBody(c.Args().Get(2), stdin)
					if err != nil {
						return fail(2, "call: request: %w", err)
					}
					if strings.TrimSpace(body) == "" {
						body = "{}"
					}
					if !json.Valid([]byte(body)) {
						return fail(2, "request is not valid JSON: %.200s", body)
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
					cctx, cancel := context.WithTimeout(ctx, timeout(c))
					defer cancel()
					var rsp json.RawMessage
					if addr != "" && c.String("protocol") == registry.ProtocolGRPC {
						err = callDirect(cctx, grpcCaller, addr, c.Args().Get(0), c.Args().Get(1), body, &rsp, cfg.ClientRequestTimeout)
					} else {
						err = cl.Call(cctx, c.Args().Get(0), c.Args().Get(1), json.RawMessage(body), &rsp, opts...)
					}
					if err != nil {
						if status.Code(err) == status.NotFound && reg != nil {
							err = listEndpoints(cctx, reg, c.Args().Get(0), c.Args().Get(1), err)
						}
						return registryFail(fmt.Sprintf("call %s %s", c.Args().Get(0), c.Args().Get(1)), err)
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
			{
				Name: "ui", Usage: "serve a web dashboard of the registry: services, nodes and their health, endpoints, live events, calls",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "listen", Value: ui.DefaultListen, Usage: "address of the dashboard: an IP address and a port"},
					&cli.BoolFlag{Name: "allow_remote", Usage: "allow a listen address that is not loopback (whoever reaches the dashboard reads the registry and calls every service)"},
					&cli.StringSliceFlag{Name: "allow_host", Usage: "a host name by which the dashboard may be reached (IP addresses and localhost always may)"},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() != 0 {
						return fail(2, "usage: beacon ui [--listen 127.0.0.1:8082]")
					}
					cfg, err := cmd.ConfigFrom(c)
					if err != nil {
						return &exitError{code: 2, err: err}
					}
					ln, err := ui.Listen(c.String("listen"), c.Bool("allow_remote"))
					if errors.Is(err, ui.ErrNotLoopback) {
						return fail(2, "%w; pass --allow_remote to serve other hosts", err)
					} else if err != nil {
						return fail(2, "%w", err)
					}
					defer ln.Close()
					r, err := open(c)
					if err != nil {
						return err
					}
					_, tlsOpts, err := cfg.TLS.Options(false, log) // --tls_ca, --tls_cert, --tls_key
					if err != nil {
						return &exitError{code: 2, err: err}
					}
					strategy, _ := cmd.NewStrategy(cfg.Selector)
					srv := ui.New(r, ui.WithLogger(log), ui.Timeout(c.Duration("timeout")), ui.AllowHosts(c.StringSlice("allow_host")...),
						ui.WithSelectorOptions(selector.WithStrategy(strategy), selector.WithProtocols(registry.ProtocolBeacon, registry.ProtocolGRPC)),
						ui.WithClientOptions(append([]client.Option{client.Retries(cfg.ClientRetries), client.RequestTimeout(cfg.ClientRequestTimeout),
							client.WithCaller(registry.ProtocolGRPC, beacongrpc.NewCaller(beacongrpc.WithReflection()))}, tlsOpts...)...))
					fmt.Fprintf(stdout, "beacon ui: the %s registry on http://%s/ (until interrupted)\n", r, ln.Addr())
					if err := srv.Serve(ctx, ln); err != nil {
						return fail(1, "ui: %w", err)
					}
					return nil
				},
			},
		},
	}
	args = hoist(args, app.Flags, app.Commands)
	if err := app.Run(args); err != nil {
		code := 2
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
		if slices.Contains(args, "--json") {
			// Scripts read errors as fields, on stdout like the results.
			rec := map[string]any{"error": err.Error(), "exit": code}
			if se := new(status.Error); errors.As(err, &se) {
				rec["code"], rec["detail"] = se.Code, se.Detail
			}
			out, _ := json.Marshal(rec)
			fmt.Fprintln(stdout, string(out))
		}
		fmt.Fprintln(stderr, "beacon:", err)
		return code
	}
	return 0
}

// timeout reads --timeout.
func timeout(c *cli.Context) time.Duration { return cmd.DurationOf(c, "timeout", 10*time.Second) }

// listEndpoints adds the service's endpoints to a "not found" call error,
// when the service exists and the endpoint is not one of them.
func listEndpoints(ctx context.Context, reg registry.Registry, service, endpoint string, err error) error {
	svcs, gerr := reg.GetService(ctx, service)
	if gerr != nil || len(svcs) == 0 {
		return err
	}
	var names []string
	for _, s := range svcs {
		for _, e := range s.Endpoints {
			if e != nil && !slices.Contains(names, e.Name) {
				names = append(names, e.Name)
			}
		}
	}
	if slices.Contains(names, endpoint) || len(names) == 0 {
		return err
	}
	slices.Sort(names)
	return fmt.Errorf("%w; %s has the endpoints %s", err, service, strings.Join(names, ", "))
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
