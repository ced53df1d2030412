package selector

import (
	"slices"
	"strings"
	"time"
)

// NodeHealth is what a selector knows of one node at one moment: a copy,
// for dashboards and diagnostics (package ui shows it).
type NodeHealth struct {
	ID string
	// InFlight: requests picked for the node and not done yet.
	InFlight int64
	// Latency: the node's latency EWMA (0 before its first answer, and
	// again after an ejection until it answers).
	Latency time.Duration
	// Weight: the node's weight (MetaWeight).
	Weight int
	// Ejected: the node is ejected (in its cool-off), or its one trial
	// request after the cool-off is under way (Probing).
	Ejected bool
	// Probing: its trial request is under way.
	Probing bool
	// Until: the end of the cool-off (zero when not ejected, or probing).
	Until time.Time
	// Incidents: failures in a row (0 when healthy); each one doubles the
	// cool-off.
	Incidents int
	// Foreign: the node speaks a protocol the selector's caller does not
	// (see WithProtocols), so it is not picked.
	Foreign bool
}

// Health returns what the selector knows of the nodes of service, sorted by
// node ID: nil until the service was selected (a selector knows only the
// services it is asked for). It changes nothing and holds the service's
// lock only while it copies the figures; a usual pick takes no lock (only
// a new view, a trial request or a failure does), so Select and Next stay
// lock-free and allocation-free.
func (s *Cached) Health(service string) []NodeHealth {
	st, ok := (*s.states.Load())[service]
	if !ok {
		return nil
	}
	st.mu.Lock()
	out := make([]NodeHealth, 0, len(st.stats))
	for id, ns := range st.stats {
		out = append(out, NodeHealth{
			ID:        id,
			InFlight:  ns.InFlight(),
			Latency:   ns.Latency(),
			Weight:    ns.Weight(),
			Ejected:   !ns.until.IsZero() || ns.probing,
			Probing:   ns.probing,
			Until:     ns.until,
			Incidents: ns.failures,
			Foreign:   ns.foreign,
		})
	}
	st.mu.Unlock()
	slices.SortFunc(out, func(a, b NodeHealth) int { return strings.Compare(a.ID, b.ID) })
	return out
}
