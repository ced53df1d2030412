package mdns

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Signed records (WithKey).
//
// A signature is one more TXT string after the record's hex strings: the
// hex of a 44-byte block
//
//	"BSG1" | timestamp (int64 big-endian, Unix microseconds) | HMAC-SHA256 (32 bytes)
//
// The HMAC, with the shared key, covers a label, the domain, whether the
// record is a goodbye, the TXT record's TTL, the timestamp and the record's
// zlib bytes (which hold the service, version, endpoints, node ID, address
// and metadata). Readers that do not know signatures (go-micro, older
// Beacon) hex-decode all strings and stop reading where the zlib stream
// ends, so they read signed records as before.
const (
	sigMagic = "BSG1"
	sigLen   = 4 + 8 + sha256.Size
	sigLabel = "beacon-mdns-record-v1\x00"
	// DefaultSignatureWindow: a signed record whose timestamp is further
	// than this from the reader's clock is dropped (a replay, or clocks
	// that disagree too much).
	DefaultSignatureWindow = 15 * time.Second
	// MaxReplaySet bounds how many signatures a Registry remembers to
	// refuse replays within the window.
	MaxReplaySet = 1 << 16
)

// Errors of signature checks, for logs and tests.
var (
	errUnsigned     = errors.New("unsigned record")
	errBadSignature = errors.New("bad signature")
	errStale        = errors.New("signature timestamp outside the window")
	errReplay       = errors.New("replayed record")
	errReplayFull   = errors.New("too many signed records in the window")
)

func isSigBlock(b []byte) bool { return len(b) == sigLen && string(b[:len(sigMagic)]) == sigMagic }

// signer signs and checks records with one key. Timestamps it issues are
// strictly increasing, so no two records it signs have the same signature
// (a reader would take the second for a replay).
type signer struct {
	key    []byte
	domain string
	window time.Duration
	last   atomic.Int64 // last timestamp issued, Unix µs

	mu   sync.Mutex
	seen map[[16]byte]int64 // signature prefix -> when it leaves the window (Unix µs)
}

func newSigner(key []byte, domain string, window time.Duration) *signer {
	return &signer{key: key, domain: strings.ToLower(domain), window: window, seen: map[[16]byte]int64{}}
}

func (s *signer) stamp(now time.Time) int64 {
	for {
		ts, last := now.UnixMicro(), s.last.Load()
		if ts <= last {
			ts = last + 1
		}
		if s.last.CompareAndSwap(last, ts) {
			return ts
		}
	}
}

func (s *signer) mac(goodbye bool, ttl uint32, ts int64, raw []byte) []byte {
	h := hmac.New(sha256.New, s.key)
	var hdr [1 + 4 + 8]byte
	if goodbye {
		hdr[0] = 1
	}
	binary.BigEndian.PutUint32(hdr[1:5], ttl)
	binary.BigEndian.PutUint64(hdr[5:], uint64(ts))
	h.Write([]byte(sigLabel))
	h.Write([]byte(s.domain))
	h.Write([]byte{0})
	h.Write(hdr[:])
	h.Write(raw)
	return h.Sum(nil)
}

// sign returns the TXT string that signs raw, sent with TTL ttl (0 for a
// goodbye).
func (s *signer) sign(now time.Time, goodbye bool, ttl uint32, raw []byte) string {
	ts := s.stamp(now)
	b := make([]byte, 0, sigLen)
	b = append(b, sigMagic...)
	b = binary.BigEndian.AppendUint64(b, uint64(ts))
	b = append(b, s.mac(goodbye, ttl, ts, raw)...)
	return hex.EncodeToString(b)
}

// verify checks a record's signature block against its content, the
// window and the signatures seen within it, and remembers it.
func (s *signer) verify(now time.Time, goodbye bool, ttl uint32, raw, sig []byte) error {
	if sig == nil {
		return errUnsigned
	}
	ts := int64(binary.BigEndian.Uint64(sig[len(sigMagic):]))
	if !hmac.Equal(sig[len(sigMagic)+8:], s.mac(goodbye, ttl, ts, raw)) {
		return errBadSignature
	}
	nowUS, win := now.UnixMicro(), s.window.Microseconds()
	if d := nowUS - ts; d > win || d < -win {
		return fmt.Errorf("%w (%v from this host's clock, window %v)", errStale, time.Duration(d)*time.Microsecond, s.window)
	}
	var k [16]byte
	copy(k[:], sig[len(sigMagic)+8:])
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.seen[k]; ok {
		return errReplay
	}
	if len(s.seen) >= MaxReplaySet {
		for x, until := range s.seen {
			if until < nowUS {
				delete(s.seen, x)
			}
		}
		if len(s.seen) >= MaxReplaySet {
			return errReplayFull // fail closed: never forget a signature inside its window
		}
	}
	s.seen[k] = ts + win
	return nil
}
