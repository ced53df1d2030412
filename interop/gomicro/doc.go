// Package gomicro holds the interoperability tests of Beacon's mdns registry
// with the real go-micro v5.30.0 (go-micro.dev/v5/registry's mdns
// registry). It is a module of its own so that Beacon's go.mod does not
// require go-micro; its go.mod points at this checkout of Beacon.
//
// The tests build a LAN of network namespaces (internal/netns, inside the
// private namespace that TestMain makes: nothing reaches the machine's own
// network) and run each go-micro and Beacon node as a process in a host of
// it: the test binary re-executed in a role (see roles_test.go). Run them
// with
//
//	cd interop/gomicro && go test -race ./...
//
// (scripts/test.sh does).
package gomicro
