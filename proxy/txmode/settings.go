package txmode

import (
	"fmt"
	"hash/maphash"
	"slices"
	"strconv"
	"strings"
	"time"
)

// settings is an immutable set of session settings (lower-case name to
// value) that a client expects on whichever backend serves it.
type settings struct {
	pairs []setting // sorted by name
	hash  uint64
}

type setting struct{ name, value string }

var settingsSeed = maphash.MakeSeed()

// deniedSettings are never applied on a pooled backend, whatever the caller
// passes: they would change who the session is or what it may see.
var deniedSettings = map[string]bool{
	"role":                  true,
	"session_authorization": true,
	"is_superuser":          true,
	"row_security":          true,
}

// reportedSettings are the settings PostgreSQL reports with ParameterStatus
// when they change (GUC_REPORT). A client's own change of one of them is
// remembered for the client and applied on its later backends.
var reportedSettings = map[string]bool{
	"application_name":              true,
	"client_encoding":               true,
	"datestyle":                     true,
	"intervalstyle":                 true,
	"timezone":                      true,
	"standard_conforming_strings":   true,
	"search_path":                   true,
	"default_transaction_read_only": true,
}

// validSettingName accepts lower-case PostgreSQL identifiers without a
// dot (custom settings such as vital.* are never applied).
func validSettingName(name string) bool {
	if name == "" || len(name) > 63 || deniedSettings[name] {
		return false
	}
	for i := 0; i < len(name); i++ {
		ch := name[i]
		switch {
		case ch >= 'a' && ch <= 'z', ch == '_':
		case ch >= '0' && ch <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// newSettings builds the client's settings from its startup parameters and
// the configured timeouts. A timeout applies unless the client chose the
// setting itself in its startup packet.
func newSettings(params map[string]string, statementTimeout, idleInTx time.Duration) (*settings, error) {
	m := make(map[string]string, len(params)+2)
	for k, v := range params {
		name := strings.ToLower(k)
		if !validSettingName(name) {
			return nil, fmt.Errorf("txmode: setting %q cannot be applied on a pooled server connection", k)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return nil, fmt.Errorf("txmode: setting %q has a NUL byte", k)
		}
		m[name] = v
	}
	if _, ok := m["statement_timeout"]; !ok && statementTimeout > 0 {
		m["statement_timeout"] = millis(statementTimeout)
	}
	if _, ok := m["idle_in_transaction_session_timeout"]; !ok && idleInTx > 0 {
		m["idle_in_transaction_session_timeout"] = millis(idleInTx)
	}
	s := &settings{pairs: make([]setting, 0, len(m))}
	for k, v := range m {
		s.pairs = append(s.pairs, setting{k, v})
	}
	slices.SortFunc(s.pairs, func(a, b setting) int { return strings.Compare(a.name, b.name) })
	s.rehash()
	return s, nil
}

func millis(d time.Duration) string {
	ms := d.Milliseconds()
	if ms < 1 {
		ms = 1
	}
	return strconv.FormatInt(ms, 10) + "ms"
}

func (s *settings) rehash() {
	var h maphash.Hash
	h.SetSeed(settingsSeed)
	for _, p := range s.pairs {
		h.WriteString(p.name)
		h.WriteByte(0)
		h.WriteString(p.value)
		h.WriteByte(0)
	}
	s.hash = h.Sum64()
}

// equal reports whether s and o hold the same settings. A nil settings is
// the server's defaults and equals only an empty set.
func (s *settings) equal(o *settings) bool {
	if s == o {
		return true
	}
	if s.len() != o.len() {
		return false
	}
	if s.len() == 0 {
		return true
	}
	if s.hash != o.hash {
		return false
	}
	return slices.Equal(s.pairs, o.pairs)
}

func (s *settings) len() int {
	if s == nil {
		return 0
	}
	return len(s.pairs)
}

func (s *settings) get(name string) (string, bool) {
	if s == nil {
		return "", false
	}
	i, ok := slices.BinarySearchFunc(s.pairs, name, func(p setting, n string) int { return strings.Compare(p.name, n) })
	if !ok {
		return "", false
	}
	return s.pairs[i].value, true
}

// with returns s with name set to value (s itself when nothing changes).
func (s *settings) with(name, value string) *settings {
	if v, ok := s.get(name); ok && v == value {
		return s
	}
	n := &settings{pairs: make([]setting, 0, s.len()+1)}
	if s != nil {
		for _, p := range s.pairs {
			if p.name != name {
				n.pairs = append(n.pairs, p)
			}
		}
	}
	n.pairs = append(n.pairs, setting{name, value})
	slices.SortFunc(n.pairs, func(a, b setting) int { return strings.Compare(a.name, b.name) })
	n.rehash()
	return n
}

// applyQueries returns the simple-protocol queries that move a backend from
// the settings from to the settings to: RESET for what to lacks,
// set_config for what differs. set_config takes the value exactly as a
// startup packet would (SET would quote a list such as search_path as one
// name). client_encoding goes in a query of its own, first, so that the
// other values are read in the client's encoding. Values are dollar-quoted,
// which needs no escaping and so never alters a byte of a multi-byte
// character.
func applyQueries(from, to *settings) []string {
	var enc string
	var resets []string
	var sets []string
	if from != nil {
		for _, p := range from.pairs {
			if _, ok := to.get(p.name); !ok {
				if p.name == "client_encoding" {
					enc = "RESET client_encoding"
					continue
				}
				resets = append(resets, "RESET "+p.name)
			}
		}
	}
	if to != nil {
		for _, p := range to.pairs {
			if v, ok := from.get(p.name); ok && v == p.value {
				continue
			}
			call := "pg_catalog.set_config(" + dollarQuote(p.name) + ", " + dollarQuote(p.value) + ", false)"
			if p.name == "client_encoding" {
				enc = "SELECT " + call
				continue
			}
			sets = append(sets, call)
		}
	}
	var out []string
	if enc != "" {
		out = append(out, enc)
	}
	stmts := resets
	if len(sets) > 0 {
		stmts = append(stmts, "SELECT "+strings.Join(sets, ", "))
	}
	if len(stmts) > 0 {
		out = append(out, strings.Join(stmts, "; "))
	}
	return out
}

// SettingsQueries returns the simple-protocol queries that move a session
// from one set of settings to another (name to value, names
// case-insensitive; nil or empty for the server's defaults), exactly as the
// engine applies startup settings on its own backends (see applyQueries);
// none when the two agree. Refused or malformed names are an error.
func SettingsQueries(from, to map[string]string) ([]string, error) {
	f, err := newSettings(from, 0, 0)
	if err != nil {
		return nil, err
	}
	t, err := newSettings(to, 0, 0)
	if err != nil {
		return nil, err
	}
	if f.equal(t) {
		return nil, nil
	}
	return applyQueries(f, t), nil
}

// dollarQuote quotes v as a dollar-quoted string literal whose tag does
// not occur in v.
func dollarQuote(v string) string {
	tag := "$vp$"
	for i := 0; strings.Contains(v, tag) || strings.HasSuffix(v, tag[:len(tag)-1]); i++ {
		tag = "$vp" + strconv.Itoa(i) + "$"
	}
	return tag + v + tag
}
