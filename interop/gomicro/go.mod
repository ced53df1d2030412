module github.com/beacon-go/beacon/interop/gomicro

go 1.26.7

require (
	github.com/beacon-go/beacon v0.0.0
	go-micro.dev/v5 v5.30.0
)

require (
	github.com/google/uuid v1.6.0 // indirect
	github.com/miekg/dns v1.1.73 // indirect
	go.uber.org/goleak v1.3.0 // indirect
	golang.org/x/net v0.61.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
)

replace github.com/beacon-go/beacon => ../..
