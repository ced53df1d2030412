package server

import "sync"

// flight counts the requests a server is running, and lets Stop wait for
// them without racing new arrivals (a sync.WaitGroup's Add may not run
// concurrently with a Wait that found it at zero): once drain is called,
// enter refuses, so a request either counts before the wait sees zero or
// is refused (not run).
type flight struct {
	mu     sync.Mutex
	n      int
	closed bool
	idle   chan struct{} // closed when n reaches 0 after drain
}

// enter counts a request in, unless the server is draining.
func (f *flight) enter() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.n++
	return true
}

// exit counts a request out (its answer written).
func (f *flight) exit() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n--; f.n == 0 && f.idle != nil {
		close(f.idle)
		f.idle = nil
	}
}

// drain refuses new requests and returns a channel closed once none is
// running.
func (f *flight) drain() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	ch := make(chan struct{})
	if f.n == 0 {
		close(ch)
	} else {
		f.idle = ch
	}
	return ch
}
