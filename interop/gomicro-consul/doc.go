// Package gomicroconsul holds the tests that prove Beacon's consul registry
// and go-micro's (go-micro.dev/v5 v5.30.0, registry/consul) read each
// other's records on a real consul agent: register, get, list, watch and
// deregister in both directions, and calls from Beacon's client to go-micro
// nodes registered under the same name. It is a module of its own so that
// Beacon's module does not depend on go-micro; scripts/test.sh runs it.
//
//	cd interop/gomicro-consul && go test -race ./...
//
// The consul agent is the repository's .bin/consul
// (scripts/install-test-servers.sh), started through internal/testserver
// (importable here: this module's path is under github.com/beacon-go/beacon).
package gomicroconsul
