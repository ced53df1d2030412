package testserver

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// proc is one run of a server process. Its single goroutine (cmd.Wait) ends
// when the process exits; stop and kill return only after that.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once cmd.Wait has returned
	err  error         // result of cmd.Wait, valid after done is closed
}

// startProc starts bin with args in dir, appending its stdout and stderr to
// logPath. Environment variables with one of dropEnv prefixes are removed
// (etcd, for instance, refuses ETCD_* variables that conflict with flags).
func startProc(bin string, args []string, dir, logPath string, dropEnv ...string) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("testserver: open log: %w", err)
	}
	defer f.Close() // the child has its own copy after Start
	fmt.Fprintf(f, "=== %s testserver: starting %s %s\n", time.Now().Format(time.RFC3339Nano), bin, strings.Join(args, " "))

	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout = f // an *os.File: no copying goroutine
	cmd.Stderr = f
	cmd.Env = filterEnv(os.Environ(), dropEnv)
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("testserver: start %s: %w", bin, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func filterEnv(env, dropPrefixes []string) []string {
	out := env[:0:0]
next:
	for _, kv := range env {
		for _, p := range dropPrefixes {
			if strings.HasPrefix(kv, p) {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to grace for the exit, then SIGKILLs and
// waits. It returns nil for a clean exit or an exit caused by our signals.
func (p *proc) stop(grace time.Duration) error {
	if p.exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return fmt.Errorf("testserver: pid %d did not exit within %v of SIGTERM; killed", p.pid(), grace)
}

// kill sends SIGKILL and waits for the process to exit.
func (p *proc) kill() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// exitError describes how the process ended (after done is closed).
func (p *proc) exitError() error {
	if p.err == nil {
		return errors.New("exited with status 0")
	}
	return p.err
}

// httpClient does not keep idle connections, so no transport goroutine
// outlives a request (goleak-friendly), and never uses a proxy.
var httpClient = &http.Client{
	Timeout: 2 * time.Second,
	Transport: &http.Transport{
		Proxy:             nil,
		DisableKeepAlives: true,
	},
}

// tlsHTTPClient is httpClient with a TLS configuration.
func tlsHTTPClient(cfg *tls.Config) *http.Client {
	return &http.Client{
		Timeout:   httpClient.Timeout,
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true, TLSClientConfig: cfg},
	}
}

// doJSON sends a request (with body, if non-nil) and decodes a JSON
// response into v, if v is not nil.
func doJSON(ctx context.Context, method, url string, body io.Reader, v any) error {
	return doJSONWith(ctx, httpClient, nil, method, url, body, v)
}

// doJSONWith is doJSON with another client (nil: httpClient) and extra
// request headers.
func doJSONWith(ctx context.Context, hc *http.Client, header http.Header, method, url string, body io.Reader, v any) error {
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	if hc == nil {
		hc = httpClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, strings.TrimSpace(string(data)))
	}
	if v == nil {
		return nil
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s %s: decode %q: %w", method, url, data, err)
	}
	return nil
}

// waitReady polls ready every 50ms until it returns nil, the process exits,
// or timeout passes.
func waitReady(p *proc, timeout time.Duration, ready func(ctx context.Context) error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		last = ready(ctx)
		cancel()
		if last == nil {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("process exited during startup: %v", p.exitError())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v: %v", timeout, last)
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-p.done:
		case <-t.C:
		}
		t.Stop()
	}
}
