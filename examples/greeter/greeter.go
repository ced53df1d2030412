// Package greeter is the example service of Beacon's quick start: a handler
// and its request and response types, shared by the server and the client.
package greeter

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/beacon-go/beacon/status"
)

// HelloReq is the request of Greeter.Hello.
type HelloReq struct {
	Name string `json:"name"`
}

// HelloRsp is the response of Greeter.Hello.
type HelloRsp struct {
	Msg  string `json:"msg"`
	Node string `json:"node"`
}

// Greeter answers greetings and says which node answered.
type Greeter struct {
	Node  string
	Delay time.Duration // each answer waits this long (0: none)
}

// ErrNoName is returned (as status 400) for a request without a name.
var ErrNoName = errors.New("name is required")

// Hello greets req.Name.
func (g *Greeter) Hello(ctx context.Context, req *HelloReq, rsp *HelloRsp) error {
	if req.Name == "" {
		return status.New(status.BadRequest, ErrNoName.Error())
	}
	if g.Delay > 0 {
		t := time.NewTimer(g.Delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
	rsp.Msg = fmt.Sprintf("Hello %s", req.Name)
	rsp.Node = g.Node
	return nil
}
