package mdns_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/beacon-go/beacon/internal/netns"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/mdns"
)

// lanPackets returns how many packets the hosts of a lab have sent onto its
// LAN: the packets received by the bridge's ports (each host's packets
// enter the bridge once, whatever their destination).
func lanPackets(t *testing.T, lab *netns.Lab) int64 {
	t.Helper()
	out, err := exec.Command("ip", "-n", lab.Bridge(), "-s", "-j", "link", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	var links []struct {
		Name  string `json:"ifname"`
		Stats struct {
			RX struct {
				Packets int64 `json:"packets"`
			} `json:"rx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, l := range links {
		if strings.HasPrefix(l.Name, "p") {
			n += l.Stats.RX.Packets
		}
	}
	return n
}

func packetRate(t *testing.T, lab *netns.Lab, d time.Duration) float64 {
	before, start := lanPackets(t, lab), time.Now()
	time.Sleep(d) // the measurement window
	return float64(lanPackets(t, lab)-before) / time.Since(start).Seconds()
}

// TestScaleLAN measures mdns on a LAN of 30 hosts, one node process each,
// seen from a 31st: register -> remote Create, lookups, packets per second
// on the LAN at idle, clean stop and crash -> Delete. About 45 s; it runs
// only with BEACON_MEASURE=1 (go test -run ScaleLAN -v ./registry/mdns;
// without -race for figures worth quoting).
func TestScaleLAN(t *testing.T) {
	if os.Getenv("BEACON_MEASURE") != "1" {
		t.Skip("a measurement: set BEACON_MEASURE=1")
	}
	const hosts = 30
	lab := netns.RequireLab(t, hosts+1)
	obs := newObserver(t, lab, hosts)
	ev := track(t, obs, registry.WatchService("scale"))

	nodes := make([]*node, hosts)
	var created []time.Duration
	for i := range hosts {
		n := startNode(t, lab, i, "scale", fmt.Sprintf("node-%02d", i))
		nodes[i] = n
		reg := n.expectTime(t, "REGISTER ")
		n.expect(t, "READY")
		e := ev.wait(t, 10*time.Second, registry.Create, n.id)
		created = append(created, e.Timestamp.Sub(reg))
	}
	t.Logf("register -> remote Create (%d nodes, started one by one): p50 %v p99 %v max %v",
		hosts, percentile(created, .5), percentile(created, .99), percentile(created, 1))

	time.Sleep(3 * time.Second) // the second announcements are over
	t.Logf("LAN at idle, %d registered nodes, one remote watcher (1 query/s): %.1f packets/s", hosts, packetRate(t, lab, 10*time.Second))

	cold := newObserver(t, lab, hosts)
	start := time.Now()
	got, err := cold.GetService(ctxT(t), "scale")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first GetService of a fresh Registry: %v, %d nodes", time.Since(start), len(got[0].Nodes))
	cold.Close()
	var lookups []time.Duration
	complete := 0
	for range 300 {
		start := time.Now()
		got, err := obs.GetService(ctxT(t), "scale")
		lookups = append(lookups, time.Since(start))
		if err == nil && len(got) == 1 && len(got[0].Nodes) == hosts {
			complete++
		}
	}
	t.Logf("GetService, %d nodes on %d hosts, 300 lookups: p50 %v p90 %v p99 %v max %v; %d/300 with all %d nodes",
		hosts, hosts, percentile(lookups, .5), percentile(lookups, .9), percentile(lookups, .99), percentile(lookups, 1), complete, hosts)
	var lists []time.Duration
	for range 30 {
		start := time.Now()
		if _, err := obs.ListServices(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		lists = append(lists, time.Since(start))
	}
	t.Logf("ListServices, 30 lookups: p50 %v p99 %v", percentile(lists, .5), percentile(lists, .99))

	ev.ev.Stop()
	time.Sleep(2 * time.Second) // the watch loop ends
	t.Logf("LAN at idle, %d registered nodes, nobody watching: %.1f packets/s", hosts, packetRate(t, lab, 5*time.Second))
	ev = track(t, obs, registry.WatchService("scale"))
	for _, n := range nodes {
		ev.wait(t, 5*time.Second, registry.Create, n.id)
	}

	var stops []time.Duration
	for _, n := range nodes[:3] {
		fmt.Fprintln(n.stdin, "stop")
		at := n.expectTime(t, "STOP ")
		e := ev.wait(t, 5*time.Second, registry.Delete, n.id)
		stops = append(stops, e.Timestamp.Sub(at))
		n.expect(t, "STOPPED")
	}
	t.Logf("clean stop -> remote Delete: %v", stops)

	bound := time.Duration(mdns.DefaultMissedQueries)*mdns.DefaultQueryInterval*11/10 + mdns.DefaultQueryInterval/2
	killed := time.Now()
	for _, n := range nodes[3:6] {
		if err := n.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	var crashes []time.Duration
	for _, n := range nodes[3:6] {
		e := ev.wait(t, bound+2*time.Second, registry.Delete, n.id)
		crashes = append(crashes, e.Timestamp.Sub(killed))
	}
	t.Logf("SIGKILL -> remote Delete: %v (bound %v)", crashes, bound)
	got, err = obs.GetService(ctxT(t), "scale")
	if err != nil || len(got[0].Nodes) != hosts-6 {
		t.Errorf("after stops and crashes GetService = %v, %v; want %d nodes", got, err, hosts-6)
	}
}
