package static

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/beacon-go/beacon/registry"
)

// fileSource keeps a Registry in step with a file.
//
// It watches the file's directory, not the file: editors and tools that
// save by writing a new file and renaming it over the old one (vim,
// kubectl's ConfigMap volumes, `mv`) replace the inode, and a watch on the
// old inode would go quiet. Events for the file's name (and, if the path is
// a symlink, for its target's name, and for Kubernetes' "..data" swaps) start
// a debounce timer; when it fires the file is read, and parsed if its bytes
// changed.
type fileSource struct {
	r        *Registry
	path     string
	format   Format
	log      *slog.Logger
	debounce time.Duration
	poll     time.Duration // > 0: polling mode

	mu      sync.Mutex // serialises reloads
	last    []byte     // the bytes last read (good or not)
	lastErr string     // the last read or parse error logged, to log each once
	stat    os.FileInfo

	fsw     *fsnotify.Watcher // nil in polling mode
	watched []string          // directories added to fsw
	target  string            // the symlink target's cleaned path ("" if not a symlink)

	stop chan struct{}
	done chan struct{}
}

func openFile(r *Registry, o options) (*fileSource, []*registry.Service, error) {
	path := filepath.Clean(o.path)
	f := &fileSource{r: r, path: path, format: o.format, log: r.log.With("path", path), debounce: o.debounce,
		stop: make(chan struct{}), done: make(chan struct{})}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("static registry: %w", err)
	}
	ss, err := ParseFile(data, o.format, path)
	if err != nil {
		return nil, nil, err
	}
	f.last = data
	f.stat, _ = os.Stat(path)
	if o.noNotify {
		f.poll = o.poll
		return f, ss, nil
	}
	if err := f.notify(); err != nil {
		f.log.Warn("static registry: file notifications unavailable; polling the file instead", "interval", o.poll, "err", err)
		f.poll = o.poll
	}
	return f, ss, nil
}

// notify sets up fsnotify on the directories of the path and of its
// symlink target.
func (f *fileSource) notify() error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	f.fsw = w
	if err := f.watchDirs(); err != nil {
		w.Close()
		f.fsw = nil
		return err
	}
	return nil
}

// watchDirs adds the directories that must be watched now (the target of a
// symlink can change). Only the first directory is required.
func (f *fileSource) watchDirs() error {
	dirs := []string{filepath.Dir(f.path)}
	f.target = ""
	if t, err := filepath.EvalSymlinks(f.path); err == nil && filepath.Clean(t) != f.path {
		f.target = filepath.Clean(t)
		dirs = append(dirs, filepath.Dir(f.target))
	}
	for i, d := range dirs {
		if slices.Contains(f.watched, d) {
			continue
		}
		if err := f.fsw.Add(d); err != nil {
			if i == 0 {
				return err
			}
			f.log.Debug("static registry: cannot watch the symlink target's directory", "dir", d, "err", err)
			continue
		}
		f.watched = append(f.watched, d)
	}
	return nil
}

func (f *fileSource) start() { go f.loop() }

func (f *fileSource) close() {
	close(f.stop)
	<-f.done
	if f.fsw != nil {
		f.fsw.Close()
	}
}

// relevant reports whether an event may concern the file.
func (f *fileSource) relevant(ev fsnotify.Event) bool {
	name := filepath.Clean(ev.Name)
	return name == f.path || (f.target != "" && name == f.target) ||
		strings.HasPrefix(filepath.Base(name), "..") // Kubernetes' atomic writer swaps "..data"
}

func (f *fileSource) loop() {
	defer close(f.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	pending := false
	var events chan fsnotify.Event
	var errs chan error
	var tick <-chan time.Time
	if f.fsw != nil {
		events, errs = f.fsw.Events, f.fsw.Errors
	} else {
		t := time.NewTicker(f.poll)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-f.stop:
			timer.Stop()
			return
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if f.relevant(ev) && !pending {
				pending = true
				timer.Reset(f.debounce)
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			// An overflow may have dropped our event: read the file anyway.
			f.log.Warn("static registry: file notification error; reading the file again", "err", err)
			if !pending {
				pending = true
				timer.Reset(f.debounce)
			}
		case <-tick:
			if f.changedOnDisk() {
				_ = f.reload(false)
			}
		case <-timer.C:
			pending = false
			_ = f.reload(false)
			if f.fsw != nil {
				f.mu.Lock()
				if err := f.watchDirs(); err != nil {
					f.log.Warn("static registry: cannot watch the file's directory", "err", err)
				}
				f.mu.Unlock()
			}
		}
	}
}

// changedOnDisk reports, in polling mode, whether the file's identity, size
// or modification time changed since the last look.
func (f *fileSource) changedOnDisk() bool {
	st, err := os.Stat(f.path)
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		if f.stat == nil {
			return false
		}
		f.stat = nil
		return true // gone: reload logs it
	}
	prev := f.stat
	f.stat = st
	return prev == nil || !os.SameFile(prev, st) || prev.Size() != st.Size() || !prev.ModTime().Equal(st.ModTime())
}

// reload reads and applies the file. Unless force, bytes equal to the last
// read are not parsed again. A failure keeps the current content, is logged
// once per distinct error, and is returned.
func (f *fileSource) reload(force bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	data, err := os.ReadFile(f.path)
	if err != nil {
		f.refused("static registry: cannot read the file; keeping the last good content", err)
		return fmt.Errorf("static registry: %w", err)
	}
	if !force && bytes.Equal(data, f.last) {
		return nil
	}
	f.last = data
	ss, err := ParseFile(data, f.format, f.path)
	if err != nil {
		f.refused("static registry: file refused; keeping the last good content", err)
		return err
	}
	f.lastErr = ""
	n := f.r.replace(ss)
	f.log.Info("static registry: file reloaded", "services", len(ss), "changes", n)
	return nil
}

func (f *fileSource) refused(msg string, err error) {
	if s := err.Error(); s != f.lastErr {
		f.lastErr = s
		f.log.Warn(msg, "err", err)
	}
}
