// Package backend holds the proxy's own conversations with a logged-in
// server connection outside forwarding: applying a session-mode client's
// startup settings before the hand-over (ApplySettings), resetting a
// backend that a session-mode client left so that the next client of the
// same role may have it (Reset), and the plain query round trip the live
// isolation probe uses (RoundTrip).
//
// Each conversation writes its messages in one write and reads the answer
// through one pooled buffer under one deadline; it ends at a ReadyForQuery
// after which the server sends nothing unasked, so nothing is left
// buffered. The caller owns the connection; these functions hold no state.
package backend
