// Package startup reads and answers what a client sends before its session
// is handed over: the startup-phase packets (SSLRequest, GSSENCRequest,
// CancelRequest, StartupMessage), the allow-list of startup settings and
// the options parameter, the wire that package auth authenticates the
// client over, and the messages that end the startup phase (Handover).
//
// Every read is an exact-length read straight from the socket, never
// through a buffer, so bytes a client pipelines after its startup packet or
// its password stay in the socket until the tenant context is in place.
// Nothing here talks to the database or keeps state between calls; a
// packet or setting the proxy refuses is an *Error that says what to tell
// the client.
package startup
