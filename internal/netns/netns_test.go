//go:build linux

package netns

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

type isolated struct{ m *testing.M }

func (i isolated) Run() int { return RunIsolated(i.m) }

func TestMain(m *testing.M) { goleak.VerifyTestMain(isolated{m}) }

func TestVerdict(t *testing.T) {
	cases := []struct {
		name        string
		priv        bool
		err         error
		unavailable string
		require     bool
		want        action
		wantMsg     string
	}{
		{"private", true, nil, "", false, run, ""},
		{"private with stale marker", true, nil, "whatever", true, run, ""},
		{"no namespace", false, nil, "unshare: Operation not permitted", false, skipTest, "Operation not permitted"},
		{"no namespace in CI", false, nil, "unshare: Operation not permitted", true, failTest, EnvRequire},
		{"initial namespace", false, nil, "", false, failTest, "initial network namespace"},
		{"initial namespace in CI", false, nil, "", true, failTest, "initial network namespace"},
		{"unknown", false, errors.New("permission denied"), "", false, failTest, "permission denied"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, msg := verdict(tc.priv, tc.err, tc.unavailable, tc.require)
			if got != tc.want || !strings.Contains(msg, tc.wantMsg) {
				t.Errorf("verdict = %v %q, want %v containing %q", got, msg, tc.want, tc.wantMsg)
			}
		})
	}
}

func TestIsolated(t *testing.T) {
	Require(t)
	priv, err := InPrivate()
	if err != nil || !priv {
		t.Fatalf("InPrivate = %v, %v inside RunIsolated", priv, err)
	}
	// Only lo exists, it is up, and multicast is routed over it.
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	if len(ifs) != 1 || ifs[0].Flags&net.FlagLoopback == 0 || ifs[0].Flags&net.FlagUp == 0 {
		t.Fatalf("interfaces = %v, want only lo, up", ifs)
	}
	out, err := exec.Command("ip", "route", "show", "table", "main").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "224.0.0.0/4 dev lo") {
		t.Fatalf("ip route: %v %s", err, out)
	}
	// The child must not pass the re-exec marker on.
	if os.Getenv(envChild) != "" {
		t.Errorf("%s still set in the test process", envChild)
	}
}

func TestParseNSID(t *testing.T) {
	for _, s := range []string{"", "1", "a:b", "1:", ":2", "1:2:3"} {
		if _, err := parseNSID(s); err == nil {
			t.Errorf("parseNSID(%q) succeeded", s)
		}
	}
	id := nsID{4, 4026531840}
	if got, err := parseNSID(id.String()); err != nil || got != id {
		t.Errorf("round trip %v -> %v, %v", id, got, err)
	}
}

func TestLabMulticast(t *testing.T) {
	lab := RequireLab(t, 3)
	if lab.Len() != 3 || lab.IP(2).String() != "10.99.0.13" {
		t.Fatalf("lab of %d, host 2 at %v", lab.Len(), lab.IP(2))
	}
	group := &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251), Port: 5353}
	listen := func() *net.UDPConn {
		c, err := net.ListenMulticastUDP("udp4", nil, group)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// A listener in host 0, one in host 2, one in the test's own namespace.
	var h0, h2 *net.UDPConn
	if err := lab.Do(0, func() error { h0 = listen(); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := lab.Do(2, func() error { h2 = listen(); return nil }); err != nil {
		t.Fatal(err)
	}
	own := listen()
	// Host 1 sends to the group.
	var sender *net.UDPConn
	if err := lab.Do(1, func() error {
		var err error
		sender, err = net.ListenUDP("udp4", &net.UDPAddr{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	if _, err := sender.WriteToUDP([]byte("hello lab"), group); err != nil {
		t.Fatal(err)
	}
	for i, c := range []*net.UDPConn{h0, h2} {
		buf := make([]byte, 64)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := c.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("listener %d: %v", i, err)
		}
		if string(buf[:n]) != "hello lab" || !from.IP.Equal(lab.IP(1)) {
			t.Errorf("listener %d got %q from %v", i, buf[:n], from)
		}
	}
	// Nothing reaches the test's own namespace: no link joins it to the lab.
	own.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, from, err := own.ReadFromUDP(make([]byte, 64)); err == nil {
		t.Errorf("the test's own namespace received %d bytes from %v", n, from)
	}
	ifs, _ := net.Interfaces()
	if len(ifs) != 1 {
		t.Errorf("the lab added interfaces to the test's namespace: %v", ifs)
	}
}

func TestLabCommandAndClose(t *testing.T) {
	Require(t)
	lab, err := NewLab(2)
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	out, err := lab.Command(1, "ip", "-4", "-o", "addr", "show", "dev", LabIface).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "10.99.0.12/24") {
		t.Fatalf("ip addr in host 1: %v %s", err, out)
	}
	out, err = lab.Command(0, "sh", "-c", "echo $"+EnvLabHost+" $"+EnvLabIP).Output()
	if err != nil || strings.TrimSpace(string(out)) != "0 10.99.0.11" {
		t.Fatalf("lab environment: %v %q", err, out)
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6"); err == nil {
		var v bytes.Buffer
		lab.Do(0, func() error {
			b, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6")
			v.Write(b)
			return err
		})
		if strings.TrimSpace(v.String()) != "1" {
			t.Errorf("IPv6 not disabled in host 0 (test namespace has %q)", b)
		}
	}
	// A process left running is killed by Close, and the namespaces go.
	sleeper := lab.Command(1, "sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- sleeper.Wait() }()
	start := time.Now()
	if err := lab.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Fatal("process in the lab survived Close")
	}
	t.Logf("Close with one running process took %v", time.Since(start))
	list, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil || strings.TrimSpace(string(list)) != "" {
		t.Errorf("namespaces left after Close: %v %s", err, list)
	}
	if err := lab.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestLabIPv6(t *testing.T) {
	lab := RequireLab(t, 2, LabIPv6())
	out, err := lab.Command(0, "ip", "-6", "-o", "addr", "show", "dev", LabIface).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "fe80::") {
		t.Fatalf("no IPv6 link-local address in host 0: %v %s", err, out)
	}
}

func BenchmarkNewLab10(b *testing.B) {
	Require(b)
	for b.Loop() {
		lab, err := NewLab(10)
		if err != nil {
			b.Fatal(err)
		}
		if err := lab.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
