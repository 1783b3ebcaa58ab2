package topology

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// Endpoint is one upstream server: where it listens and how to reach it.
type Endpoint struct {
	// Host is a host name, an IP address or a Unix socket directory
	// (starting with /).
	Host string
	Port uint16
	// TLS lists the TLS configurations to try in order, as libpq's
	// sslmode gives them (sslmode=prefer: TLS, then plain); nil is a
	// plaintext attempt. It is never empty.
	TLS []*tls.Config
}

// String is the endpoint as host:port, the value of the host label.
func (e Endpoint) String() string {
	return net.JoinHostPort(e.Host, strconv.Itoa(int(e.Port)))
}

// ErrNoHosts means the upstream URL names no host.
var ErrNoHosts = errors.New("no upstream host")

// ParseHosts returns the upstream servers: the hosts of upstreamURL (a
// libpq URL or keyword/value string, possibly with several hosts:
// postgres://h1:5432,h2:5433/app) in order, then those of extra, entries
// "host", "host:port" or "[ipv6]:port" that take upstreamURL's database
// and TLS settings (and the port of its first host when an entry has
// none). A host listed twice is kept once, in its first place.
func ParseHosts(upstreamURL string, extra []string) ([]Endpoint, error) {
	if strings.TrimSpace(upstreamURL) == "" {
		return nil, ErrNoHosts
	}
	cfg, err := pgconn.ParseConfig(upstreamURL)
	if err != nil {
		return nil, fmt.Errorf("parse upstream URL: %w", parseError(err))
	}
	var out []Endpoint
	index := map[string]int{}
	// Every sslmode gives a host at most one TLS and one plaintext attempt;
	// a host listed again adds nothing.
	add := func(cfg *pgconn.Config) {
		attempts := append([]*pgconn.FallbackConfig{{Host: cfg.Host, Port: cfg.Port, TLSConfig: cfg.TLSConfig}}, cfg.Fallbacks...)
		for _, a := range attempts {
			key := Endpoint{Host: a.Host, Port: a.Port}.String()
			i, ok := index[key]
			if !ok {
				index[key] = len(out)
				out = append(out, Endpoint{Host: a.Host, Port: a.Port, TLS: []*tls.Config{a.TLSConfig}})
				continue
			}
			if !slices.ContainsFunc(out[i].TLS, func(t *tls.Config) bool { return (t == nil) == (a.TLSConfig == nil) }) {
				out[i].TLS = append(out[i].TLS, a.TLSConfig)
			}
		}
	}
	add(cfg)
	if len(extra) > 0 {
		base, err := url.Parse(upstreamURL)
		if err != nil || (base.Scheme != "postgres" && base.Scheme != "postgresql") {
			return nil, errors.New("upstream.hosts needs upstream.url to be a postgres:// URL")
		}
		for _, entry := range extra {
			host, port, err := SplitHostEntry(entry)
			if err != nil {
				return nil, err
			}
			u := *base
			q := u.Query()
			q.Del("host")
			q.Del("port")
			q.Del("hostaddr")
			u.RawQuery = q.Encode()
			if port == "" {
				port = strconv.Itoa(int(cfg.Port))
			}
			u.Host = net.JoinHostPort(host, port)
			c, err := pgconn.ParseConfig(u.String())
			if err != nil {
				return nil, fmt.Errorf("upstream host %q: %w", entry, parseError(err))
			}
			add(c)
		}
	}
	if len(out) == 0 || out[0].Host == "" {
		return nil, ErrNoHosts
	}
	return out, nil
}

// SplitHostEntry splits an entry of the upstream host list, "host",
// "host:port" or "[ipv6]:port", and checks it: a non-empty host without
// a scheme, path or comma, a port from 1 to 65535 (empty: the URL's).
func SplitHostEntry(entry string) (host, port string, err error) {
	bad := func(why string) (string, string, error) {
		return "", "", fmt.Errorf("upstream host %q: %s (want host, host:port or [ipv6]:port)", entry, why)
	}
	if strings.ContainsAny(entry, "/,@? \t") {
		return bad("not a plain host")
	}
	host = entry
	if h, p, err := net.SplitHostPort(entry); err == nil {
		host, port = h, p
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return bad("invalid port")
		}
	} else if strings.Count(entry, ":") == 1 || strings.HasPrefix(entry, "[") {
		return bad("invalid host:port")
	}
	if host == "" {
		return bad("empty host")
	}
	return host, port, nil
}

// parseError drops the connection string pgconn repeats in its errors (a
// password in it is redacted only on a best-effort basis), keeping the
// reason.
func parseError(err error) error {
	var pe *pgconn.ParseConfigError
	if !errors.As(err, &pe) {
		return err
	}
	msg := pe.Error()
	if i := strings.LastIndex(msg, "`: "); i >= 0 {
		msg = msg[i+3:]
	} else {
		msg = "invalid connection string"
	}
	return &reasonError{msg: msg, err: errors.Unwrap(pe)}
}

// reasonError is a parse error without the connection string.
type reasonError struct {
	msg string
	err error
}

func (e *reasonError) Error() string { return e.msg }
func (e *reasonError) Unwrap() error { return e.err }
