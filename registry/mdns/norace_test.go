//go:build !race

package mdns_test

const raceEnabled = false
