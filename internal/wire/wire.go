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
	// KindRequestMeta is a request with a metadata block (requests without
	// metadata use KindRequest, a byte-for-byte unchanged format).
	KindRequestMeta byte = 7
)

// Response flags.
const (
	// FlagNotRun marks a response the server produced without running the
	// handler.
	FlagNotRun byte = 1 << 0
	// FlagMetadata marks a response with a metadata block after its detail.
	FlagMetadata byte = 1 << 1
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
func RequestSize(endpoint, contentType string, md map[string]string, body int) int {
	n := lenPrefix + frameHeader + 2 + len(endpoint) + 1 + len(contentType) + 8 + body
	if len(md) > 0 {
		n += metaSize(md)
	}
	return n
}

// metaSize is the length of md's metadata block.
func metaSize(md map[string]string) int {
	n := 2
	for k, v := range md {
		n += 1 + len(k) + 2 + len(v)
	}
	return n
}

// appendMeta appends md's metadata block; md was checked (keys under 256
// bytes, values under 64 KiB, fewer than 64 Ki entries).
func appendMeta(dst []byte, md map[string]string) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(md)))
	for k, v := range md {
		dst = append(dst, byte(len(k)))
		dst = append(dst, k...)
		dst = binary.BigEndian.AppendUint16(dst, uint16(len(v)))
		dst = append(dst, v...)
	}
	return dst
}

// checkMeta refuses metadata the format cannot carry (the callers enforce
// the tighter limits of package metadata first).
func checkMeta(md map[string]string) error {
	if len(md) > math.MaxUint16 {
		return fmt.Errorf("%w: %d metadata entries", ErrMalformed, len(md))
	}
	for k, v := range md {
		if len(k) > math.MaxUint8 || len(v) > math.MaxUint16 {
			return fmt.Errorf("%w: metadata key or value too long", ErrMalformed)
		}
	}
	return nil
}

// AppendRequest appends a request frame to dst: a KindRequest frame, or a
// KindRequestMeta frame when md is not empty.
func AppendRequest(dst []byte, id uint64, endpoint, contentType string, timeout time.Duration, md map[string]string, body []byte) ([]byte, error) {
	if len(endpoint) > math.MaxUint16 || len(contentType) > math.MaxUint8 {
		return dst, fmt.Errorf("%w: endpoint or content type too long", ErrMalformed)
	}
	kind := KindRequest
	if len(md) > 0 {
		if err := checkMeta(md); err != nil {
			return dst, err
		}
		kind = KindRequestMeta
	}
	n := RequestSize(endpoint, contentType, md, len(body)) - lenPrefix
	if n > MaxFrameLimit {
		return dst, ErrFrameTooLarge
	}
	dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	dst = append(dst, kind)
	dst = binary.BigEndian.AppendUint64(dst, id)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(endpoint)))
	dst = append(dst, endpoint...)
	dst = append(dst, byte(len(contentType)))
	dst = append(dst, contentType...)
	dst = binary.BigEndian.AppendUint64(dst, uint64(max(timeout, 0)))
	if kind == KindRequestMeta {
		dst = appendMeta(dst, md)
	}
	return append(dst, body...), nil
}

// Meta is an encoded metadata block (see the package doc), as parsed from
// a frame: valid until the Reader's next call.
type Meta []byte

// Len returns the number of entries.
func (m Meta) Len() int {
	if len(m) < 2 {
		return 0
	}
	return int(binary.BigEndian.Uint16(m))
}

// Each calls f for every entry, in order; the slices are m's. It stops at
// the first false.
func (m Meta) Each(f func(k, v []byte) bool) {
	if len(m) < 2 {
		return
	}
	p := m[2:]
	for range m.Len() {
		kl := int(p[0])
		k := p[1 : 1+kl]
		p = p[1+kl:]
		vl := int(binary.BigEndian.Uint16(p))
		v := p[2 : 2+vl]
		p = p[2+vl:]
		if !f(k, v) {
			return
		}
	}
}

// Map returns the entries as a map (nil when there are none).
func (m Meta) Map() map[string]string {
	if m.Len() == 0 {
		return nil
	}
	out := make(map[string]string, m.Len())
	m.Each(func(k, v []byte) bool {
		out[string(k)] = string(v)
		return true
	})
	return out
}

// parseMeta splits a metadata block off the front of p, checking that it
// is well formed.
func parseMeta(p []byte) (Meta, []byte, error) {
	if len(p) < 2 {
		return nil, nil, fmt.Errorf("%w: short metadata block", ErrMalformed)
	}
	n := int(binary.BigEndian.Uint16(p))
	q := p[2:]
	for range n {
		if len(q) < 1 || len(q) < 1+int(q[0])+2 {
			return nil, nil, fmt.Errorf("%w: metadata key length", ErrMalformed)
		}
		q = q[1+int(q[0]):]
		vl := int(binary.BigEndian.Uint16(q))
		if len(q) < 2+vl {
			return nil, nil, fmt.Errorf("%w: metadata value length", ErrMalformed)
		}
		q = q[2+vl:]
	}
	return Meta(p[:len(p)-len(q)]), q, nil
}

// MaxDetail is the longest detail a response carries; longer ones are cut.
const MaxDetail = 64 << 10

// AppendResponse appends a response frame to dst. A content type over 255
// bytes is dropped and a detail over MaxDetail bytes is cut; metadata md,
// when not empty, is sent with FlagMetadata (metadata the format cannot
// carry is dropped).
func AppendResponse(dst []byte, id uint64, status uint16, flags byte, contentType, detail string, md map[string]string, body []byte) []byte {
	if len(contentType) > math.MaxUint8 {
		contentType = ""
	}
	if len(detail) > MaxDetail {
		detail = detail[:MaxDetail]
	}
	flags &^= FlagMetadata
	n := frameHeader + 2 + 1 + 1 + len(contentType) + 4 + len(detail) + len(body)
	if len(md) > 0 && checkMeta(md) == nil {
		flags |= FlagMetadata
		n += metaSize(md)
	}
	dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	dst = append(dst, KindResponse)
	dst = binary.BigEndian.AppendUint64(dst, id)
	dst = binary.BigEndian.AppendUint16(dst, status)
	dst = append(dst, flags, byte(len(contentType)))
	dst = append(dst, contentType...)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(detail)))
	dst = append(dst, detail...)
	if flags&FlagMetadata != 0 {
		dst = appendMeta(dst, md)
	}
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
	Meta        Meta          // request (KindRequestMeta), response (FlagMetadata)
	Settings    Settings      // settings
	Body        []byte
}

func parse(b []byte, f *Frame) error {
	*f = Frame{Kind: b[0], ID: binary.BigEndian.Uint64(b[1:9])}
	p := b[9:]
	bad := func(what string) error { return fmt.Errorf("%w: %s", ErrMalformed, what) }
	switch f.Kind {
	case KindRequest, KindRequestMeta:
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
		if f.Kind == KindRequestMeta {
			var err error
			if f.Meta, f.Body, err = parseMeta(f.Body); err != nil {
				return err
			}
		}
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
		if f.Flags&FlagMetadata != 0 {
			var err error
			if f.Meta, f.Body, err = parseMeta(p); err != nil {
				return err
			}
		}
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
