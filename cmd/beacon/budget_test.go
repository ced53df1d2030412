package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/beacon-go/beacon/internal/testserver"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/etcd"
)

// childEnv makes the test binary run the CLI with the arguments in it
// (separated by newlines) and exit: TestCLIChild.
const childEnv = "BEACON_TEST_CLI_ARGS"

// TestCLIChild is the CLI, run by the test binary in a process of its own
// (runCLI) so that its peak memory can be measured alone.
func TestCLIChild(t *testing.T) {
	args := os.Getenv(childEnv)
	if args == "" {
		t.Skip("runs only as the child of runCLI")
	}
	os.Exit(run(context.Background(), append([]string{"beacon"}, strings.Split(args, "\n")...), os.Stdout, os.Stderr))
}

// runCLI runs the CLI in a child process and returns its stdout, stderr,
// exit code and peak resident memory in MiB.
func runCLI(t *testing.T, args ...string) (string, string, int, float64) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCLIChild$")
	cmd.Env = append(os.Environ(), childEnv+"="+strings.Join(args, "\n"))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	rss := float64(cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss) / 1024 // KiB on Linux
	return out.String(), errb.String(), code, rss
}

// Issue 13 item 6: 50 invalid 1 MB records (a metadata value far over the
// limit) next to a service's two valid nodes. `beacon describe` and
// `beacon services` used 200-400 MB more (peak RSS) than on a clean
// registry and printed a warning per record; now one listing page at a
// time and a few warnings.
func TestCLIMemoryWithJunk(t *testing.T) {
	const (
		n      = 50
		size   = 1_000_000
		budget = 64 // MiB over the same command on a clean registry
	)
	srv := testserver.MustStartEtcd(t)
	reg, err := etcd.New(context.Background(), etcd.WithAddrs(srv.Endpoints()...), etcd.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	s := &registry.Service{Name: "junk", Version: "1.0.0", Nodes: []*registry.Node{
		{ID: "ok-1", Address: "127.0.0.1:1"}, {ID: "ok-2", Address: "127.0.0.1:2"}}}
	if err := reg.Register(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	if err := reg.Register(context.Background(), &registry.Service{Name: "clean", Version: "1.0.0",
		Nodes: []*registry.Node{{ID: "c-1", Address: "127.0.0.1:3"}}}); err != nil {
		t.Fatal(err)
	}
	flags := []string{"--registry", "etcd", "--registry_address", strings.Join(srv.Endpoints(), ","), "--timeout", "60s"}

	_, _, code, cleanDescribe := runCLI(t, append(flags, "describe", "clean")...)
	if code != 0 {
		t.Fatalf("describe clean: exit %d", code)
	}
	_, _, _, cleanServices := runCLI(t, append(flags, "services")...)

	cli, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	for i := range n {
		id := fmt.Sprintf("bad-%02d", i)
		head := fmt.Sprintf(`{"name":"junk","version":"1","nodes":[{"id":%q,"address":"127.0.0.1:1","metadata":{"x":"`, id)
		val := head + strings.Repeat("a", size-len(head)-5) + `"}}]}`
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := cli.Put(ctx, etcd.DefaultPrefix+"junk/"+id, val)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}

	out, errs, code, rss := runCLI(t, append(flags, "describe", "junk")...)
	warns := strings.Count(errs, "skipping malformed record")
	t.Logf("beacon describe junk: peak RSS %.0f MiB (%.0f MiB on a clean service), %d warning lines", rss, cleanDescribe, warns)
	if code != 0 || !strings.Contains(out, "ok-1") || !strings.Contains(out, "ok-2") {
		t.Fatalf("describe junk: exit %d\n%s%s", code, out, errs)
	}
	if rss > cleanDescribe+budget || warns > registry.BadRecordLogBurst+1 {
		t.Errorf("describe junk: peak RSS %.0f MiB, %.0f MiB on a clean service (budget +%d); %d warning lines:\n%s",
			rss, cleanDescribe, budget, warns, errs)
	}

	out, errs, code, rss = runCLI(t, append(flags, "services")...)
	warns = strings.Count(errs, "skipping malformed record")
	t.Logf("beacon services: peak RSS %.0f MiB (%.0f MiB without the junk), %d warning lines", rss, cleanServices, warns)
	if code != 0 || !strings.Contains(out, "junk") || !strings.Contains(out, "clean") {
		t.Fatalf("services: exit %d\n%s%s", code, out, errs)
	}
	if rss > cleanServices+budget || warns > registry.BadRecordLogBurst+1 {
		t.Errorf("services: peak RSS %.0f MiB, %.0f MiB without the junk (budget +%d); %d warning lines:\n%s",
			rss, cleanServices, budget, warns, errs)
	}
}
