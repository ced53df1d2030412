// Package wire is Beacon's call protocol: length-prefixed binary frames over
// one TCP connection, many calls in flight at once (multiplexed by ID).
//
// Every frame is
//
//	u32 length of the rest | u8 kind | u64 call ID | kind-specific header | body
//
// with integers big-endian. A request's header is
//
//	u16 len + endpoint | u8 len + content type | i64 timeout in ns (0: none)
//
// and a response's
//
//	u16 status (0 = OK) | u8 len + content type | u32 len + detail
//
// GoAway (no header, ID 0) tells the peer that the server is shutting down:
// the client sends no new request on the connection; a request that still
// arrives is answered with status 503 and not run, so it is safe to retry.
package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"time"
)

// Frame kinds.
const (
	KindRequest  byte = 1
	KindResponse byte = 2
	KindGoAway   byte = 3
)

// DefaultMaxFrame is the default largest frame accepted (4 MiB).
const DefaultMaxFrame = 4 << 20

// ErrFrameTooLarge: a frame's length exceeds the reader's limit.
var ErrFrameTooLarge = errors.New("wire: frame too large")

// ErrMalformed: a frame's header does not parse.
var ErrMalformed = errors.New("wire: malformed frame")

const fixedHeader = 4 + 1 + 8

// AppendRequest appends a request frame to dst.
func AppendRequest(dst []byte, id uint64, endpoint, contentType string, timeout time.Duration, body []byte) ([]byte, error) {
	if len(endpoint) > math.MaxUint16 || len(contentType) > math.MaxUint8 {
		return dst, fmt.Errorf("%w: endpoint or content type too long", ErrMalformed)
	}
	n := 1 + 8 + 2 + len(endpoint) + 1 + len(contentType) + 8 + len(body)
	if n > math.MaxUint32 {
		return dst, ErrFrameTooLarge
	}
	dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	dst = append(dst, KindRequest)
	dst = binary.BigEndian.AppendUint64(dst, id)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(endpoint)))
	dst = append(dst, endpoint...)
	dst = append(dst, byte(len(contentType)))
	dst = append(dst, contentType...)
	dst = binary.BigEndian.AppendUint64(dst, uint64(timeout))
	return append(dst, body...), nil
}

// AppendResponse appends a response frame to dst.
func AppendResponse(dst []byte, id uint64, status uint16, contentType, detail string, body []byte) []byte {
	if len(contentType) > math.MaxUint8 {
		contentType = ""
	}
	if len(detail) > 64<<10 {
		detail = detail[:64<<10]
	}
	n := 1 + 8 + 2 + 1 + len(contentType) + 4 + len(detail) + len(body)
	dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	dst = append(dst, KindResponse)
	dst = binary.BigEndian.AppendUint64(dst, id)
	dst = binary.BigEndian.AppendUint16(dst, status)
	dst = append(dst, byte(len(contentType)))
	dst = append(dst, contentType...)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(detail)))
	dst = append(dst, detail...)
	return append(dst, body...)
}

// AppendGoAway appends a GoAway frame to dst.
func AppendGoAway(dst []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, 1+8)
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
	Detail      []byte        // response
	Body        []byte
}

// Reader reads frames from a buffered stream. It is not safe for
// concurrent use.
type Reader struct {
	r   *bufio.Reader
	max int
	buf []byte
}

// NewReader returns a Reader that rejects frames longer than maxFrame bytes
// (DefaultMaxFrame when 0).
func NewReader(r io.Reader, maxFrame int) *Reader {
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrame
	}
	return &Reader{r: bufio.NewReaderSize(r, 32<<10), max: maxFrame}
}

// Next reads the next frame into f. A malformed or oversized frame is an
// error after which the stream must be closed (framing is lost).
func (r *Reader) Next(f *Frame) error {
	var hdr [4]byte
	if _, err := io.ReadFull(r.r, hdr[:]); err != nil {
		return err
	}
	n := int(binary.BigEndian.Uint32(hdr[:]))
	if n > r.max {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, r.max)
	}
	if n < 9 {
		return fmt.Errorf("%w: %d-byte frame", ErrMalformed, n)
	}
	if cap(r.buf) < n {
		r.buf = make([]byte, n, max(n, 4<<10))
	}
	b := r.buf[:n]
	if _, err := io.ReadFull(r.r, b); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	// Shrink a buffer grown by one huge frame so an idle connection does
	// not pin it.
	if cap(r.buf) > 1<<20 && n < 64<<10 {
		r.buf = nil
	}
	return parse(b, f)
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
		if len(p) < 3 {
			return bad("short response header")
		}
		f.Status = binary.BigEndian.Uint16(p)
		cl := int(p[2])
		p = p[3:]
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
	case KindGoAway:
	default:
		return bad(fmt.Sprintf("unknown kind %d", f.Kind))
	}
	return nil
}
