//go:build race

package client_test

// raceEnabled: the race detector makes sync.Pool drop values at random,
// so allocation counts are not checked.
const raceEnabled = true
