package beacongrpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/registrar"
)

// Endpoint metadata published for each gRPC method (besides
// registry.MetaIdempotent).
const (
	// MetaMethod is the endpoint metadata key holding the gRPC full method,
	// e.g. "/helloworld.Greeter/SayHello".
	MetaMethod = "grpc_method"
	// MetaStream is the endpoint metadata key of streaming methods:
	// "client", "server" or "bidi". Beacon calls are unary: a Call reaches
	// only methods without it.
	MetaStream = "grpc_stream"
)

// Defaults of a Server.
const (
	// DefaultStopTimeout bounds GracefulStop in Stop; the server is then
	// stopped at once (RPCs still running are canceled).
	DefaultStopTimeout = 10 * time.Second
)

// Errors.
var (
	ErrNoName  = errors.New("beacongrpc: no service name")
	ErrRunning = errors.New("beacongrpc: already started")
	// ErrHealthRegistered: the grpc.Server already serves the health service,
	// and it was not handed to NewServer with the Health option.
	ErrHealthRegistered = errors.New("beacongrpc: the grpc.Server already has a health service; pass it with beacongrpc.Health")
	// ErrUnknownEndpoint: an option names an endpoint the server does not have.
	ErrUnknownEndpoint = errors.New("beacongrpc: unknown endpoint")
)

// ServerOption configures a Server.
type ServerOption func(*serverOptions)

type serverOptions struct {
	name, version, id    string
	metadata             map[string]string
	advertise            string
	ttl, interval, grace time.Duration
	stopTimeout          time.Duration
	log                  *slog.Logger
	health               *health.Server
	idempotent           []string
	files                Resolver
}

// Resolver finds descriptors by full name, like protoregistry.GlobalFiles
// (the default) or a *protoregistry.Files.
type Resolver interface {
	FindDescriptorByName(protoreflect.FullName) (protoreflect.Descriptor, error)
}

// Name sets the Beacon service name (required), e.g. "greeter": callers
// call it by this name.
func Name(n string) ServerOption { return func(o *serverOptions) { o.name = n } }

// Version sets the service version.
func Version(v string) ServerOption { return func(o *serverOptions) { o.version = v } }

// ID sets the node ID (default: name-<random hex>).
func ID(id string) ServerOption { return func(o *serverOptions) { o.id = id } }

// Metadata sets the node's metadata; registry.MetaProtocol is set to
// registry.ProtocolGRPC unless given.
func Metadata(md map[string]string) ServerOption {
	return func(o *serverOptions) { o.metadata = md }
}

// Advertise sets the address registered for callers (default: the
// listener's address, with an unspecified host replaced by this host's
// first non-loopback IPv4 address, or 127.0.0.1).
func Advertise(addr string) ServerOption { return func(o *serverOptions) { o.advertise = addr } }

// RegisterTTL sets the TTL of the registration (default
// registrar.DefaultTTL, at most registrar.MaxTTL).
func RegisterTTL(d time.Duration) ServerOption { return func(o *serverOptions) { o.ttl = d } }

// RegisterInterval sets the heartbeat interval, below the TTL (default
// registrar.DefaultInterval).
func RegisterInterval(d time.Duration) ServerOption {
	return func(o *serverOptions) { o.interval = d }
}

// DrainGrace sets how long Stop keeps serving after deregistering, while
// callers' caches drop the node (default registrar.DefaultDrainGrace).
func DrainGrace(d time.Duration) ServerOption { return func(o *serverOptions) { o.grace = d } }

// StopTimeout bounds the GracefulStop in Stop (default DefaultStopTimeout);
// after it the grpc.Server is stopped at once.
func StopTimeout(d time.Duration) ServerOption { return func(o *serverOptions) { o.stopTimeout = d } }

// Logger sets the logger (default slog.Default()).
func Logger(l *slog.Logger) ServerOption { return func(o *serverOptions) { o.log = l } }

// Health hands NewServer the health service the grpc.Server already serves
// (or will: NewServer registers it when the grpc.Server does not serve the
// health service yet). Without it NewServer makes and registers one.
func Health(h *health.Server) ServerOption { return func(o *serverOptions) { o.health = h } }

// Idempotent publishes endpoints (by their Beacon names, e.g.
// "helloworld.Greeter.SayHello") as safe to run more than once
// (registry.MetaIdempotent): Beacon clients then retry them on another node
// after failures after which they may have run, and may hedge them. Methods
// whose descriptor says idempotency_level IDEMPOTENT or NO_SIDE_EFFECTS are
// published so without it. A name the server does not serve fails Start.
func Idempotent(endpoints ...string) ServerOption {
	return func(o *serverOptions) { o.idempotent = append(o.idempotent, endpoints...) }
}

// Descriptors sets where the descriptors of the served services are found,
// for the request and response shapes published with each endpoint and the
// methods' idempotency_level (default protoregistry.GlobalFiles, where
// generated code registers them). A service without descriptors is
// published with its method names only.
func Descriptors(r Resolver) ServerOption { return func(o *serverOptions) { o.files = r } }

type serverState int

const (
	stateNew serverState = iota
	stateRunning
	stateDraining
	stateStopped
)

// Server keeps a grpc-go server registered in a Beacon registry while it
// serves, so that Beacon clients (with a Caller of this package) and the
// beacon CLI call its methods by service name.
//
// Endpoints: every method of every service the grpc.Server serves
// (GetServiceInfo) is an endpoint named by its protobuf full name,
// "<package>.<Service>.<Method>" (the full method "/helloworld.Greeter/SayHello"
// is endpoint "helloworld.Greeter.SayHello"), with the full method in the
// endpoint metadata (MetaMethod) and MetaStream for streaming methods. The
// name maps back to the full method without the registry (the last dot
// separates the method), which is what the Caller does. The health and
// reflection services are not published. The node's metadata says
// protocol=grpc (registry.MetaProtocol).
//
// Lifecycle: NewServer registers the standard health service
// (google.golang.org/grpc/health) on the grpc.Server; Start serves on a
// listener, registers the node with the TTL and heartbeats (package
// registrar: re-registered every interval, failures logged and retried
// with backoff); the health service answers SERVING for "" and every
// published service. Stop sets every health status to NOT_SERVING (the
// drain starts), deregisters, keeps serving for the drain grace while
// callers' caches drop the node, then GracefulStop (calls in flight finish;
// new ones are refused, and Beacon callers retry them elsewhere as not
// run), bounded by the stop timeout, after which it Stops the grpc.Server.
// grpc-go's GracefulStop waits for every stream: a health Watch stream
// that its client keeps open holds it until that timeout. grpc-go's own
// client-side health checking (healthCheckConfig) closes its Watch when
// the GOAWAY arrives, so it does not; a hand-made Watch does.
type Server struct {
	gs     *grpc.Server
	reg    registry.Registry
	o      serverOptions
	health *health.Server

	mu        sync.Mutex
	state     serverState
	ln        net.Listener
	svc       *registry.Service
	rg        *registrar.Registrar
	serveDone chan struct{} // closed when gs.Serve returned
	serveErr  error
	stopped   chan struct{} // closed when Stop has finished
}

// NewServer returns a Server of gs registered in reg (nil: serve without
// registering). It checks the options (a valid name; TTL and interval as
// registrar.CheckTTL) and registers the health service on gs, which must
// not serve yet; it serves nothing until Start or Serve. Register every
// service on gs before Start: the endpoints are read then.
func NewServer(gs *grpc.Server, reg registry.Registry, opts ...ServerOption) (*Server, error) {
	o := serverOptions{
		ttl: registrar.DefaultTTL, interval: registrar.DefaultInterval, grace: registrar.DefaultDrainGrace,
		stopTimeout: DefaultStopTimeout, log: slog.Default(), files: protoregistry.GlobalFiles,
	}
	for _, f := range opts {
		f(&o)
	}
	if gs == nil {
		return nil, errors.New("beacongrpc: nil grpc.Server")
	}
	if o.name == "" {
		return nil, ErrNoName
	}
	if err := registry.ValidateName(o.name); err != nil {
		return nil, err
	}
	if err := registrar.CheckTTL(o.ttl, o.interval); err != nil {
		return nil, err
	}
	if o.id == "" {
		o.id = registrar.NewID(o.name)
	}
	if err := registry.ValidateNodeID("server id", o.id); err != nil {
		return nil, err
	}
	if err := registry.ValidateMetadata("server metadata", o.metadata); err != nil {
		return nil, err
	}
	_, served := gs.GetServiceInfo()[healthpb.Health_ServiceDesc.ServiceName]
	switch {
	case o.health == nil && served:
		return nil, ErrHealthRegistered
	case o.health == nil:
		o.health = health.NewServer()
		healthpb.RegisterHealthServer(gs, o.health)
	case !served:
		healthpb.RegisterHealthServer(gs, o.health)
	}
	return &Server{gs: gs, reg: reg, o: o, health: o.health, stopped: make(chan struct{})}, nil
}

// GRPC returns the grpc.Server.
func (s *Server) GRPC() *grpc.Server { return s.gs }

// Health returns the health service, e.g. to set the status of one service.
// After Stop began every status is NOT_SERVING and stays so.
func (s *Server) Health() *health.Server { return s.health }

// Service returns a copy of the registered service (nil before Start).
func (s *Server) Service() *registry.Service {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.svc.Copy()
}

// Addr returns the listener's address (nil before Start).
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Start serves gs on ln, registers the node and starts the heartbeat; it
// returns once gs serves. The first registration is made under ctx; a
// failure other than invalid input (registry.ErrInvalid, returned) is
// logged and the heartbeat keeps trying. On error ln is closed and nothing
// keeps running.
func (s *Server) Start(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != stateNew {
		ln.Close()
		return ErrRunning
	}
	adv := s.o.advertise
	if adv == "" {
		adv = registrar.AdvertiseAddr(ln.Addr())
	}
	md := maps.Clone(s.o.metadata)
	if md == nil {
		md = map[string]string{}
	}
	if _, ok := md[registry.MetaProtocol]; !ok {
		md[registry.MetaProtocol] = registry.ProtocolGRPC
	}
	eps, services, err := endpoints(s.gs.GetServiceInfo(), s.o.files, s.o.idempotent)
	if err != nil {
		ln.Close()
		return err
	}
	svc := &registry.Service{Name: s.o.name, Version: s.o.version, Endpoints: eps,
		Nodes: []*registry.Node{{ID: s.o.id, Address: adv, Metadata: md}}}
	if err := registry.Validate(svc); err != nil {
		ln.Close()
		return err
	}
	for _, name := range services {
		s.health.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	s.ln, s.svc, s.state = ln, svc, stateRunning
	s.serveDone = make(chan struct{})
	go func() {
		err := s.gs.Serve(ln)
		s.mu.Lock()
		s.serveErr = err
		s.mu.Unlock()
		close(s.serveDone)
	}()
	if s.reg != nil {
		rg, err := registrar.New(s.reg, svc, registrar.TTL(s.o.ttl), registrar.Interval(s.o.interval),
			registrar.DrainGrace(s.o.grace), registrar.Logger(s.o.log), registrar.LogPrefix("beacongrpc"))
		if err == nil {
			err = rg.Start(ctx)
		}
		if err != nil {
			s.state = stateStopped
			s.gs.Stop()
			<-s.serveDone
			close(s.stopped)
			return err
		}
		s.rg = rg
	}
	return nil
}

// Serve is Start (under a background context) and then waits until the
// server stopped: until Stop has finished, or until gs.Serve failed (the
// node is then deregistered, and that error returned). It returns nil after
// Stop.
func (s *Server) Serve(ln net.Listener) error {
	if err := s.Start(context.Background(), ln); err != nil {
		return err
	}
	s.mu.Lock()
	done := s.serveDone
	s.mu.Unlock()
	select {
	case <-s.stopped:
		return nil
	case <-done:
	}
	s.mu.Lock()
	err := s.serveErr
	s.mu.Unlock()
	if err == nil { // Stop is under way
		<-s.stopped
		return nil
	}
	s.o.log.Error("beacongrpc: serve failed; stopping", "service", s.o.name, "node", s.o.id, "err", err)
	ctx, cancel := context.WithTimeout(context.Background(), registrar.DeregisterTimeout)
	defer cancel()
	_ = s.Stop(ctx)
	return err
}

// Stop drains and stops the server: every health status NOT_SERVING,
// deregister, the drain grace (only with a registry), then GracefulStop
// bounded by the stop timeout and ctx, then Stop. It returns the
// deregistration's error, if any; it always stops the server. It is
// idempotent, and safe to call concurrently (later calls wait for the
// first).
func (s *Server) Stop(ctx context.Context) error {
	s.mu.Lock()
	switch s.state {
	case stateNew:
		s.state = stateStopped
		close(s.stopped)
		s.mu.Unlock()
		s.health.Shutdown()
		return nil
	case stateDraining, stateStopped:
		s.mu.Unlock()
		select {
		case <-s.stopped:
		case <-ctx.Done():
		}
		return nil
	}
	s.state = stateDraining
	rg, svc := s.rg, s.svc
	s.mu.Unlock()

	s.health.Shutdown() // NOT_SERVING from the start of the drain
	var derr error
	if rg != nil {
		derr = rg.Stop(ctx) // deregister, then the drain grace
	}

	done := make(chan struct{})
	go func() { s.gs.GracefulStop(); close(done) }()
	t := time.NewTimer(s.o.stopTimeout)
	select {
	case <-done:
	case <-t.C:
		s.o.log.Warn("beacongrpc: stop timeout; stopping RPCs in flight", "service", svc.Name, "timeout", s.o.stopTimeout)
		s.gs.Stop()
	case <-ctx.Done():
		s.o.log.Warn("beacongrpc: stop context ended; stopping RPCs in flight", "service", svc.Name)
		s.gs.Stop()
	}
	t.Stop()
	<-done
	<-s.serveDone
	s.mu.Lock()
	s.state = stateStopped
	s.mu.Unlock()
	close(s.stopped)
	s.o.log.Info("beacongrpc: stopped", "service", svc.Name, "node", s.o.id)
	return derr
}

// unpublished are services that are not published as endpoints: the
// infrastructure every gRPC server may serve.
func unpublished(service string) bool {
	return service == healthpb.Health_ServiceDesc.ServiceName || strings.HasPrefix(service, "grpc.reflection.")
}

// endpoints returns the Beacon endpoints of the services in infos, sorted
// by name, and the names of the services published.
func endpoints(infos map[string]grpc.ServiceInfo, files Resolver, idempotent []string) ([]*registry.Endpoint, []string, error) {
	var eps []*registry.Endpoint
	var services []string
	for _, name := range slices.Sorted(maps.Keys(infos)) {
		if unpublished(name) {
			continue
		}
		services = append(services, name)
		var sd protoreflect.ServiceDescriptor
		if files != nil {
			if d, err := files.FindDescriptorByName(protoreflect.FullName(name)); err == nil {
				sd, _ = d.(protoreflect.ServiceDescriptor)
			}
		}
		for _, m := range infos[name].Methods {
			ep := &registry.Endpoint{Name: name + "." + m.Name, Metadata: map[string]string{MetaMethod: "/" + name + "/" + m.Name}}
			switch {
			case m.IsClientStream && m.IsServerStream:
				ep.Metadata[MetaStream] = "bidi"
			case m.IsClientStream:
				ep.Metadata[MetaStream] = "client"
			case m.IsServerStream:
				ep.Metadata[MetaStream] = "server"
			}
			if sd != nil {
				if md := sd.Methods().ByName(protoreflect.Name(m.Name)); md != nil {
					ep.Request, ep.Response = shape(md.Input(), 0), shape(md.Output(), 0)
					if opts, ok := md.Options().(*descriptorpb.MethodOptions); ok && opts != nil {
						if l := opts.GetIdempotencyLevel(); l == descriptorpb.MethodOptions_IDEMPOTENT || l == descriptorpb.MethodOptions_NO_SIDE_EFFECTS {
							ep.Metadata[registry.MetaIdempotent] = "true"
						}
					}
				}
			}
			eps = append(eps, ep)
		}
	}
	slices.SortFunc(eps, func(a, b *registry.Endpoint) int { return strings.Compare(a.Name, b.Name) })
	for _, name := range idempotent {
		i := slices.IndexFunc(eps, func(e *registry.Endpoint) bool { return e.Name == name })
		if i < 0 {
			return nil, nil, fmt.Errorf("%w: Idempotent(%q): the server serves %s", ErrUnknownEndpoint, name, endpointNames(eps))
		}
		eps[i].Metadata[registry.MetaIdempotent] = "true"
	}
	return eps, services, nil
}

func endpointNames(eps []*registry.Endpoint) string {
	names := make([]string, len(eps))
	for i, e := range eps {
		names[i] = e.Name
	}
	if len(names) == 0 {
		return "no endpoints"
	}
	return strings.Join(names, ", ")
}

// shape describes a message for the registry: its name and full name, and
// its fields by JSON name with their types, three levels deep.
func shape(md protoreflect.MessageDescriptor, depth int) *registry.Value {
	v := &registry.Value{Name: string(md.Name()), Type: string(md.FullName())}
	if depth >= 3 {
		return v
	}
	fields := md.Fields()
	for i := range fields.Len() {
		f := fields.Get(i)
		fv := &registry.Value{Name: f.JSONName(), Type: fieldType(f)}
		if f.Message() != nil && !f.IsMap() {
			fv.Values = shape(f.Message(), depth+1).Values
		}
		v.Values = append(v.Values, fv)
	}
	return v
}

// fieldType is a field's type as a .proto file would write it.
func fieldType(f protoreflect.FieldDescriptor) string {
	if f.IsMap() {
		return "map<" + fieldType(f.MapKey()) + ", " + fieldType(f.MapValue()) + ">"
	}
	t := f.Kind().String()
	switch {
	case f.Message() != nil:
		t = string(f.Message().FullName())
	case f.Enum() != nil:
		t = string(f.Enum().FullName())
	}
	if f.IsList() {
		t = "repeated " + t
	}
	return t
}

var _ Resolver = (*protoregistry.Files)(nil)
