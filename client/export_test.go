package client

// Pools returns how many addresses have a connection pool (tests).
func (c *Client) Pools() int { return len(*c.wire.pools.Load()) }
