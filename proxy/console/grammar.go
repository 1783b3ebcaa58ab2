package console

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// MaxCommandLen bounds the text of one console statement, in bytes.
const MaxCommandLen = 16 << 10

// Kind names a console command; it is the command label of
// vitalproxy_console_commands_total.
type Kind string

// The console's commands.
const (
	KindEmpty       Kind = "empty"
	KindShow        Kind = "show" // Command.Topic says what
	KindShowSetting Kind = "show_setting"
	KindSet         Kind = "set"
	KindSelect      Kind = "select"
	KindPause       Kind = "pause"
	KindResume      Kind = "resume"
	KindKillClient  Kind = "kill_client"
	KindKillTenant  Kind = "kill_tenant"
	KindKillAll     Kind = "kill_all"
	KindCancel      Kind = "cancel_client"
	KindReconnect   Kind = "reconnect"
	KindShutdown    Kind = "shutdown"
	KindDisable     Kind = "disable"
	KindEnable      Kind = "enable"
	KindReload      Kind = "reload"
	KindSetTenant   Kind = "set_tenant"
	// KindOther labels statements that did not parse.
	KindOther Kind = "other"
)

// Topics of SHOW: the tables a Backend answers, and the two the console
// answers itself.
const (
	TopicTenants = "tenants"
	TopicPools   = "pools"
	TopicClients = "clients"
	TopicServers = "servers"
	TopicStats   = "stats"
	TopicUsers   = "users"
	TopicConfig  = "config"
	TopicVersion = "version"
	// TopicUpstreams: the upstream hosts and what the health checker last
	// saw of them.
	TopicUpstreams = "upstreams"
	TopicHelp      = "help"
)

var topics = map[string]bool{TopicTenants: true, TopicPools: true, TopicClients: true, TopicServers: true,
	TopicStats: true, TopicUsers: true, TopicConfig: true, TopicVersion: true, TopicHelp: true, TopicUpstreams: true}

// Limits SET TENANT may change.
const (
	LimitMaxServerConns = "max_server_conns"
	LimitMaxClientConns = "max_client_conns"
)

// DefaultPauseTimeout is how long PAUSE waits for busy backends without
// TIMEOUT.
const DefaultPauseTimeout = 30 * time.Second

// Command is one parsed console statement.
type Command struct {
	Kind Kind
	// Topic is what SHOW shows (a Topic* constant), or for
	// KindShowSetting the setting's name.
	Topic string
	// Tenant is the tenant the command is about: SHOW's WHERE filter, or
	// PAUSE, RESUME, DISABLE, ENABLE, KILL TENANT, RECONNECT and SET
	// TENANT's argument ("" for every tenant).
	Tenant string
	// Timeout is PAUSE's TIMEOUT.
	Timeout time.Duration
	// ID is KILL CLIENT's and CANCEL CLIENT's client id.
	ID string
	// Wait is SHUTDOWN WAIT.
	Wait bool
	// Name and Value are SET's setting or SET TENANT's limit; Int is the
	// limit's value.
	Name, Value string
	Int         int
}

// Metric is the command label of the command's metric.
func (c *Command) Metric() string {
	switch c.Kind {
	case KindShow:
		return "show_" + c.Topic
	case KindPgBouncerShow:
		return "pgbouncer_show_" + c.Topic
	}
	return string(c.Kind)
}

// Error is a console error with its SQLSTATE; a Backend returns one to
// choose the code the client gets (others are reported as XX000).
type Error struct {
	Code    string
	Message string
	Hint    string
}

func (e *Error) Error() string { return e.Message }

// SQLSTATEs the console sends.
const (
	CodeSyntax          = "42601"
	CodePermission      = "42501"
	CodeBadValue        = "22023"
	CodeUndefinedObject = "42704"
	CodeTooLong         = "54000"
	CodeProtocol        = "08P01"
	CodeNotSupported    = "0A000"
	CodeBadStatement    = "26000"
	CodeBadPortal       = "34000"
	CodeInUse           = "55006"
	CodeBadState        = "55000"
	CodeInternal        = "XX000"
)

// Errorf returns an *Error with code.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

func syntaxError(format string, args ...any) *Error {
	e := Errorf(CodeSyntax, format, args...)
	e.Hint = "SHOW HELP lists the console's commands."
	return e
}

// token is a word (keywords, identifiers, numbers, slugs), a quoted
// string or one punctuation character.
type token struct {
	text   string
	quoted bool // a '...' string or "..." identifier
}

// tokenize splits a statement into tokens, dropping comments. Words are
// runs of letters, digits and _ - . : (tenant slugs contain '-').
func tokenize(s string) ([]token, error) {
	var toks []token
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f':
			i++
		case c == '-' && i+1 < len(s) && s[i+1] == '-':
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < len(s) && s[i+1] == '*':
			end := strings.Index(s[i+2:], "*/")
			if end < 0 {
				return nil, syntaxError("unterminated /* comment")
			}
			i += end + 4
		case c == '\'' || c == '"':
			var b strings.Builder
			j := i + 1
			for {
				if j >= len(s) {
					return nil, syntaxError("unterminated quoted string")
				}
				if s[j] == c {
					if j+1 < len(s) && s[j+1] == c {
						b.WriteByte(c)
						j += 2
						continue
					}
					break
				}
				b.WriteByte(s[j])
				j++
			}
			toks = append(toks, token{text: b.String(), quoted: true})
			i = j + 1
		case isWordByte(c):
			j := i
			for j < len(s) && isWordByte(s[j]) {
				j++
			}
			toks = append(toks, token{text: s[i:j]})
			i = j
		default:
			toks = append(toks, token{text: s[i : i+1]})
			i++
		}
	}
	return toks, nil
}

func isWordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == ':' || c >= 0x80
}

// SplitStatements splits a simple query's text at semicolons outside
// quotes and comments; empty statements are dropped.
func SplitStatements(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\'' || c == '"':
			for i++; i < len(s) && s[i] != c; i++ {
			}
		case c == '-' && i+1 < len(s) && s[i+1] == '-':
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < len(s) && s[i+1] == '*':
			if end := strings.Index(s[i+2:], "*/"); end >= 0 {
				i += end + 3
			} else {
				i = len(s)
			}
		case c == ';':
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	out = append(out, s[start:])
	kept := out[:0]
	for _, st := range out {
		if toks, err := tokenize(st); err != nil || len(toks) > 0 {
			kept = append(kept, st)
		}
	}
	return kept
}

// parser walks the tokens of one statement.
type parser struct {
	toks []token
	pos  int
}

func (p *parser) done() bool { return p.pos >= len(p.toks) }

func (p *parser) peek() string {
	if p.done() {
		return ""
	}
	return p.toks[p.pos].text
}

// keyword consumes the next token if it is the (unquoted) keyword kw.
func (p *parser) keyword(kw string) bool {
	if p.done() || p.toks[p.pos].quoted || !strings.EqualFold(p.toks[p.pos].text, kw) {
		return false
	}
	p.pos++
	return true
}

// value consumes a word or a quoted string.
func (p *parser) value(what string) (string, error) {
	if p.done() {
		return "", syntaxError("%s expected at end of input", what)
	}
	t := p.toks[p.pos]
	if !t.quoted && len(t.text) == 1 && !isWordByte(t.text[0]) {
		return "", syntaxError("%s expected at or near %q", what, t.text)
	}
	p.pos++
	return t.text, nil
}

func (p *parser) end() error {
	if !p.done() {
		return syntaxError("syntax error at or near %q", p.peek())
	}
	return nil
}

// Parse parses one console statement (see docs/console.md for the
// grammar). A statement that is too long, or does not parse, is an *Error.
func Parse(stmt string) (*Command, error) {
	if len(stmt) > MaxCommandLen {
		return nil, Errorf(CodeTooLong, "console statement is too long (%d bytes; at most %d)", len(stmt), MaxCommandLen)
	}
	toks, err := tokenize(stmt)
	if err != nil {
		return nil, err
	}
	for len(toks) > 0 && toks[len(toks)-1].text == ";" && !toks[len(toks)-1].quoted {
		toks = toks[:len(toks)-1]
	}
	p := &parser{toks: toks}
	if p.done() {
		return &Command{Kind: KindEmpty}, nil
	}
	switch {
	case p.keyword("SHOW"):
		return p.show()
	case p.keyword("SET"):
		return p.set()
	case p.keyword("RESET"):
		if _, err := p.value("setting name"); err != nil {
			return nil, err
		}
		return &Command{Kind: KindSet, Topic: "RESET"}, p.end()
	case p.keyword("SELECT"):
		return p.selectPing()
	case p.keyword("PAUSE"):
		return p.pause()
	case p.keyword("RESUME"):
		c := &Command{Kind: KindResume}
		if p.keyword("TENANT") {
			if c.Tenant, err = p.value("tenant slug"); err != nil {
				return nil, err
			}
		}
		return c, p.end()
	case p.keyword("KILL"):
		return p.kill()
	case p.keyword("CANCEL"):
		if !p.keyword("CLIENT") {
			return nil, syntaxError("CANCEL CLIENT id expected")
		}
		c := &Command{Kind: KindCancel}
		if c.ID, err = p.value("client id"); err != nil {
			return nil, err
		}
		return c, p.end()
	case p.keyword("RECONNECT"):
		c := &Command{Kind: KindReconnect}
		if p.keyword("TENANT") {
			if c.Tenant, err = p.value("tenant slug"); err != nil {
				return nil, err
			}
		}
		return c, p.end()
	case p.keyword("SHUTDOWN"):
		c := &Command{Kind: KindShutdown, Wait: p.keyword("WAIT")}
		return c, p.end()
	case p.keyword("DISABLE"), p.keyword("ENABLE"):
		c := &Command{Kind: KindEnable}
		if strings.EqualFold(p.toks[0].text, "DISABLE") {
			c.Kind = KindDisable
		}
		if !p.keyword("TENANT") {
			return nil, syntaxError("%s TENANT slug expected", strings.ToUpper(p.toks[0].text))
		}
		if c.Tenant, err = p.value("tenant slug"); err != nil {
			return nil, err
		}
		return c, p.end()
	case p.keyword("RELOAD"):
		return &Command{Kind: KindReload}, p.end()
	}
	return nil, syntaxError("unknown console command %q", p.peek())
}

// kill parses what follows KILL: CLIENT id, TENANT slug or ALL. A plain
// KILL, which would end every client, must be spelled out as KILL ALL.
func (p *parser) kill() (*Command, error) {
	var err error
	switch {
	case p.keyword("CLIENT"):
		c := &Command{Kind: KindKillClient}
		if c.ID, err = p.value("client id"); err != nil {
			return nil, err
		}
		return c, p.end()
	case p.keyword("TENANT"):
		c := &Command{Kind: KindKillTenant}
		if c.Tenant, err = p.value("tenant slug"); err != nil {
			return nil, err
		}
		return c, p.end()
	case p.keyword("ALL"):
		return &Command{Kind: KindKillAll}, p.end()
	}
	return nil, syntaxError("KILL CLIENT id, KILL TENANT slug or KILL ALL expected")
}

func (p *parser) show() (*Command, error) {
	if p.done() {
		return nil, syntaxError("SHOW what? expected at end of input")
	}
	word := strings.ToLower(p.peek())
	if topics[word] && !p.toks[p.pos].quoted {
		p.pos++
		c := &Command{Kind: KindShow, Topic: word}
		if p.keyword("WHERE") {
			if c.Topic == TopicVersion || c.Topic == TopicHelp || c.Topic == TopicConfig || c.Topic == TopicUpstreams {
				return nil, syntaxError("SHOW %s takes no WHERE", strings.ToUpper(c.Topic))
			}
			if !p.keyword("TENANT") {
				return nil, syntaxError("only WHERE tenant = 'slug' is supported")
			}
			if p.peek() != "=" {
				return nil, syntaxError("= expected after WHERE tenant")
			}
			p.pos++
			v, err := p.value("tenant slug")
			if err != nil {
				return nil, err
			}
			c.Tenant = v
		}
		return c, p.end()
	}
	// SHOW of a client setting: the words joined, as PostgreSQL's
	// multi-word forms (SHOW TIME ZONE, SHOW TRANSACTION ISOLATION LEVEL).
	var words []string
	for !p.done() {
		w, err := p.value("setting name")
		if err != nil {
			return nil, err
		}
		words = append(words, strings.ToLower(w))
	}
	name := strings.Join(words, "_")
	switch name {
	case "time_zone":
		name = "timezone"
	case "transaction_isolation_level":
		name = "transaction_isolation"
	}
	return &Command{Kind: KindShowSetting, Topic: name}, nil
}

func (p *parser) set() (*Command, error) {
	if p.keyword("TENANT") {
		c := &Command{Kind: KindSetTenant}
		var err error
		if c.Tenant, err = p.value("tenant slug"); err != nil {
			return nil, err
		}
		if c.Name, err = p.value("limit name"); err != nil {
			return nil, err
		}
		c.Name = strings.ToLower(c.Name)
		if !p.keyword("TO") {
			if p.peek() != "=" {
				return nil, syntaxError("= expected after %s", c.Name)
			}
			p.pos++
		}
		if c.Value, err = p.value("limit value"); err != nil {
			return nil, err
		}
		if err := p.end(); err != nil {
			return nil, err
		}
		if c.Name != LimitMaxServerConns && c.Name != LimitMaxClientConns {
			return nil, Errorf(CodeBadValue, "unknown tenant limit %q; SET TENANT changes %s and %s", c.Name, LimitMaxServerConns, LimitMaxClientConns)
		}
		n, err := strconv.Atoi(c.Value)
		if err != nil || n < 0 {
			return nil, Errorf(CodeBadValue, "%s must be a whole number of at least 0 (0: back to the configured cap), not %q", c.Name, c.Value)
		}
		c.Int = n
		return c, nil
	}
	// A client setting: SET [SESSION | LOCAL] name {= | TO} value[, ...].
	// Other forms (SET TIME ZONE, SET SESSION CHARACTERISTICS ...) are
	// accepted and ignored.
	c := &Command{Kind: KindSet}
	if !p.keyword("SESSION") {
		p.keyword("LOCAL")
	}
	if p.done() {
		return nil, syntaxError("SET what? expected at end of input")
	}
	name := p.toks[p.pos]
	p.pos++
	if p.peek() != "=" && !p.keyword("TO") {
		return c, nil
	}
	if p.peek() == "=" {
		p.pos++
	}
	var vals []string
	for !p.done() {
		t := p.toks[p.pos]
		p.pos++
		if t.text == "," && !t.quoted {
			continue
		}
		vals = append(vals, t.text)
	}
	c.Name, c.Value = strings.ToLower(name.text), strings.Join(vals, ", ")
	return c, nil
}

func (p *parser) selectPing() (*Command, error) {
	c := &Command{Kind: KindSelect}
	if p.keyword("version") {
		if p.peek() == "(" {
			p.pos++
			if p.peek() == ")" {
				p.pos++
				c.Name = "version"
				return c, p.end()
			}
		}
		return nil, syntaxError("the console answers SELECT n and SELECT version() only")
	}
	v, err := p.value("a number")
	if err == nil {
		if _, perr := strconv.ParseInt(v, 10, 64); perr == nil && p.done() {
			c.Name, c.Value = "?column?", v
			return c, nil
		}
	}
	return nil, syntaxError("the console answers SELECT n and SELECT version() only")
}

func (p *parser) pause() (*Command, error) {
	c := &Command{Kind: KindPause, Timeout: DefaultPauseTimeout}
	var err error
	if p.keyword("TENANT") {
		if c.Tenant, err = p.value("tenant slug"); err != nil {
			return nil, err
		}
	}
	if p.keyword("TIMEOUT") {
		v, err := p.value("timeout in seconds")
		if err != nil {
			return nil, err
		}
		secs, perr := strconv.ParseFloat(v, 64)
		if perr != nil || secs < 0 || secs > 86400 {
			return nil, Errorf(CodeBadValue, "TIMEOUT must be a number of seconds from 0 to 86400, not %q", v)
		}
		c.Timeout = time.Duration(secs * float64(time.Second))
	}
	return c, p.end()
}
