package cmd

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/urfave/cli/v2"
)

// Names of the logging flags.
const (
	FlagLogLevel  = "log_level"
	FlagLogFormat = "log_format"
)

// Logging defaults: servers log at info, in logfmt-style text.
const (
	DefaultLogLevel  = "info"
	DefaultLogFormat = "text"
)

// ErrBadLog: an unknown log level or format.
var ErrBadLog = fmt.Errorf("cmd: bad logging flag")

func logFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: FlagLogLevel, EnvVars: envs(FlagLogLevel), Value: DefaultLogLevel,
			Usage: "log level: debug (adds one line per request and call), info, warn, error"},
		&cli.StringFlag{Name: FlagLogFormat, EnvVars: envs(FlagLogFormat), Value: DefaultLogFormat,
			Usage: "log format: text (key=value) or json"},
	}
}

// ParseLevel reads a log level name (case-insensitive).
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.TrimSpace(s))); err != nil {
		return 0, fmt.Errorf("%w: --%s %q: want debug, info, warn or error", ErrBadLog, FlagLogLevel, s)
	}
	return l, nil
}

// NewLogger returns the logger every Beacon program uses, servers and the
// CLI alike: slog's text (key=value) or JSON handler on w at level. The
// same format everywhere lets one parser read a service's and the CLI's
// logs.
func NewLogger(w io.Writer, level slog.Leveler, format string) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(strings.TrimSpace(format)) {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("%w: --%s %q: want text or json", ErrBadLog, FlagLogFormat, format)
}
