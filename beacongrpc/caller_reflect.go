package beacongrpc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/beacon-go/beacon/status"
	"github.com/beacon-go/beacon/transport"
)

// errNoReflection: the node does not serve grpc.reflection.v1.
var errNoReflection = errors.New("beacongrpc: the node does not serve reflection")

// errUnknownSymbol: the node's reflection does not know the service.
var errUnknownSymbol = errors.New("beacongrpc: unknown to the node's reflection")

// reflCache is what a connection learnt from the node's server reflection.
// Lookups are made without holding the lock (concurrent first callers may
// each ask); what they learn is kept until the connection is closed.
type reflCache struct {
	mu       sync.Mutex
	none     bool                    // the node does not serve reflection
	services []string                // nil: not listed yet
	files    *protoregistry.Files    // never changed once set: replaced
	methods  map[string]*methodTypes // by full method
}

// methodTypes are a method's message descriptors, and the types to resolve
// google.protobuf.Any in JSON.
type methodTypes struct {
	in, out protoreflect.MessageDescriptor
	types   *dynamicpb.Types
}

// ask sends one reflection request on a stream of its own.
func ask(ctx context.Context, cc grpc.ClientConnInterface, req *reflectionpb.ServerReflectionRequest) (*reflectionpb.ServerReflectionResponse, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(req); err != nil {
		return nil, err
	}
	_ = stream.CloseSend()
	rsp, err := stream.Recv()
	if err != nil {
		if grpcstatus.Code(err) == codes.Unimplemented {
			return nil, errNoReflection
		}
		return nil, err
	}
	if e := rsp.GetErrorResponse(); e != nil {
		if codes.Code(e.GetErrorCode()) == codes.NotFound {
			return nil, fmt.Errorf("%w: %s", errUnknownSymbol, e.GetErrorMessage())
		}
		return nil, fmt.Errorf("beacongrpc: reflection: %s (code %d)", e.GetErrorMessage(), e.GetErrorCode())
	}
	return rsp, nil
}

// listServices returns the services the node lists.
func (r *reflCache) listServices(ctx context.Context, cc grpc.ClientConnInterface) ([]string, error) {
	r.mu.Lock()
	none, services := r.none, r.services
	r.mu.Unlock()
	switch {
	case none:
		return nil, errNoReflection
	case services != nil:
		return services, nil
	}
	rsp, err := ask(ctx, cc, &reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: "*"}})
	if err != nil {
		r.noteNone(err)
		return nil, err
	}
	services = []string{}
	for _, s := range rsp.GetListServicesResponse().GetService() {
		services = append(services, s.GetName())
	}
	r.mu.Lock()
	r.services = services
	r.mu.Unlock()
	return services, nil
}

func (r *reflCache) noteNone(err error) {
	if errors.Is(err, errNoReflection) {
		r.mu.Lock()
		r.none = true
		r.mu.Unlock()
	}
}

// resolve turns the full method of a short name ("/Greeter/SayHello") into
// that of the one service the node lists whose name ends with ".Greeter".
func (r *reflCache) resolve(ctx context.Context, cc grpc.ClientConnInterface, method string) (string, bool) {
	svc, m, ok := splitMethod(method)
	if !ok {
		return "", false
	}
	services, err := r.listServices(ctx, cc)
	if err != nil {
		return "", false
	}
	found := ""
	for _, s := range services {
		if s == svc || strings.HasSuffix(s, "."+svc) {
			if found != "" {
				return "", false // ambiguous
			}
			found = s
		}
	}
	if found == "" || found == svc {
		return "", false
	}
	return "/" + found + "/" + m, true
}

func splitMethod(method string) (svc, m string, ok bool) {
	rest, ok := strings.CutPrefix(method, "/")
	if !ok {
		return "", "", false
	}
	return strings.Cut(rest, "/")
}

// method returns the descriptors of a full method, fetched from the node's
// reflection (FileContainingSymbol) when not known yet.
func (r *reflCache) method(ctx context.Context, cc grpc.ClientConnInterface, method string) (*methodTypes, error) {
	r.mu.Lock()
	if r.none {
		r.mu.Unlock()
		return nil, errNoReflection
	}
	if mt, ok := r.methods[method]; ok {
		r.mu.Unlock()
		return mt, nil
	}
	files := r.files
	r.mu.Unlock()
	svc, m, ok := splitMethod(method)
	if !ok {
		return nil, fmt.Errorf("%w: malformed method %q", errUnknownSymbol, method)
	}
	var d protoreflect.Descriptor
	var err error
	if files != nil {
		d, err = files.FindDescriptorByName(protoreflect.FullName(svc))
	}
	if files == nil || err != nil {
		if files, err = r.fetch(ctx, cc, svc); err != nil {
			return nil, err
		}
		if d, err = files.FindDescriptorByName(protoreflect.FullName(svc)); err != nil {
			return nil, fmt.Errorf("%w: service %s", errUnknownSymbol, svc)
		}
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil, fmt.Errorf("%w: %s is not a service", errUnknownSymbol, svc)
	}
	md := sd.Methods().ByName(protoreflect.Name(m))
	if md == nil {
		return nil, fmt.Errorf("%w: service %s has no method %s", errUnknownSymbol, svc, m)
	}
	mt := &methodTypes{in: md.Input(), out: md.Output(), types: dynamicpb.NewTypes(files)}
	r.mu.Lock()
	if r.methods == nil {
		r.methods = map[string]*methodTypes{}
	}
	r.methods[method] = mt
	r.mu.Unlock()
	return mt, nil
}

// fetch asks the node for the file that defines symbol and the files it
// depends on, adds them to the files known, and returns the files known.
func (r *reflCache) fetch(ctx context.Context, cc grpc.ClientConnInterface, symbol string) (*protoregistry.Files, error) {
	rsp, err := ask(ctx, cc, &reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: symbol}})
	if err != nil {
		r.noteNone(err)
		return nil, err
	}
	got := map[string]*descriptorpb.FileDescriptorProto{}
	for _, b := range rsp.GetFileDescriptorResponse().GetFileDescriptorProto() {
		fd := new(descriptorpb.FileDescriptorProto)
		if err := proto.Unmarshal(b, fd); err != nil {
			return nil, fmt.Errorf("beacongrpc: reflection: a file descriptor does not decode: %w", err)
		}
		got[fd.GetName()] = fd
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// Copy on write: a Files is read without the lock (lookups, and the
	// dynamicpb types of the methods found), so the new files go into a
	// new one that replaces it.
	next := new(protoregistry.Files)
	if r.files != nil {
		var err error
		r.files.RangeFiles(func(f protoreflect.FileDescriptor) bool {
			err = next.RegisterFile(f)
			return err == nil
		})
		if err != nil {
			return nil, err
		}
	}
	// Build the files in dependency order; a dependency the node did not
	// send (it sent it before, or lacks it) is looked up among those known,
	// then among the program's own (protoregistry.GlobalFiles).
	res := fileResolver{next}
	var build func(name string, depth int) error
	build = func(name string, depth int) error {
		fd, ok := got[name]
		if !ok {
			return nil
		}
		delete(got, name)
		if _, err := next.FindFileByPath(name); err == nil {
			return nil
		}
		if depth > 100 {
			return fmt.Errorf("beacongrpc: reflection: import cycle at %s", name)
		}
		for _, dep := range fd.GetDependency() {
			if err := build(dep, depth+1); err != nil {
				return err
			}
		}
		f, err := protodesc.NewFile(fd, res)
		if err != nil {
			return fmt.Errorf("beacongrpc: reflection: file %s: %w", name, err)
		}
		return next.RegisterFile(f)
	}
	for len(got) > 0 {
		var name string
		for name = range got {
			break
		}
		if err := build(name, 0); err != nil {
			return nil, err
		}
	}
	r.files = next
	return next, nil
}

// fileResolver finds files among those learnt, then the program's own.
type fileResolver struct{ files *protoregistry.Files }

func (r fileResolver) FindFileByPath(path string) (protoreflect.FileDescriptor, error) {
	if f, err := r.files.FindFileByPath(path); err == nil {
		return f, nil
	}
	return protoregistry.GlobalFiles.FindFileByPath(path)
}

func (r fileResolver) FindDescriptorByName(name protoreflect.FullName) (protoreflect.Descriptor, error) {
	if d, err := r.files.FindDescriptorByName(name); err == nil {
		return d, nil
	}
	return protoregistry.GlobalFiles.FindDescriptorByName(name)
}

// callTranslated makes a JSON call as protobuf with the descriptors of the
// node's reflection, and turns the response back into JSON. It reports
// false when the node does not serve reflection, or reflection failed for
// another reason (the call is then made with the JSON as it is, and fails
// the same way if the node is unreachable).
func (c *Caller) callTranslated(ctx context.Context, cn *conn, addr, method string, req *transport.Request, rsp *transport.Response) (bool, error) {
	mt, err := cn.refl.method(ctx, cn.cc, method)
	if errors.Is(err, errUnknownSymbol) && !strings.HasPrefix(req.Endpoint, "/") {
		if full, ok := cn.refl.resolve(ctx, cn.cc, method); ok {
			method = full
			mt, err = cn.refl.method(ctx, cn.cc, method)
		}
	}
	switch {
	case errors.Is(err, errUnknownSymbol):
		*rsp = transport.Response{Status: status.NotFound, NotRun: true, Body: rsp.Body[:0],
			Detail: fmt.Sprintf("unknown endpoint %q: %v", req.Endpoint, err)}
		return true, nil
	case err != nil:
		if perr := ctx.Err(); perr != nil {
			return true, perr
		}
		return false, nil
	}
	in := dynamicpb.NewMessage(mt.in)
	if len(req.Body) > 0 {
		if err := (protojson.UnmarshalOptions{Resolver: mt.types}).Unmarshal(req.Body, in); err != nil {
			*rsp = transport.Response{Status: status.BadRequest, NotRun: true, Body: rsp.Body[:0],
				Detail: fmt.Sprintf("request is not a %s: %v", mt.in.FullName(), err)}
			return true, nil
		}
	}
	body, err := proto.Marshal(in)
	if err != nil {
		*rsp = transport.Response{Status: status.BadRequest, NotRun: true, Body: rsp.Body[:0], Detail: fmt.Sprintf("encode request: %v", err)}
		return true, nil
	}
	if err := c.invoke(ctx, cn, addr, method, rawProto, req, body, rsp); err != nil || rsp.Status != status.OK {
		return true, err
	}
	out := dynamicpb.NewMessage(mt.out)
	if err := proto.Unmarshal(rsp.Body, out); err != nil {
		rsp.Status, rsp.Detail, rsp.Body = status.InternalError, fmt.Sprintf("response is not a %s: %v", mt.out.FullName(), err), rsp.Body[:0]
		return true, nil
	}
	js, err := protojson.MarshalOptions{Resolver: mt.types}.Marshal(out)
	if err != nil {
		rsp.Status, rsp.Detail, rsp.Body = status.InternalError, fmt.Sprintf("response to JSON: %v", err), rsp.Body[:0]
		return true, nil
	}
	rsp.Body = append(rsp.Body[:0], js...)
	return true, nil
}
