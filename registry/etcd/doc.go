// Package etcd is a registry.Registry on etcd v3 (go.etcd.io/etcd/client/v3).
//
// # Storage layout
//
// Every node is one key, in go-micro's layout, so that Beacon and go-micro
// services registered in the same etcd see each other:
//
//	<prefix><service name>/<node id>
//
// The prefix defaults to "/micro/registry/" (WithPrefix). The value is plain
// JSON (readable with `etcdctl get --prefix /micro/registry/`): a
// registry.Service holding exactly that one node, with the service's name,
// version, metadata and endpoints, e.g.
//
//	/micro/registry/greeter/greeter-1
//	{"name":"greeter","version":"1.2.0","metadata":{...},"endpoints":[...],
//	 "nodes":[{"id":"greeter-1","address":"10.0.0.5:8080","metadata":{...}}]}
//
// Values under the prefix that are not such a record (not JSON, JSON of
// another shape, no node or several nodes, a name or node ID that does not
// match the key, data that fails registry.Validate, values larger than
// MaxRecordSize) are skipped everywhere, with Warn log lines limited by
// registry.BadRecords: each bad key named at most once per 10 minutes, at
// most 5 keys named a minute, the others counted in a summary line.
//
// # Byte budgets
//
// Junk under the prefix must not cost a reader memory in proportion to it:
//
//   - a value is decoded only when it is at most MaxRecordSize (1 MiB);
//     decoding allocates in proportion to the value;
//   - a listing (GetService, ListServices, a watch's first listing or
//     re-listing) reads range pages of at most 1,000 keys and ListPageBytes
//     (4 MiB): the etcd client refuses a larger response before reading it
//     (gRPC's receive limit, per request), and the listing asks again for
//     as many keys as fit in half a page. A page is decoded and dropped
//     before the next is read, so a listing holds at most one page of raw
//     values besides the records it returns. A value larger than a page is
//     never fetched: it is skipped by key;
//   - the Registry remembers up to registry.MaxBadRecords malformed keys
//     with their mod revision (and a hash of the value). A listing of a
//     prefix under which some are remembered first reads the keys only
//     (WithKeysOnly) and then fetches the values of the other keys, range
//     by range: a bad record is fetched and decoded once per revision,
//     not on every listing;
//   - a watch decodes each event's record at most once, none for a value
//     over MaxRecordSize or for bad bytes written again; it asks for no
//     previous values (WithPrevKV would double every event's bytes).
//
// What the etcd client receives on a watch is bounded by etcd's own limit
// per write (--max-request-bytes, 1.5 MiB by default; one watch response
// may carry several writes' events when a watch catches up) rather than by
// the Registry: a watch stream is shared by the watches of a client, and
// refusing a large response would break them all.
//
// # go-zero services
//
// WithGoZero("greeter.rpc") also reads the keys that go-zero's etcd
// publisher (core/discov.Publisher, used by zrpc servers configured with
// Etcd{Hosts, Key}) writes under that key, read-only:
//
//	greeter.rpc/7587890123456789    (<key>/<lease ID in decimal>, or <key>/<Etcd.ID>)
//	127.0.0.1:8080                  (the server's address, plain text; on the lease)
//
// Each such key is a node of the Beacon service of that name (or of
// another name: "greeter=greeter.rpc"): ID the last part of the key,
// address the value, metadata protocol=grpc and MetaGoZeroKey, no version.
// GetService, ListServices and Watch merge them with Beacon's records; a
// watch follows the go-zero keys with one more etcd watch per key, resumed
// from its own revision, and the records come and go with their leases.
//
// # Leases and heartbeats
//
// A node registered with a TTL is attached to a lease of its own, granted
// with that TTL rounded up to whole seconds and to at least MinTTL (2 s,
// etcd's minimum). The Registry keeps the lease alive with one KeepAlive
// stream per lease for as long as the node is registered again within its
// TTL. Registering it again is a heartbeat: one read-only transaction that
// checks the stored record and its lease; it never grants a new lease, and
// when the data changed (or someone deleted the key) it re-puts the record
// on the same lease. Registering with another TTL moves the node to a new
// lease and revokes the old one. A node that is not registered again within
// its TTL is removed (its lease is revoked). If the process dies, etcd
// deletes the key when the lease expires, at most one TTL after the last
// keep-alive (keep-alives go out every third of the TTL).
//
// The lease counts as lost when its keep-alive stream ends (lease expired
// or revoked, e.g. after a partition) or when no keep-alive answer arrived
// for a whole TTL (etcd down or unreachable: it may have expired the lease
// meanwhile). While the node is still being registered, the Registry then
// logs it (Warn) and at once grants a new lease and puts the record again,
// retrying (attempts of at most 1 s, then a short backoff) until etcd
// answers or the node's TTL runs out; it logs the success (Info). A
// heartbeat counts even while etcd is unreachable, so a server that keeps
// beating through an outage is restored as soon as etcd is back.
//
// A TTL of 0 (the default of registry.Register) stores the key without a
// lease: it stays until Deregister.
//
// # Watch
//
// A watch lists the prefix (all services, or "<prefix><service>/") and
// reports every node as a Create event, then watches from the listing's
// revision + 1. Puts that do not change the record produce no event;
// changed records produce Update. After a disconnect the
// watch resumes from the last revision it delivered; if that revision has
// been compacted meanwhile, it lists again and emits the difference between
// what it had reported and the new listing (registry.Diff), so that a watcher
// is never silently stale.
//
// # Concurrency and blocking
//
// A Registry is safe for concurrent use. Every etcd request is bounded by the
// caller's context and by WithRequestTimeout. Errors from etcd wrap
// registry.ErrUnavailable (and the etcd client's error), except etcd's
// refusals of the credentials or of the operation (authentication failed,
// no user, permission denied), which wrap registry.ErrPermission. As etcd's
// client hides why it cannot connect behind its timeout, New dials the
// endpoints itself and fails at once with the cause when none can serve
// (connection refused, DNS, TLS); a request that times out later names
// what a short dial of the endpoints finds.
//
// # Security
//
// TLS: WithTLS or WithTLSFiles (a client certificate for etcd's
// --client-cert-auth); "https://" endpoints always use TLS. Authentication:
// WithAuth (user and password; etcd's RBAC then limits the user to the
// key ranges of its roles: the prefix needs read for New, GetService,
// ListServices and Watch, and write for Register and Deregister). With
// --client-cert-auth and no password, etcd takes the client certificate's
// common name as the user. Per registered node
// the Registry runs one goroutine; per watch, one, plus one per key range it
// watches (one, and one more per go-zero key); Close stops them all and
// closes the etcd client.
package etcd
