package cmd

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/urfave/cli/v2"

	"github.com/beacon-go/beacon"
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
	l, err := beacon.ParseLevel(s)
	if err != nil {
		return 0, fmt.Errorf("%w: --%s: %v", ErrBadLog, FlagLogLevel, err)
	}
	return l, nil
}

// NewLogger is beacon.NewLogger: the one logger of Beacon's programs,
// services and the CLI alike (slog text or JSON on w at level).
func NewLogger(w io.Writer, level slog.Leveler, format string) (*slog.Logger, error) {
	l, err := beacon.NewLogger(w, level, format)
	if err != nil {
		return nil, fmt.Errorf("%w: --%s: %v", ErrBadLog, FlagLogFormat, err)
	}
	return l, nil
}
