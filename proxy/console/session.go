package console

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Table is what a SHOW answers: text columns and rows.
type Table struct {
	Columns []string
	Rows    [][]string
	// TenantColumn is the index of the column that names each row's
	// tenant (or several, comma-separated), by which WHERE tenant = and a
	// tenant-bound user's view filter rows; -1: the rows belong to no
	// tenant.
	TenantColumn int
	// Types are the columns' type OIDs (OIDText, OIDInt4, ...); nil: every
	// column is text.
	Types []uint32
}

// Backend is what the console reads and steers: the proxy implements it.
// A tenants argument of nil means every tenant. Errors may be *Error to
// choose the SQLSTATE.
type Backend interface {
	// Show returns the table of a topic (TopicTenants ... TopicConfig).
	Show(ctx context.Context, topic string) (*Table, error)
	// TenantExists reports whether slug names a tenant.
	TenantExists(slug string) bool
	// Pause holds new transactions of tenants and waits up to timeout
	// for their backends to be idle; the pause stays in effect when the
	// wait fails.
	Pause(ctx context.Context, tenants []string, timeout time.Duration) error
	// Resume releases paused tenants.
	Resume(ctx context.Context, tenants []string) error
	// ClientTenant returns the tenant of the client with the id ("" for
	// a console session) and whether it exists.
	ClientTenant(id string) (string, bool)
	// KillClient ends the client with the id.
	KillClient(ctx context.Context, id string) error
	// KillTenants ends every client session of tenants (nil: every
	// tenant; console sessions are never ended) and closes their server
	// connections; it returns how many sessions it ended.
	KillTenants(ctx context.Context, tenants []string) (int, error)
	// CancelClient cancels the query the client with the id is running,
	// as the client's own CancelRequest would.
	CancelClient(ctx context.Context, id string) error
	// Reconnect closes the idle server connections of tenants (nil:
	// every tenant) and those lent out as they are released; it returns
	// how many it closed and how many it marked.
	Reconnect(ctx context.Context, tenants []string) (closed, marked int, err error)
	// Shutdown stops the proxy as SIGTERM does; wait: the drain waits
	// for every client, without the shutdown timeout.
	Shutdown(ctx context.Context, wait bool) error
	// SetDisabled refuses (or again admits) new clients of a tenant.
	SetDisabled(ctx context.Context, tenant string, disabled bool) error
	// Reload re-reads the configuration, users and tenants and says what
	// changed.
	Reload(ctx context.Context) (string, error)
	// SetTenantLimit changes a tenant's limit (LimitMaxServerConns,
	// LimitMaxClientConns) at run time; 0 goes back to the configured one.
	SetTenantLimit(ctx context.Context, tenant, limit string, value int) error
	// ShowPgBouncer returns a table of the PgBouncer-compatible database
	// (a PgBouncer* topic other than PgBouncerVersion and PgBouncerHelp)
	// with PgBouncer's columns and types, limited to the tenants given
	// (nil: every tenant).
	ShowPgBouncer(ctx context.Context, topic string, tenants []string) (*Table, error)
	// Version is the proxy's version.
	Version() string
}

// Options describe one console session.
type Options struct {
	Backend Backend
	// User is the console user's name; Role its console role (admin or
	// stats); Tenants the tenants it is bound to (none: every tenant).
	User    string
	Role    string
	Tenants []string
	// Settings are the client's startup settings; SHOW and SET read and
	// change them.
	Settings map[string]string
	// MaxMessageSize bounds one client message; a larger one ends the
	// session.
	MaxMessageSize int
	Logger         *slog.Logger
	// Dialect is the session's command language: the console's (the
	// default) or PgBouncer's.
	Dialect Dialect
	// Count, when set, counts each command (command label, result label).
	Count func(command, result string)
}

// Roles of Options.Role.
const (
	RoleAdmin = "admin"
	RoleStats = "stats"
)

// Results of Options.Count.
const (
	ResultOK     = "ok"
	ResultError  = "error"
	ResultDenied = "denied"
)

// ServerVersion is the server_version the console reports.
const ServerVersion = "16.0 (vitalproxy console)"

// Params returns the ParameterStatus values a console session starts with:
// the usual ones a PostgreSQL server reports, with the client's startup
// settings over them.
func Params(settings map[string]string) map[string]string {
	p := map[string]string{
		"server_version":                ServerVersion,
		"server_encoding":               "UTF8",
		"client_encoding":               "UTF8",
		"DateStyle":                     "ISO, MDY",
		"IntervalStyle":                 "postgres",
		"TimeZone":                      "UTC",
		"integer_datetimes":             "on",
		"standard_conforming_strings":   "on",
		"is_superuser":                  "off",
		"session_authorization":         "",
		"application_name":              "",
		"default_transaction_read_only": "off",
		"in_hot_standby":                "off",
	}
	for k, v := range settings {
		for name := range p {
			if strings.EqualFold(name, k) {
				p[name] = v
			}
		}
	}
	return p
}

// reported are the settings whose changes a server reports with
// ParameterStatus, by lower-case name.
var reported = func() map[string]string {
	m := map[string]string{}
	for k := range Params(nil) {
		m[strings.ToLower(k)] = k
	}
	return m
}()

// Time formats a timestamp for a console row: UTC, with milliseconds, as
// PostgreSQL prints a timestamptz ("" for the zero time).
func Time(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05.000") + "+00"
}

// session is one console client.
type session struct {
	opts     Options
	be       *pgproto3.Backend
	conn     net.Conn
	log      *slog.Logger
	settings map[string]string // lower-case name -> value
	stmts    map[string]*Command
	portals  map[string]*portal
	// failed: an extended-query error; messages are skipped until Sync.
	failed bool
}

type portal struct {
	cmd     *Command
	formats []int16
	res     *result // run at Describe or at a suspended Execute
	sent    int     // rows of res sent so far
}

// parse parses one statement in the session's dialect.
func (s *session) parse(stmt string) (*Command, error) {
	if s.opts.Dialect == DialectPgBouncer {
		return ParsePgBouncer(stmt)
	}
	return Parse(stmt)
}

// result is a command's answer.
type result struct {
	cols    []string // nil: no rows (NoData)
	types   []uint32 // the columns' type OIDs; nil: all text
	rows    [][]string
	tag     string
	notices []string
	params  map[string]string
}

// Serve answers console commands on conn, whose hand-over (ParameterStatus,
// BackendKeyData, ReadyForQuery) was already sent, until the client
// terminates, the connection fails or ctx ends. A client that leaves is no
// error.
func Serve(ctx context.Context, conn net.Conn, opts Options) error {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &session{opts: opts, conn: conn, log: opts.Logger,
		be:       pgproto3.NewBackend(conn, conn),
		settings: map[string]string{}, stmts: map[string]*Command{}, portals: map[string]*portal{}}
	if opts.MaxMessageSize > 0 {
		s.be.SetMaxBodyLen(opts.MaxMessageSize)
	}
	for k, v := range Params(opts.Settings) {
		s.settings[strings.ToLower(k)] = v
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	for {
		msg, err := s.be.Receive()
		if err != nil {
			if ctx.Err() != nil || isGone(err) {
				return nil
			}
			var mbl *pgproto3.ExceededMaxBodyLenErr
			if errors.As(err, &mbl) {
				s.fatal(CodeProtocol, "message too large")
			}
			return fmt.Errorf("console: read: %w", err)
		}
		done, err := s.handle(ctx, msg)
		if err != nil {
			if isGone(err) {
				return nil
			}
			return fmt.Errorf("console: %w", err)
		}
		if done {
			return nil
		}
	}
}

func isGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// fatal tells the client why its session ends, best effort.
func (s *session) fatal(code, msg string) {
	s.be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: msg})
	_ = s.be.Flush()
}

// handle serves one message; done means the client terminated.
func (s *session) handle(ctx context.Context, msg pgproto3.FrontendMessage) (bool, error) {
	if s.failed {
		switch msg.(type) {
		case *pgproto3.Sync:
		case *pgproto3.Terminate:
			return true, nil
		default:
			return false, nil
		}
	}
	switch m := msg.(type) {
	case *pgproto3.Query:
		s.simpleQuery(ctx, m.String)
		s.be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		return false, s.be.Flush()
	case *pgproto3.Parse:
		if len(m.ParameterOIDs) > 0 {
			s.extendedError(Errorf(CodeNotSupported, "console statements take no parameters"))
			return false, nil
		}
		cmds := SplitStatements(m.Query)
		if len(cmds) > 1 {
			s.extendedError(syntaxError("cannot insert multiple commands into a prepared statement"))
			return false, nil
		}
		text := ""
		if len(cmds) == 1 {
			text = cmds[0]
		}
		cmd, err := s.parse(text)
		if err != nil {
			s.count(string(KindOther), "", err)
			s.extendedError(err)
			return false, nil
		}
		if m.Name != "" {
			if _, dup := s.stmts[m.Name]; dup {
				s.extendedError(Errorf("42P05", "prepared statement %q already exists", m.Name))
				return false, nil
			}
		}
		s.stmts[m.Name] = cmd
		s.be.Send(&pgproto3.ParseComplete{})
	case *pgproto3.Bind:
		cmd, ok := s.stmts[m.PreparedStatement]
		if !ok {
			s.extendedError(Errorf(CodeBadStatement, "prepared statement %q does not exist", m.PreparedStatement))
			return false, nil
		}
		if len(m.Parameters) > 0 {
			s.extendedError(Errorf(CodeProtocol, "bind message supplies %d parameters, but prepared statement %q requires 0", len(m.Parameters), m.PreparedStatement))
			return false, nil
		}
		if m.DestinationPortal != "" {
			if _, dup := s.portals[m.DestinationPortal]; dup {
				s.extendedError(Errorf("42P03", "cursor %q already exists", m.DestinationPortal))
				return false, nil
			}
		}
		s.portals[m.DestinationPortal] = &portal{cmd: cmd, formats: slices.Clone(m.ResultFormatCodes)}
		s.be.Send(&pgproto3.BindComplete{})
	case *pgproto3.Describe:
		s.describe(ctx, m)
	case *pgproto3.Execute:
		s.execute(ctx, m)
	case *pgproto3.Close:
		if m.ObjectType == 'S' {
			delete(s.stmts, m.Name)
		} else {
			delete(s.portals, m.Name)
		}
		s.be.Send(&pgproto3.CloseComplete{})
	case *pgproto3.Sync:
		s.failed = false
		delete(s.portals, "")
		s.be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		return false, s.be.Flush()
	case *pgproto3.Flush:
		return false, s.be.Flush()
	case *pgproto3.Terminate:
		return true, nil
	case *pgproto3.CopyData, *pgproto3.CopyDone, *pgproto3.CopyFail:
		// Not in a COPY: ignored, as PostgreSQL does.
	default:
		s.sendError(Errorf(CodeNotSupported, "the console does not support %T messages", msg))
		s.be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		return false, s.be.Flush()
	}
	return false, nil
}

// extendedError reports an error in the extended protocol: skip to Sync.
func (s *session) extendedError(err error) {
	s.sendError(err)
	s.failed = true
}

func (s *session) simpleQuery(ctx context.Context, text string) {
	if len(text) > MaxCommandLen {
		err := Errorf(CodeTooLong, "console statement is too long (%d bytes; at most %d)", len(text), MaxCommandLen)
		s.count(string(KindOther), "", err)
		s.sendError(err)
		return
	}
	stmts := SplitStatements(text)
	if len(stmts) == 0 {
		s.be.Send(&pgproto3.EmptyQueryResponse{})
		return
	}
	for _, st := range stmts {
		cmd, err := s.parse(st)
		if err != nil {
			s.count(string(KindOther), st, err)
			s.sendError(err)
			return
		}
		res, err := s.run(ctx, cmd, st)
		if err != nil {
			s.sendError(err)
			return
		}
		s.sendResult(res, nil, 0, 0)
	}
}

func (s *session) describe(ctx context.Context, m *pgproto3.Describe) {
	var cmd *Command
	var formats []int16
	var p *portal
	if m.ObjectType == 'S' {
		c, ok := s.stmts[m.Name]
		if !ok {
			s.extendedError(Errorf(CodeBadStatement, "prepared statement %q does not exist", m.Name))
			return
		}
		cmd = c
		s.be.Send(&pgproto3.ParameterDescription{})
	} else {
		var ok bool
		if p, ok = s.portals[m.Name]; !ok {
			s.extendedError(Errorf(CodeBadPortal, "portal %q does not exist", m.Name))
			return
		}
		cmd, formats = p.cmd, p.formats
	}
	if !returnsRows(cmd) {
		s.be.Send(&pgproto3.NoData{})
		return
	}
	// A statement that returns rows reads and changes nothing: run it
	// now for its columns, and keep a portal's result for Execute.
	res, err := s.dispatch(ctx, cmd)
	if err != nil {
		s.count(cmd.Metric(), "", err)
		s.extendedError(err)
		return
	}
	if p != nil {
		p.res = res
	}
	s.be.Send(rowDescription(res.cols, res.types, formats))
}

// returnsRows reports whether cmd answers with rows (and changes nothing).
func returnsRows(cmd *Command) bool {
	switch cmd.Kind {
	case KindShow, KindShowSetting, KindSelect, KindPgBouncerShow:
		return true
	}
	return false
}

func (s *session) execute(ctx context.Context, m *pgproto3.Execute) {
	p, ok := s.portals[m.Portal]
	if !ok {
		s.extendedError(Errorf(CodeBadPortal, "portal %q does not exist", m.Portal))
		return
	}
	if p.res == nil {
		res, err := s.run(ctx, p.cmd, "")
		if err != nil {
			s.extendedError(err)
			return
		}
		p.res = res
	} else if p.sent == 0 && p.cmd.Kind != KindEmpty {
		// Described (and run) already: count the execution.
		s.count(p.cmd.Metric(), "", nil)
	}
	p.sent = s.sendResult(p.res, p.formats, p.sent, int(m.MaxRows))
}

// sendResult sends res's rows from the from'th, at most max (0: all), and
// its CommandComplete, or PortalSuspended when rows remain. Simple-query
// results (formats nil and from 0) carry their RowDescription. It returns
// how many rows were sent in all.
func (s *session) sendResult(res *result, formats []int16, from, maxRows int) int {
	for _, n := range res.notices {
		s.be.Send(&pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: "00000", Message: n})
	}
	if res.tag == "" && res.cols == nil {
		s.be.Send(&pgproto3.EmptyQueryResponse{})
		return from
	}
	if formats == nil && from == 0 && res.cols != nil {
		s.be.Send(rowDescription(res.cols, res.types, nil))
	}
	i := from
	for ; i < len(res.rows); i++ {
		if maxRows > 0 && i-from >= maxRows {
			s.be.Send(&pgproto3.PortalSuspended{})
			return i
		}
		vals := make([][]byte, len(res.rows[i]))
		for j, v := range res.rows[i] {
			vals[j] = []byte(v)
			if formatOf(formats, j) == 1 && j < len(res.types) {
				if b, ok := encodeBinary(res.types[j], v); ok {
					vals[j] = b
				}
			}
		}
		s.be.Send(&pgproto3.DataRow{Values: vals})
	}
	tag := res.tag
	if res.cols != nil && tag == "" {
		tag = fmt.Sprintf("SHOW %d", len(res.rows))
	}
	s.be.Send(&pgproto3.CommandComplete{CommandTag: []byte(tag)})
	// As PostgreSQL, changed settings are reported after the command.
	for k, v := range res.params {
		s.be.Send(&pgproto3.ParameterStatus{Name: k, Value: v})
	}
	return i
}

// formatOf is column i's format code of a Bind's result formats.
func formatOf(formats []int16, i int) int16 {
	switch {
	case len(formats) == 1:
		return formats[0]
	case i < len(formats):
		return formats[i]
	}
	return 0
}

// typeSizes are the fixed sizes of the typed columns' types.
var typeSizes = map[uint32]int16{OIDInt4: 4, OIDInt8: 8}

func rowDescription(cols []string, types []uint32, formats []int16) *pgproto3.RowDescription {
	rd := &pgproto3.RowDescription{Fields: make([]pgproto3.FieldDescription, len(cols))}
	for i, c := range cols {
		oid := OIDText
		if i < len(types) {
			oid = types[i]
		}
		size, ok := typeSizes[oid]
		if !ok {
			size = -1
		}
		// Text in the binary format is the same bytes; typed columns are
		// encoded (encodeBinary).
		rd.Fields[i] = pgproto3.FieldDescription{Name: []byte(c), DataTypeOID: oid, DataTypeSize: size, TypeModifier: -1, Format: formatOf(formats, i)}
	}
	return rd
}

func (s *session) sendError(err error) {
	var ce *Error
	if !errors.As(err, &ce) {
		ce = &Error{Code: CodeInternal, Message: err.Error()}
	}
	s.be.Send(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: ce.Code, Message: ce.Message, Hint: ce.Hint})
}

// count counts and logs one command.
func (s *session) count(command, text string, err error) {
	result := ResultOK
	attrs := []any{"user", s.opts.User, "command", command}
	if text != "" {
		if len(text) > 200 {
			text = text[:200] + "..."
		}
		attrs = append(attrs, "statement", strings.TrimSpace(text))
	}
	level := slog.LevelInfo
	if err != nil {
		result = ResultError
		var ce *Error
		if errors.As(err, &ce) {
			if ce.Code == CodePermission {
				result = ResultDenied
			}
			attrs = append(attrs, "sqlstate", ce.Code)
		}
		attrs = append(attrs, "error", err.Error())
		level = slog.LevelWarn
	}
	attrs = append(attrs, "result", result)
	s.log.Log(context.Background(), level, "console command", attrs...)
	if s.opts.Count != nil {
		s.opts.Count(command, result)
	}
}
