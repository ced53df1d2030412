// Package e2e holds end-to-end tests that run Beacon's programs as separate
// processes on a LAN of network namespaces (see internal/netns): greeter
// nodes on some hosts, a client and the beacon CLI on another, discovering
// each other over mdns, the default registry. It has no non-test code.
package e2e
