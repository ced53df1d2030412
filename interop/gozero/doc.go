// Package gozero holds only tests: go-zero v1.10.3 zrpc servers, published
// in a real etcd by go-zero's own publisher (core/discov), reached by a
// plain grpc-go client through beacon:/// (beacongrpc's resolver over
// registry/etcd with etcd.WithGoZero). See gozero_test.go.
package gozero
