// Package static is a read-only Registry of fixed nodes: for calling
// services that do not register themselves (a database proxy, a legacy
// server, a fixed fleet), for tests, and for environments without a
// registry.
//
// The services come from one source:
//
//   - an inline list (WithInline, ParseInline), the form of cmd's
//     --registry_address:
//
//     greeter=127.0.0.1:8001,127.0.0.1:8002;orders@2.0.0=127.0.0.1:9000
//
//   - a JSON or YAML file (WithFile; see File for the format), watched with
//     fsnotify (inotify on Linux: no polling) and reloaded when it changes,
//     also when an editor or a Kubernetes ConfigMap volume replaces it by a
//     rename. Watchers receive the difference between the old and the new
//     content as registry events: Create, Update and Delete per node. A
//     change that does not parse, or a removed file, is logged (slog, level
//     warn, with the reason) and the last good content keeps being served.
//     Where file notifications cannot be set up, the file is polled
//     (its identity, size and modification time, every DefaultPollInterval),
//     and WithPolling asks for that explicitly;
//
//   - services given in code (WithServices).
//
// Register and Deregister fail with an error matching registry.ErrReadOnly:
// the nodes belong to whoever writes the list.
package static
