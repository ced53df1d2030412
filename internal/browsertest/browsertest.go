// Package browsertest starts a real headless Chromium for tests and drives
// it with chromedp.
//
// A machine without Chromium fails the test with the command that installs
// it (InstallCommand; scripts/test.sh runs it as root), never a skip. The
// browser only reaches what a test navigates to: host names resolve to
// nothing (--host-resolver-rules; tests use IP literals such as
// 127.0.0.1), there is no proxy, and background networking (updates,
// safe browsing, metrics) is off. It is closed when the test ends, and the
// test fails if any of its processes is left.
package browsertest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// InstallCommand installs Chromium on Debian and Ubuntu (as root).
const InstallCommand = "apt-get install -y chromium"

// PathEnv names the environment variable that overrides the Chromium binary.
const PathEnv = "BEACON_CHROMIUM"

// Path returns the Chromium binary: $BEACON_CHROMIUM, or the first of
// chromium, chromium-browser, google-chrome-stable, google-chrome in PATH.
func Path() (string, error) {
	if p := os.Getenv(PathEnv); p != "" {
		return p, nil
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome-stable", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("browsertest: no Chromium in PATH (chromium, chromium-browser, google-chrome): install it with `%s` (scripts/test.sh does, as root), or set %s", InstallCommand, PathEnv)
}

// Browser is a tab of a headless Chromium.
type Browser struct {
	// Ctx is the chromedp context of the tab: chromedp.Run(b.Ctx, ...).
	Ctx  context.Context
	mu   sync.Mutex
	errs []string
}

// Errors returns the page's uncaught exceptions, console errors and
// browser log errors (Content Security Policy violations among them) so
// far.
func (b *Browser) Errors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.errs...)
}

func (b *Browser) listen(ev any) {
	var msg string
	switch ev := ev.(type) {
	case *runtime.EventExceptionThrown:
		d := ev.ExceptionDetails
		msg = "exception: " + d.Text
		if d.Exception != nil {
			msg += " " + d.Exception.Description
		}
		msg += fmt.Sprintf(" (%s:%d)", d.URL, d.LineNumber)
	case *runtime.EventConsoleAPICalled:
		if ev.Type != runtime.ConsoleAPICalledTypeError {
			return
		}
		var parts []string
		for _, a := range ev.Args {
			parts = append(parts, string(a.Value)+a.Description)
		}
		msg = "console.error: " + strings.Join(parts, " ")
	case *log.EventEntryAdded:
		if ev.Entry == nil || ev.Entry.Level != log.EntryLevelError {
			return
		}
		msg = fmt.Sprintf("log %s: %s %s", ev.Entry.Source, ev.Entry.Text, ev.Entry.URL)
	default:
		return
	}
	b.mu.Lock()
	b.errs = append(b.errs, msg)
	b.mu.Unlock()
}

// Start starts a headless Chromium with a window of width x height and
// returns its first tab, started. It fails the test when there is no
// Chromium. The browser is closed at the test's cleanup, which fails the
// test if a process of it is left.
func Start(t testing.TB, width, height int) *Browser {
	t.Helper()
	path, err := Path()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "beacon-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.UserDataDir(dir),
		chromedp.WindowSize(width, height),
		chromedp.DisableGPU,
		chromedp.Flag("hide-scrollbars", true),
		chromedp.Flag("no-proxy-server", true),
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"),
		chromedp.Flag("dns-prefetch-disable", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("no-pings", true),
		chromedp.Flag("disable-features", "Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,AutofillServerCommunication,CertificateTransparencyComponentUpdater,NetworkTimeServiceQuerying"),
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run as root with its sandbox
	}
	var out bytes.Buffer
	var outMu sync.Mutex
	opts = append(opts, chromedp.CombinedOutput(writerFunc(func(p []byte) (int, error) {
		outMu.Lock()
		defer outMu.Unlock()
		if out.Len() < 64<<10 {
			out.Write(p)
		}
		return len(p), nil
	})))
	allocCtx, allocCancel := chromedp.NewExecAllocator(context.Background(), opts...)
	b := &Browser{}
	ctx, cancel := chromedp.NewContext(allocCtx, chromedp.WithListener(b.listen))
	b.Ctx = ctx
	cleanup := func() {
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		chromedp.Cancel(cctx) // closes the browser gracefully, then waits for it
		ccancel()
		cancel()
		allocCancel() // kills what is left and waits for the process
		deadline := time.Now().Add(5 * time.Second)
		for {
			left := processesUsing(dir)
			if len(left) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("browsertest: Chromium processes left after close: %v", left)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		for range 50 { // children may write into the directory a moment after the browser stops
			if os.RemoveAll(dir) == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// Start the browser now, without a timeout on the first Run (it would
	// bound the browser's life).
	if err := chromedp.Do(ctx); err != nil {
		cleanup()
		outMu.Lock()
		defer outMu.Unlock()
		t.Fatalf("browsertest: start %s: %v\n%s", path, err, out.String())
	}
	t.Cleanup(cleanup)
	return b
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// processesUsing returns the PIDs of processes started with the user data
// directory dir (Chromium passes it to all its processes).
func processesUsing(dir string) []int {
	want := "--user-data-dir=" + dir
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		for arg := range bytes.SplitSeq(cmdline, []byte{0}) {
			if string(arg) == want {
				if stat, err := os.ReadFile("/proc/" + e.Name() + "/stat"); err == nil && isZombie(stat) {
					break // exited, its parent reaps it
				}
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

func isZombie(stat []byte) bool {
	i := bytes.LastIndexByte(stat, ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}
