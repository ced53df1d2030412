// Package wire is Beacon's call protocol: length-prefixed binary frames over
// one TCP connection, many calls in flight at once (multiplexed by ID).
//
// A client opens a connection with the 4-byte Preface; the server answers
// with a Settings frame (its limits) before anything else. Every frame is
//
//	u32 length of the rest | u8 kind | u64 call ID | kind-specific header | body
//
// with integers big-endian. A request's header is
//
//	u16 len + endpoint | u8 len + content type | i64 timeout in ns (0: none)
//
// a response's
//
//	u16 status (0 = OK) | u8 flags | u8 len + content type | u32 len + detail
//
// and a Settings frame's
//
//	u32 max streams | u32 max frame (later fields may follow; readers ignore them)
//
// Cancel (no header) asks the server to cancel the handler of a call the
// client gave up on. Ping (no header) asks for an empty OK response of the
// same ID with FlagNotRun at once: a liveness check that runs nothing. GoAway (no header, ID 0) tells the peer that the server
// is going away (shutting down, or closing an idle connection): the client
// sends no new request on the connection; a request that still arrives is
// answered with status 503 and FlagNotRun, so it is safe to retry.
//
// A response with FlagNotRun is the server's own refusal: the handler did not
// run (draining, over a concurrency bound, a request too large). A handler's
// answer never carries the flag, whatever its status.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"
)

// Preface opens every client connection ("BCN" and the protocol version).
const Preface = "BCN\x01"

// Frame kinds.
const (
	KindRequest  byte = 1
	KindResponse byte = 2
	KindGoAway   byte = 3
	KindSettings byte = 4
	KindCancel   byte = 5
	KindPing     byte = 6
)

// Response flags.
const (
	// FlagNotRun marks a response the server produced without running the
	// handler.
	FlagNotRun byte = 1 << 0
)

// Defaults, advertised by servers in their Settings frame.
const (
	// DefaultMaxFrame is the default largest frame accepted (4 MiB).
	DefaultMaxFrame = 4 << 20
	// DefaultMaxStreams is the default number of requests one connection
	// may have in flight (HTTP/2's recommended SETTINGS_MAX_CONCURRENT_STREAMS).
	DefaultMaxStreams = 100
)

// MaxFrameLimit is the largest frame the format can carry.
const MaxFrameLimit = math.MaxUint32

// ErrFrameTooLarge: a frame's length exceeds the limit. The Reader returns
// a *TooLargeError, after which the stream is still usable.
var ErrFrameTooLarge = errors.New("wire: frame too large")

// ErrMalformed: a frame's header does not parse.
var ErrMalformed = errors.New("wire: malformed frame")

// ErrBadPreface: the peer did not open the connection with Preface.
var ErrBadPreface = errors.New("wire: not a Beacon connection (bad preface)")

// TooLargeError reports a frame over the reader's limit. The frame's body
// was skipped: the stream stays usable, and the peer can be told about this
// one frame (ID) alone.
type TooLargeError struct {
	Kind  byte
	ID    uint64
	Size  int // bytes after the length prefix
	Limit int
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("wire: frame of %d bytes is larger than the limit of %d bytes", e.Size, e.Limit)
}

// Is makes errors.Is(err, ErrFrameTooLarge) true.
func (e *TooLargeError) Is(target error) bool { return target == ErrFrameTooLarge }

const (
	lenPrefix   = 4
	frameHeader = 1 + 8 // kind + ID
)

// RequestSize returns the length of the request frame AppendRequest would
// write, length prefix included.
func RequestSize(endpoint, contentType string, body int) int {
	return lenPrefix + frameHeader + 2 + len(endpoint) + 1 + len(contentType) + 8 + body
}

// AppendRequest appends a request frame to dst.
func AppendRequest(dst []byte, id uint64, endpoint, contentType string, timeout time.Duration, body []byte) ([]byte, error) {
	if len(endpoint) > math.MaxUint16 || len(contentType) > math.MaxUint8 {
		return dst, fmt.Errorf("%w: endpoint or content type too long", ErrMalformed)
	}
	n := RequestSize(endpoint, contentType, len(body)) - lenPrefix
	if n > MaxFrameLimit {
		return dst, ErrFrameTooLarge
	}
	dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	dst = append(dst, KindRequest)
	dst = binary.BigEndian.AppendUint64(dst, id)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(endpoint)))
	dst = append(dst, endpoint...)
	dst = append(dst, byte(len(contentType)))
	dst = append(dst, contentType...)
	dst = binary.BigEndian.AppendUint64(dst, uint64(max(timeout, 0)))
	return append(dst, body...), nil
}

// MaxDetail is the longest detail a response carries; longer ones are cut.
const MaxDetail = 64 << 10

// AppendResponse appends a response frame to dst. A content type over 255
// bytes is dropped and a detail over MaxDetail bytes is cut.
func AppendResponse(dst []byte, id uint64, status uint16, flags byte, contentType, detail string, body []byte) []byte {
	if len(contentType) > math.MaxUint8 {
		contentType = ""
	}
	if len(detail) > MaxDetail {
		detail = detail[:MaxDetail]
	}
	n := frameHeader + 2 + 1 + 1 + len(contentType) + 4 + len(detail) + len(body)
	dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	dst = append(dst, KindResponse)
	dst = binary.BigEndian.AppendUint64(dst, id)
	dst = binary.BigEndian.AppendUint16(dst, status)
	dst = append(dst, flags, byte(len(contentType)))
	dst = append(dst, contentType...)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(detail)))
	dst = append(dst, detail...)
	return append(dst, body...)
}

// Settings are a server's limits, sent as the first frame of a connection.
type Settings struct {
	MaxStreams uint32 // requests in flight per connection
	MaxFrame   uint32 // largest request frame accepted
}

// AppendSettings appends a Settings frame to dst.
func AppendSettings(dst []byte, s Settings) []byte {
	dst = binary.BigEndian.AppendUint32(dst, frameHeader+8)
	dst = append(dst, KindSettings)
	dst = binary.BigEndian.AppendUint64(dst, 0)
	dst = binary.BigEndian.AppendUint32(dst, s.MaxStreams)
	return binary.BigEndian.AppendUint32(dst, s.MaxFrame)
}

// AppendCancel appends a Cancel frame for call id to dst.
func AppendCancel(dst []byte, id uint64) []byte {
	dst = binary.BigEndian.AppendUint32(dst, frameHeader)
	dst = append(dst, KindCancel)
	return binary.BigEndian.AppendUint64(dst, id)
}

// AppendPing appends a Ping frame (a liveness check) with id to dst; the
// server answers it at once with an empty OK response of the same ID and
// FlagNotRun, without running anything.
func AppendPing(dst []byte, id uint64) []byte {
	dst = binary.BigEndian.AppendUint32(dst, frameHeader)
	dst = append(dst, KindPing)
	return binary.BigEndian.AppendUint64(dst, id)
}

// AppendGoAway appends a GoAway frame to dst.
func AppendGoAway(dst []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, frameHeader)
	dst = append(dst, KindGoAway)
	return binary.BigEndian.AppendUint64(dst, 0)
}

// Frame is one decoded frame. Its byte slices point into the Reader's
// buffer and are valid only until the next call to Next.
type Frame struct {
	Kind        byte
	ID          uint64
	Endpoint    []byte        // request
	ContentType []byte        // request, response
	Timeout     time.Duration // request
	Status      uint16        // response
	Flags       byte          // response
	Detail      []byte        // response
	Settings    Settings      // settings
	Body        []byte
}

func parse(b []byte, f *Frame) error {
	*f = Frame{Kind: b[0], ID: binary.BigEndian.Uint64(b[1:9])}
	p := b[9:]
	bad := func(what string) error { return fmt.Errorf("%w: %s", ErrMalformed, what) }
	switch f.Kind {
	case KindRequest:
		if len(p) < 2 {
			return bad("short request header")
		}
		el := int(binary.BigEndian.Uint16(p))
		p = p[2:]
		if len(p) < el+1 {
			return bad("endpoint length")
		}
		f.Endpoint, p = p[:el], p[el:]
		cl := int(p[0])
		p = p[1:]
		if len(p) < cl+8 {
			return bad("content type length")
		}
		f.ContentType, p = p[:cl], p[cl:]
		t := int64(binary.BigEndian.Uint64(p))
		if t < 0 {
			return bad("negative timeout")
		}
		f.Timeout = time.Duration(t)
		f.Body = p[8:]
	case KindResponse:
		if len(p) < 4 {
			return bad("short response header")
		}
		f.Status = binary.BigEndian.Uint16(p)
		f.Flags = p[2]
		cl := int(p[3])
		p = p[4:]
		if len(p) < cl+4 {
			return bad("content type length")
		}
		f.ContentType, p = p[:cl], p[cl:]
		dl := int(binary.BigEndian.Uint32(p))
		p = p[4:]
		if dl < 0 || len(p) < dl {
			return bad("detail length")
		}
		f.Detail, p = p[:dl], p[dl:]
		f.Body = p
	case KindSettings:
		if len(p) < 8 {
			return bad("short settings")
		}
		f.Settings = Settings{MaxStreams: binary.BigEndian.Uint32(p), MaxFrame: binary.BigEndian.Uint32(p[4:])}
	case KindGoAway, KindCancel, KindPing:
	default:
		return bad(fmt.Sprintf("unknown kind %d", f.Kind))
	}
	return nil
}
