// Package mdns is a registry.Registry on multicast DNS: no server, every node
// answers for itself on the local network. It is built on
// github.com/miekg/dns: each Registry answers queries for the nodes it
// registered, sends announcements and goodbyes, queries and listens, all
// on its own sockets (one listener on port 5353 and one query socket per IP
// family).
//
// # On the wire
//
// The layout is go-micro's, so Beacon and go-micro services see each other.
// With the default domain "micro", a node with ID <id> of service <name>
// answers:
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
// hex(zlib(JSON)) cut into strings of at most 255 bytes (a DNS limit). The
// JSON is the registry.Service with exactly one node:
//
//	{"name":"greeter","service":"greeter","version":"1.0.0","metadata":{<node's>},
//	 "service_metadata":{<service's>},"endpoints":[...],
//	 "nodes":[{"id":"...","address":"10.0.0.5:8080","metadata":{<node's>}}]}
//
// "service" repeats the name because go-micro's decoder keys on it (Go's
// JSON matching is case-insensitive, so go-micro's "Service", "Version",
// "Endpoints", "Metadata" read ours). "metadata" is the node's metadata,
// which is how go-micro reads it; the service's is in "service_metadata".
// Records of Beacon versions before "service_metadata" had the service's
// metadata in "metadata" and are read that way. Records written by go-micro
// have no "nodes": they are read with the node ID from the instance name,
// the address from SRV port and A/AAAA, and "metadata" as node metadata.
//
// Every answer repeats its query's ID and question and holds one node, the
// instance's TXT last: go-micro's client drops answers without the question
// it asked and builds its node from the last record of a message. An
// announcement is go-micro's "_services" PTR, then the node's records, TXT
// last. A goodbye is the node's records (PTR, SRV, A/AAAA, TXT) with TTL 0:
// go-micro's watcher reports a delete only for a complete entry with TTL 0.
// A goodbye without PTR (go-micro's: SRV, A and TXT) is read from its TXT.
// Queries from port 5353 (full mDNS queriers) are answered by multicast,
// others by unicast to their source.
//
// The node's address is taken from the JSON; the A/AAAA record carries the
// address's IP when it is an IP literal, otherwise the addresses given with
// WithAddrs, otherwise the interface's (for go-micro readers).
//
// Record TTLs are the Register TTL rounded up to whole seconds
// (DefaultRecordTTL when Register has none).
//
// # go-micro
//
// interop/gomicro (a module of its own) runs go-micro v5.30.0's mdns
// registry against this one in a namespace LAN: go-micro's GetService and
// Watch see Beacon nodes (create; delete on Deregister and when the TTL
// runs out without a heartbeat, which makes the Registry withdraw the node
// with a goodbye), and Beacon sees go-micro nodes, their goodbyes at once
// and their crashes after missed query rounds. go-micro's watcher never
// reports a node that vanished without a goodbye (a SIGKILLed process): it
// has no expiry; go-micro's GetService stops returning it at once.
//
// # Signed records
//
// With WithKey, a Registry signs the TXT of every announcement, answer and
// goodbye it sends (HMAC-SHA256 over the record's zlib bytes, the domain,
// goodbye or not, the TTL and a timestamp, in one more TXT string, see
// sign.go) and drops node records and goodbyes that are unsigned, badly
// signed, outside the signature window (WithSignatureWindow, default 15
// s) of its clock, or replays of a signature it saw within the window. So
// a host without the key cannot add, change or remove nodes, and can replay
// a node's signed record only to a Registry that has not seen it, within
// the window (a node that left can so come back for up to the window plus
// the crash bound below). Service names from "_services" are not signed
// (a name without a signed node lists nothing). go-micro reads signed
// records (it ignores the extra string) but cannot sign: a Registry with a
// key does not see go-micro nodes. Keys are shared secrets: anyone with the
// key is trusted; there is no per-node identity, no encryption, and the
// hosts' clocks must agree within the window.
//
// # Hostile peers without a key
//
// mDNS has no authentication; without a key a Registry limits what one
// host can do:
//
//   - A node is spoken for by the address it was first heard from and by
//     the IP of its own address. Records that change it and goodbyes for it
//     from any other source are ignored (and logged) until it has not been
//     heard for its record TTL; then whoever speaks next takes it over. A
//     rogue cannot take a live node's calls or make it "not found". A reader
//     that never heard a node believes whoever answers first, and a rogue
//     that can forge its source address (raw sockets) can pass for the
//     node's host.
//   - Per source, packets over a budget are dropped before they are
//     unpacked: 100 unsolicited responses a second (burst 500), 100 answers
//     a second plus 64 per query this Registry sent (burst 1000), 500
//     queries answered a second (burst 1000). A host may bring 64 nodes
//     never heard before at once and 8 more a second; records of further
//     new nodes from it are ignored. This host's own addresses are not
//     limited. Announcements that bring no expected node do not make a
//     lookup wait longer. So a flood from one host costs a map lookup per
//     packet and lookups keep returning the real nodes promptly; some fake
//     nodes of a flooding host still get in (they are records like any
//     other, within its budget).
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
// (responders answer by unicast to it) and return as soon as answers
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
// fed by the socket readers.
//
// # Announcements, goodbyes, watch
//
// Register sends an unsolicited response (the records above) at once and
// again after a second; Register with changed data re-announces; Register
// with unchanged data is a heartbeat and sends nothing and restarts nothing.
// Deregister stops answering for the node and sends a goodbye (its records
// with TTL 0) at once and again 100 ms later. Announcements and goodbyes go from
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
// TTL is enforced twice: the registering Registry stops answering for a node
// and sends a goodbye when the node is not registered again within the TTL,
// and watchers drop a node whose TTL ran out since it was last heard.
//
// # Close
//
// Close stops answering and every watcher, without goodbyes (Close does not
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
// (asleep until something is due), and one per watched service; registered
// nodes add none. Nothing polls: an idle registered node uses no CPU except
// to answer queries. Close waits for all of them.
//
// # Safety
//
// Multicast reaches every host on the link. Tests of this package run only
// inside private network namespaces (internal/netns).
package mdns
