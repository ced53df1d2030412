// Package mdns is a registry.Registry on multicast DNS: no server, every node
// answers for itself on the local network. It is built on
// github.com/hashicorp/mdns (one responder per registered node) and
// github.com/miekg/dns (our own querier, announcements, goodbyes and passive
// listener, which hashicorp/mdns does not have).
//
// # On the wire
//
// The layout is go-micro's, so Beacon and go-micro services see each other.
// With the default domain "micro", a node with ID <id> of service <name>
// answers, through its own hashicorp/mdns responder:
//
//	<name>.micro.                    PTR  <id>.<name>.micro.
//	<id>.<name>.micro.               SRV  10 1 <port> <id>.<name>.micro.
//	<id>.<name>.micro.               TXT  "<hex chunk>" "<hex chunk>" ...
//	<id>.<name>.micro.               A    <ip>       (AAAA for IPv6 addresses)
//	_services.micro.                 PTR  <name>._services.micro.
//	<name>._services.micro.          SRV  10 1 9999 <name>._services.micro.
//	<name>._services.micro.          A    0.0.0.0    (go-micro's "wildcard" entry, for listing)
//	_services._dns-sd._udp.micro.    PTR  <name>.micro.  and  _services.micro.
//
// The SRV target (the "host name") is the instance name itself: a responder
// never looks up the machine's host name. TXT holds
// hex(zlib(JSON)) cut into strings of at most 255 bytes (a DNS limit; longer
// strings also make hashicorp/mdns go silent). The JSON is the
// registry.Service with exactly one node:
//
//	{"name":"greeter","service":"greeter","version":"1.0.0","metadata":{...},
//	 "endpoints":[...],"nodes":[{"id":"...","address":"10.0.0.5:8080","metadata":{...}}]}
//
// "service" repeats the name because go-micro's decoder keys on it (Go's
// JSON matching is case-insensitive, so go-micro's "Service", "Version",
// "Endpoints", "Metadata" read ours; go-micro takes "metadata", here the
// service's, for the node's). Records written by go-micro have no "nodes":
// they are read with the node ID from the instance name, the address from
// SRV port and A/AAAA, and "metadata" as node metadata.
//
// The node's address is taken from the JSON; the A/AAAA record carries the
// address's IP when it is an IP literal, otherwise the addresses given with
// WithAddrs, otherwise the interface's (for go-micro readers).
//
// Record TTLs are the Register TTL rounded up to whole seconds
// (DefaultRecordTTL when Register has none).
//
// # Size
//
// A node's complete answer must pack into at most MaxRecordSize (9000)
// bytes; Register fails with a *RecordTooLargeError (matching
// registry.ErrInvalid) past it. Above PacketSize (one Ethernet frame) it is
// accepted but IP-fragmented, and logged at Warn when registered. Node IDs
// must also make valid DNS names: dot-separated parts of 1 to 63 bytes.
//
// # Lookups
//
// GetService and ListServices send one query from an ephemeral port
// (hashicorp/mdns answers by unicast to it) and return as soon as answers
// stop arriving. Every Registry remembers which nodes it heard lately
// (announcements, goodbyes, answers to its lookups and watches; within
// SeenTTL, at most MaxSeen), so a lookup knows whom to expect: once all of them answered it
// returns after a short quiet period (WithQuietPeriod, default 1 ms, the
// time left for nodes never heard before); while some are missing, or when
// it expected nobody (the first lookup of a service), it waits for the
// straggler wait after the last answer (WithStragglerWait, default 25 ms).
// Expected nodes that do not answer are forgotten, so a dead node costs
// one slow lookup at most. When nothing answers at all, the lookup timeout
// (WithLookupTimeout, default 250 ms) ends it, which is what ErrNotFound
// costs. ctx ends a lookup early with ctx's error. ListServices asks
// "_services.<domain>." first, then all the names found in one query (two
// rounds). Answers are never dropped: each lookup drains a buffered channel
// fed by the socket readers. hashicorp/mdns's own Query is not used: it
// always waits its whole timeout and ignores ctx.
//
// # Announcements, goodbyes, watch
//
// Register sends an unsolicited response (the records above) at once and
// again after a second; Register with changed data re-announces; Register
// with unchanged data is a heartbeat and sends nothing and restarts nothing.
// Deregister stops the responder and sends a goodbye (PTR and SRV with TTL
// 0) at once and again 100 ms later. Announcements and goodbyes go from
// port 5353 to 224.0.0.251 (and ff02::fb with WithIPv6).
//
// Every Registry listens passively on 224.0.0.251:5353 (SO_REUSEADDR, so
// several processes per host can) and turns announcements and goodbyes into
// events at once. A watch also queries its service in rounds, every query
// interval (WithQueryInterval, default 1 s, ±10% jitter); one query loop per
// watched service per Registry (and one for "all services") serves every
// watcher of it. A quarter interval into a round, nodes that have not
// answered are asked once more (one lost packet must not drop a node); half
// an interval in, the round ends. A node is dropped (Delete event) when it
// answered neither query in WithMissedQueries (default 3) rounds in a row,
// or when at a round's end its record TTL has run out since it was last
// heard. So a node that crashed without a goodbye disappears at most
// missed×interval + interval/2 after its last answer: 3.5 s by default (up
// to 10% more with jitter). A new watcher first gets the loop's current
// state as Create events; a new loop starts with a query whose answers are
// collected like a lookup's and delivered sorted by node.
//
// # TTL
//
// mDNS has no server that could expire another host's records. The Register
// TTL is enforced twice: the registering Registry stops its own responder
// and sends a goodbye when the node is not registered again within the TTL,
// and watchers drop a node whose TTL ran out since it was last heard.
//
// # Close
//
// Close stops every responder and watcher without goodbyes (Close does not
// deregister; remote watchers drop the nodes within the crash bound above).
//
// # Bad input
//
// Records from other tools, broken or hostile responders are skipped with a
// Warn log line (at most 20 per 10 s, then a count): bad hex, bad zlib, more than MaxDecodedSize
// bytes once decompressed, TXT over MaxRecordSize, bad JSON, missing or
// invalid fields (registry.Validate), an instance name that does not match
// the record's service and node ID.
//
// # Resources
//
// A Registry runs one goroutine per socket (two per IP family), one that
// sends repeated announcements and goodbyes and withdraws expired nodes
// (asleep until something is due), and one per watched service; each
// registered node adds hashicorp/mdns's responder goroutines, blocked in
// socket reads. Nothing polls: an idle registered node uses no CPU except
// to answer queries. Close waits for all of them but hashicorp/mdns's,
// which end on their own once their sockets are closed.
//
// # Safety
//
// Multicast reaches every host on the link. Tests of this package run only
// inside private network namespaces (internal/netns).
package mdns
