package etcd

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"regexp"
	"strconv"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/beacon-go/beacon/registry"
)

// Byte budgets of a listing (see the package doc).
const (
	// listPage is the most keys one range request of a listing asks for.
	listPage = 1000
	// ListPageBytes is the most bytes one range response of a listing may
	// have: the etcd client refuses a larger one before reading it, and the
	// listing asks again for fewer keys. A listing holds one page at a time
	// (besides what it decoded), so its raw bytes in memory stay below
	// about twice this. A single value larger than this is never fetched:
	// it is skipped by key.
	ListPageBytes = 4 << 20
)

// seed hashes the values of bad records.
var seed = maphash.MakeSeed()

// bad returns the Registry's memory of malformed records.
func (r *Registry) badRecords() *registry.BadRecords {
	r.badOnce.Do(func() { r.bad = registry.NewBadRecords(r.log, "etcd registry: skipping malformed record") })
	return r.bad
}

// malformed records that the record at key, of version rev, is bad.
func (r *Registry) malformed(key []byte, rev int64, value []byte, err error) {
	r.badRecords().Report(string(key), uint64(rev), valueSum(value), len(value), err)
}

// forgetBad forgets key as malformed (deleted, or valid now).
func (r *Registry) forgetBad(key []byte) {
	if b := r.badRecords(); b.Has(string(key)) {
		b.Forget(string(key))
	}
}

// valueSum hashes a value for BadRecords (never zero).
func valueSum(value []byte) uint64 { return maphash.Bytes(seed, value) | 1 }

// cappedKV limits the size of range responses to ListPageBytes.
type cappedKV struct{ etcdserverpb.KVClient }

func (c cappedKV) Range(ctx context.Context, in *etcdserverpb.RangeRequest, opts ...grpc.CallOption) (*etcdserverpb.RangeResponse, error) {
	return c.KVClient.Range(ctx, in, append(opts, grpc.MaxCallRecvMsgSize(ListPageBytes))...)
}

// tooLarge reports whether err is the etcd client's refusal of a response
// over ListPageBytes, and the size of that response when the error tells
// (gRPC says "received message larger than max (<size> vs. <max>)").
func tooLarge(err error) (bool, int) {
	var ee rpctypes.EtcdError
	if status.Code(err) != codes.ResourceExhausted || errors.As(err, &ee) {
		return false, 0
	}
	m := sizeRE.FindStringSubmatch(err.Error())
	if m == nil {
		return true, 0
	}
	n, _ := strconv.Atoi(m[1])
	return true, n
}

var sizeRE = regexp.MustCompile(`larger than max \((\d+) vs`)

// scan calls fn with every key-value under prefix, at revision rev (0: the
// current one), which it returns; see ListPageBytes. The values of keys that BadRecords knows
// to be malformed at their current revision are not fetched: when there
// are some under prefix, a keys-only pass (WithKeysOnly) finds the ranges
// of the others, and only those ranges' values are read.
func (r *Registry) scan(ctx context.Context, prefix string, rev int64, fn func(*mvccpb.KeyValue)) (int64, error) {
	capped := clientv3.NewKVFromKVClient(cappedKV{clientv3.RetryKVClient(r.cli)}, r.cli)
	// Each request is bounded by the request timeout (the listing as a
	// whole by ctx only: a large registry takes many pages).
	get := func(key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
		ctx, cancel := r.reqCtx(ctx)
		defer cancel()
		return capped.Get(ctx, key, opts...)
	}
	end := clientv3.GetPrefixRangeEnd(prefix)
	if !r.badRecords().Any(prefix) {
		err := r.scanValues(get, prefix, end, &rev, fn)
		return rev, err
	}
	bad := r.badRecords()
	key := prefix
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(listPage), clientv3.WithKeysOnly()}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := get(key, opts...)
		if err != nil {
			return 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		var first, last []byte // the run of keys whose values are needed
		flush := func() error {
			if first == nil {
				return nil
			}
			err := r.scanValues(get, string(first), string(last)+"\x00", &rev, fn)
			first = nil
			return err
		}
		for _, k := range resp.Kvs {
			if bad.Known(string(k.Key), uint64(k.ModRevision), 0) {
				if err := flush(); err != nil {
					return 0, err
				}
				continue
			}
			if first == nil {
				first = k.Key
			}
			last = k.Key
		}
		if err := flush(); err != nil {
			return 0, err
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// scanValues calls fn with the key-values in [key, end) at *rev (0: the
// current revision, which it stores), in pages of at most listPage keys and
// ListPageBytes bytes.
func (r *Registry) scanValues(get func(string, ...clientv3.OpOption) (*clientv3.GetResponse, error),
	key, end string, rev *int64, fn func(*mvccpb.KeyValue)) error {
	limit := int64(listPage)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(limit)}
		if *rev != 0 {
			opts = append(opts, clientv3.WithRev(*rev))
		}
		resp, err := get(key, opts...)
		if big, size := tooLarge(err); big {
			// Count the page's keys (a keys-only read of the same range),
			// then ask for as many as fit in half the budget; a key whose
			// value alone is over the budget is skipped by its key.
			kresp, err := get(key, append(opts, clientv3.WithKeysOnly())...)
			if err != nil {
				return err
			}
			if *rev == 0 {
				*rev = kresp.Header.Revision
			}
			n := int64(len(kresp.Kvs))
			switch {
			case n == 0:
				return nil
			case n > 1 && size > 0:
				limit = max(1, min(n/2, n*ListPageBytes/2/int64(size)))
				continue
			case n > 1:
				limit = max(1, n/4)
				continue
			}
			k := kresp.Kvs[0]
			if !r.badRecords().Known(string(k.Key), uint64(k.ModRevision), 0) {
				r.badRecords().Report(string(k.Key), uint64(k.ModRevision), 0, -1,
					fmt.Errorf("%w: value larger than a listing page (%d bytes): not fetched", registry.ErrMalformed, ListPageBytes))
			}
			if !kresp.More {
				return nil
			}
			key, limit = string(k.Key)+"\x00", 1
			continue
		}
		if err != nil {
			return err
		}
		if *rev == 0 {
			*rev = resp.Header.Revision
		}
		size := 0
		for _, kv := range resp.Kvs {
			size += len(kv.Key) + len(kv.Value) + 32
			fn(kv)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		// Aim the next page at half the budget, by this page's mean size.
		limit = min(listPage, max(1, int64(ListPageBytes/2/(size/len(resp.Kvs)))))
	}
}
