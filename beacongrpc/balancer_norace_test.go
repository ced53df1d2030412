//go:build !race

package beacongrpc_test

const raceEnabled = false
