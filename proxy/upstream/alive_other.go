//go:build !unix

package upstream

// Alive cannot look at the socket here and assumes the best; a dead
// connection fails on first use.
func (c *Conn) Alive() bool { return true }
