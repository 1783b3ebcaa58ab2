package console

import (
	"context"
	"encoding/binary"
	"strconv"
	"strings"
)

// Dialect is the command language of a console session: the console's
// own (the console database) or PgBouncer's (the PgBouncer-compatible
// database, console.pgbouncer_database).
type Dialect string

// The dialects.
const (
	DialectConsole   Dialect = ""
	DialectPgBouncer Dialect = "pgbouncer"
)

// KindPgBouncerShow is a SHOW of the PgBouncer-compatible database;
// Command.Topic is one of the PgBouncer* topics.
const KindPgBouncerShow Kind = "pgbouncer_show"

// Topics of the PgBouncer-compatible database's SHOW: PgBouncer's names.
// A Backend answers all but PgBouncerVersion and PgBouncerHelp with
// PgBouncer 1.18's columns, in its order and with its types.
const (
	PgBouncerPools         = "pools"
	PgBouncerStats         = "stats"
	PgBouncerStatsTotals   = "stats_totals"
	PgBouncerStatsAverages = "stats_averages"
	PgBouncerDatabases     = "databases"
	PgBouncerLists         = "lists"
	PgBouncerConfig        = "config"
	PgBouncerClients       = "clients"
	PgBouncerServers       = "servers"
	PgBouncerUsers         = "users"
	PgBouncerVersion       = "version"
	PgBouncerHelp          = "help"
)

var pgbTopics = map[string]bool{PgBouncerPools: true, PgBouncerStats: true, PgBouncerStatsTotals: true,
	PgBouncerStatsAverages: true, PgBouncerDatabases: true, PgBouncerLists: true, PgBouncerConfig: true,
	PgBouncerClients: true, PgBouncerServers: true, PgBouncerUsers: true, PgBouncerVersion: true, PgBouncerHelp: true}

// PgBouncerCompatVersion is the PgBouncer release whose SHOW columns the
// PgBouncer-compatible database answers with; SHOW VERSION starts with it
// ("PgBouncer 1.18.0 (vitalproxy ...)"), so that tools that pick their
// queries by PgBouncer's version read the right columns.
const PgBouncerCompatVersion = "1.18.0"

// PgBouncerVersionString is SHOW VERSION's answer in the
// PgBouncer-compatible database for the proxy's version.
func PgBouncerVersionString(proxyVersion string) string {
	return "PgBouncer " + PgBouncerCompatVersion + " (vitalproxy " + proxyVersion + ")"
}

// Type OIDs of typed tables (Table.Types), as PgBouncer sends them.
const (
	OIDText    uint32 = 25
	OIDInt4    uint32 = 23
	OIDInt8    uint32 = 20
	OIDNumeric uint32 = 1700
)

// steering commands of either dialect that the PgBouncer-compatible
// database refuses, by their first word.
var pgbRefused = map[string]bool{"PAUSE": true, "RESUME": true, "KILL": true, "DISABLE": true, "ENABLE": true,
	"RELOAD": true, "RECONNECT": true, "CANCEL": true, "SUSPEND": true, "SHUTDOWN": true, "WAIT_CLOSE": true}

// ParsePgBouncer parses one statement of the PgBouncer-compatible
// database: SHOW of a PgBouncer topic, and the SET, SHOW setting and
// SELECT statements drivers send. Steering commands are refused with
// 0A000: they are run in the console database.
func ParsePgBouncer(stmt string) (*Command, error) {
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
	if len(toks) == 0 {
		return &Command{Kind: KindEmpty}, nil
	}
	first := toks[0]
	switch w := strings.ToUpper(first.text); {
	case first.quoted:
	case w == "SHOW" && len(toks) >= 2 && !toks[1].quoted && pgbTopics[strings.ToLower(toks[1].text)]:
		p := &parser{toks: toks, pos: 2}
		return &Command{Kind: KindPgBouncerShow, Topic: strings.ToLower(toks[1].text)}, p.end()
	case w == "SHOW" || w == "SET" || w == "RESET" || w == "SELECT":
		cmd, err := Parse(stmt)
		if err == nil && cmd.Kind == KindSetTenant {
			return nil, pgbRefusal("SET TENANT")
		}
		if err == nil && cmd.Kind == KindShow {
			return nil, &Error{Code: CodeSyntax, Message: "SHOW " + strings.ToUpper(cmd.Topic) + " is not a command of the PgBouncer-compatible database",
				Hint: "SHOW HELP lists the commands of this database; the console database has the console's own SHOW commands."}
		}
		return cmd, err
	case pgbRefused[w]:
		return nil, pgbRefusal(w)
	}
	return nil, &Error{Code: CodeSyntax, Message: "unknown command " + strconv.Quote(first.text),
		Hint: "SHOW HELP lists the commands of this database."}
}

func pgbRefusal(what string) *Error {
	return &Error{Code: CodeNotSupported,
		Message: what + " is not supported in the PgBouncer-compatible database, which only answers SHOW",
		Hint:    "Run it in the console database (console.database)."}
}

// pgbHelp is the PgBouncer-compatible database's SHOW HELP notice.
const pgbHelp = `Console usage
	SHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION
	SHOW LISTS|STATS|STATS_TOTALS|STATS_AVERAGES
(PgBouncer 1.18 columns; steering commands are run in the console database)`

func (s *session) showPgBouncer(ctx context.Context, cmd *Command) (*result, error) {
	switch cmd.Topic {
	case PgBouncerVersion:
		return &result{cols: []string{"version"}, types: []uint32{OIDText},
			rows: [][]string{{PgBouncerVersionString(s.opts.Backend.Version())}}, tag: "SHOW"}, nil
	case PgBouncerHelp:
		return &result{tag: "SHOW", notices: []string{pgbHelp}}, nil
	}
	var tenants []string
	if s.bound() {
		tenants = s.opts.Tenants
	}
	t, err := s.opts.Backend.ShowPgBouncer(ctx, cmd.Topic, tenants)
	if err != nil {
		return nil, err
	}
	rows := t.Rows
	if rows == nil {
		rows = [][]string{}
	}
	return &result{cols: t.Columns, types: t.Types, rows: rows, tag: "SHOW"}, nil
}

// encodeBinary returns v, a text value of a column of type oid, in the
// binary format; ok is false when it is not a valid value of the type.
// Text (and any other type) is the same bytes in both formats.
func encodeBinary(oid uint32, v string) ([]byte, bool) {
	switch oid {
	case OIDInt4:
		n, err := strconv.ParseInt(v, 10, 32)
		if err != nil {
			return nil, false
		}
		return binary.BigEndian.AppendUint32(nil, uint32(int32(n))), true
	case OIDInt8:
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, false
		}
		return binary.BigEndian.AppendUint64(nil, uint64(n)), true
	case OIDNumeric:
		return encodeNumeric(v)
	}
	return []byte(v), true
}

// encodeNumeric encodes a whole number as PostgreSQL's binary numeric:
// base-10000 digits, most significant first, trailing zero digits dropped.
func encodeNumeric(v string) ([]byte, bool) {
	sign := uint16(0)
	digits := v
	if strings.HasPrefix(digits, "-") {
		sign, digits = 0x4000, digits[1:]
	}
	n, err := strconv.ParseUint(digits, 10, 64)
	if err != nil {
		return nil, false
	}
	var groups []uint16 // least significant first
	for ; n > 0; n /= 10000 {
		groups = append(groups, uint16(n%10000))
	}
	weight := len(groups) - 1
	trailing := 0
	for trailing < len(groups) && groups[trailing] == 0 {
		trailing++
	}
	groups = groups[trailing:]
	if len(groups) == 0 {
		sign, weight = 0, 0
	}
	out := make([]byte, 0, 8+2*len(groups))
	out = binary.BigEndian.AppendUint16(out, uint16(len(groups)))
	out = binary.BigEndian.AppendUint16(out, uint16(int16(weight)))
	out = binary.BigEndian.AppendUint16(out, sign)
	out = binary.BigEndian.AppendUint16(out, 0) // dscale
	for i := len(groups) - 1; i >= 0; i-- {
		out = binary.BigEndian.AppendUint16(out, groups[i])
	}
	return out, true
}
