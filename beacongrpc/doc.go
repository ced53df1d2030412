// Package beacongrpc makes every Beacon registry a gRPC discovery system:
// grpc-go clients find and balance gRPC servers through a Beacon registry
// (a resolver, scheme "beacon", fed by the registry cache, and balancers
// built on Beacon's strategies); gRPC servers register themselves, heartbeat,
// serve the standard health service and drain (Server); and Beacon's client
// calls gRPC nodes by name (Caller, a transport.Caller for
// registry.ProtocolGRPC, with JSON through server reflection). It is the only
// package of Beacon that imports grpc-go; the core (client, server,
// selector, registry, registry/cache) does not.
//
// # Servers
//
//	gs := grpc.NewServer()
//	pb.RegisterGreeterServer(gs, impl)
//	srv, err := beacongrpc.NewServer(gs, reg, beacongrpc.Name("greeter"))
//	err = srv.Start(ctx, ln) // registers every method as an endpoint, protocol=grpc
//	defer srv.Stop(ctx)      // health NOT_SERVING, deregister, drain grace, GracefulStop
//
// Endpoints are the methods' protobuf full names ("helloworld.Greeter.SayHello"
// for /helloworld.Greeter/SayHello), with the full method in the endpoint's
// metadata (MetaMethod).
//
// # Calling gRPC nodes by name
//
//	sel := selector.New(reg, selector.WithProtocols(registry.ProtocolBeacon, registry.ProtocolGRPC))
//	cli := client.New(sel, client.WithCaller(registry.ProtocolGRPC, beacongrpc.NewCaller()))
//	err := cli.Call(ctx, "greeter", "helloworld.Greeter.SayHello", req, rsp)
//
// Selection, retries (a node that provably did not run the call is retried
// elsewhere), deadlines and metadata are the client's, unchanged.
//
// # Resolver
//
// A Builder resolves targets of the form
//
//	beacon:///<service>[?<filter>&...]
//
// through a registry cache subscription (cache.Subscribe): the nodes of the
// service that pass the filters, at once and on every change, with no
// polling. Build it over any registry (NewBuilder) or over an existing cache
// (NewBuilderFromCache), and pass it per client; no global registration is
// needed:
//
//	b := beacongrpc.NewBuilder(reg)
//	defer b.Close()
//	conn, err := grpc.NewClient("beacon:///greeter", grpc.WithResolvers(b), ...)
//
// Filters in the target's query (values are URL-escaped; an unknown key is
// an error):
//
//   - version=V: nodes of version V; several versions: version=V1,V2 or
//     the key repeated.
//   - md.K=V: nodes whose metadata K is V; the key repeated allows several
//     values (md.zone=a&md.zone=b), different keys must all match.
//   - protocol=P: nodes whose registry.MetaProtocol is P (several: P1,P2);
//     protocol=any takes every node. Default: registry.ProtocolGRPC, so a
//     Beacon-protocol node registered under the same name is never dialled,
//     nor a node that publishes no protocol.
//
// Each node becomes one resolver.Endpoint (one address: the node's) whose
// Attributes carry the node and its service version; EndpointNode reads
// them (AddressNode for State.Addresses, which carries them in
// BalancerAttributes). The node's metadata does not go into the address's
// own Attributes, so a metadata change does not reconnect.
//
// The cache's guarantees hold: when the registry fails the last known nodes
// keep serving (a failure never yields an empty list); news of no nodes
// that may come from a registry restarted empty is held (cache.WithEmptyHold).
// The resolver reports an error (ReportError; calls then fail with
// codes.Unavailable naming it, and WaitForReady calls wait) only when it has
// no usable state: the first lookup failed (it retries with backoff,
// and at once on ResolveNow), or the service has no node that passes the
// filters (not registered yet, or all of them left: the endpoints are then
// removed too). An empty list never replaces good state because the
// registry failed.
//
// # Balancers
//
// grpc-go's own balancers (pick_first, round_robin, weighted_round_robin,
// ...) work with the resolver. Beacon's strategies are grpc-go balancers
// too, selected by service config:
//
//	grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"beacon_least_loaded":{}}]}`)
//
// LeastLoaded ("beacon_least_loaded"), RoundRobin and Random: the
// selector's strategies over the ready connections, with its per-node
// figures (requests in flight, latency EWMA, weight from node metadata
// "weight") and ejection (see selector.Set and NewBalancerBuilder). grpc-go
// wants balancers in a global table: call RegisterBalancers once at program
// start, before creating clients; nothing registers itself in an init
// function.
//
// A pick never blocks and allocates nothing; each RPC's end is reported to
// its node through PickResult.Done: codes.Unavailable is a transport
// failure, Canceled and DeadlineExceeded tell nothing (the caller gave up),
// any other code is an application answer and counts as health.
//
// # Faults
//
// What grpc-go clients of beacon:/// see (internal/e2e TestGRPCFaults, with
// server processes on etcd, consul and mdns): nodes added, a registry
// outage (the last nodes keep serving) and a drain (Server.Stop) fail no
// call with no setting at all; grpc-go's transparent retry moves the
// streams a draining node's GOAWAY refused. A node killed under load fails
// the calls that were in flight on it with codes.Unavailable, which
// neither transparent retry nor WaitForReady covers; a retry policy in the
// service config does, for methods that are safe to run twice (the
// balancers eject the node, so the next attempt goes elsewhere):
//
//	"methodConfig": [{"name": [{"service": "helloworld.Greeter"}], "retryPolicy": {
//	  "maxAttempts": 4, "initialBackoff": "0.02s", "maxBackoff": "0.2s",
//	  "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]
package beacongrpc
