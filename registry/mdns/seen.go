package mdns

import "time"

// seen remembers when this Registry last heard of each node and service
// name, from any packet (announcements, answers to anyone's lookups or
// watches). Lookups use it to know whom to expect: once all of them have
// answered, there is no need to wait long for more. It holds at most
// MaxSeen entries; entries older than SeenTTL are pruned. It is guarded by
// Registry.mu.
type seen struct {
	nodes map[string]map[string]time.Time // service -> node ID -> last heard
	names map[string]time.Time            // service name from "_services" -> last heard
	n     int
}

func newSeen() *seen {
	return &seen{nodes: map[string]map[string]time.Time{}, names: map[string]time.Time{}}
}

// note records what a delivery says.
func (s *seen) note(d *delivery) {
	for _, o := range d.nodes {
		ids := s.nodes[o.service]
		if o.goodbye {
			if _, ok := ids[o.id]; ok {
				delete(ids, o.id)
				s.n--
				if len(ids) == 0 {
					delete(s.nodes, o.service)
				}
			}
			continue
		}
		if _, ok := ids[o.id]; !ok && !s.room(d.at) {
			continue
		}
		if ids == nil {
			ids = map[string]time.Time{}
			s.nodes[o.service] = ids
		}
		if _, ok := ids[o.id]; !ok {
			s.n++
		}
		ids[o.id] = d.at
	}
	for _, name := range d.services {
		if _, ok := s.names[name]; !ok {
			if !s.room(d.at) {
				continue
			}
			s.n++
		}
		s.names[name] = d.at
	}
}

// room makes room for one more entry if it can, pruning old ones.
func (s *seen) room(now time.Time) bool {
	if s.n < MaxSeen {
		return true
	}
	for svc, ids := range s.nodes {
		for id, at := range ids {
			if now.Sub(at) > SeenTTL {
				delete(ids, id)
				s.n--
			}
		}
		if len(ids) == 0 {
			delete(s.nodes, svc)
		}
	}
	for name, at := range s.names {
		if now.Sub(at) > SeenTTL {
			delete(s.names, name)
			s.n--
		}
	}
	return s.n < MaxSeen
}

// expected returns the keys a lookup for services (and names, with list)
// should hear: nodeKey(service, id) and nameKey(name), heard within SeenTTL,
// each mapped to false ("not heard yet").
func (s *seen) expected(services []string, list bool, now time.Time) map[string]bool {
	exp := map[string]bool{}
	for _, svc := range services {
		for id, at := range s.nodes[svc] {
			if now.Sub(at) <= SeenTTL {
				exp[nodeKey(svc, id)] = false
			}
		}
	}
	if list {
		for name, at := range s.names {
			if now.Sub(at) <= SeenTTL {
				exp[nameKey(name)] = false
			}
		}
	}
	return exp
}

// forget drops keys that a lookup expected and did not hear: they missed a
// query, so the next lookup should not wait for them.
func (s *seen) forget(keys []string) {
	for _, k := range keys {
		if name, ok := cutNameKey(k); ok {
			if _, ok := s.names[name]; ok {
				delete(s.names, name)
				s.n--
			}
			continue
		}
		svc, id := splitNodeKey(k)
		if ids, ok := s.nodes[svc]; ok {
			if _, ok := ids[id]; ok {
				delete(ids, id)
				s.n--
				if len(ids) == 0 {
					delete(s.nodes, svc)
				}
			}
		}
	}
}
