package notify

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef")

const tenantA = "11111111-1111-1111-1111-111111111111"

func TestPrefix(t *testing.T) {
	a := New(testSecret, tenantA)
	if a.Prefix() != New(testSecret, strings.ToUpper(tenantA)).Prefix() {
		t.Fatal("the prefix depends on the case of the tenant id")
	}
	if len(a.Prefix()) != 63-MaxChannelLen {
		t.Fatalf("prefix %q is %d bytes, want %d", a.Prefix(), len(a.Prefix()), 63-MaxChannelLen)
	}
	others := []*Namespace{
		New(testSecret, "22222222-2222-2222-2222-222222222222"),
		New([]byte("another secret of thirty-two byte"), tenantA),
	}
	for _, o := range others {
		if o.Prefix() == a.Prefix() {
			t.Fatalf("two namespaces share the prefix %q", a.Prefix())
		}
	}
	for _, c := range a.Prefix() {
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7' || c == '_') {
			t.Fatalf("prefix %q has %q, which would need quoting in a string literal", a.Prefix(), c)
		}
	}
}

func TestRewriteSQL(t *testing.T) {
	ns := New(testSecret, tenantA)
	p := ns.Prefix()
	cases := []struct {
		name, in, want string // want "" means unchanged
	}{
		{"listen", "LISTEN orders", `LISTEN "` + p + `orders"`},
		{"listen folds case", "listen Orders", `listen "` + p + `orders"`},
		{"quoted keeps case", `LISTEN "Orders"`, `LISTEN "` + p + `Orders"`},
		{"quoted with quote", `LISTEN "a""b"`, `LISTEN "` + p + `a""b"`},
		{"unlisten", "UNLISTEN orders;", `UNLISTEN "` + p + `orders";`},
		{"unlisten star", "UNLISTEN *", ""},
		{"notify with payload", "NOTIFY orders, 'listen x'", `NOTIFY "` + p + `orders", 'listen x'`},
		{"several statements", "BEGIN; NOTIFY a; LISTEN b; COMMIT",
			`BEGIN; NOTIFY "` + p + `a"; LISTEN "` + p + `b"; COMMIT`},
		{"comments", "/* listen x */ -- notify y\nLISTEN z", "/* listen x */ -- notify y\nLISTEN \"" + p + "z\""},
		{"nested comment", "/* /* */ LISTEN x */ SELECT 1", ""},
		{"in a string", "SELECT 'LISTEN x'", ""},
		{"in an E string", `SELECT E'\' LISTEN x'`, ""},
		{"in a dollar string", "DO $$BEGIN EXECUTE 'LISTEN x'; END$$", ""},
		{"in a tagged dollar string", "DO $f$ LISTEN x; $f$", ""},
		{"column named notify", "SELECT notify FROM t", ""},
		{"create table column", "CREATE TABLE t (listen text)", ""},
		{"insert column", "INSERT INTO t (notify, x) VALUES (1, 2)", ""},
		{"identifier containing dollar", "SELECT a$b$ listen x", ""},
		{"rule action", "CREATE RULE r AS ON INSERT TO t DO ALSO NOTIFY ch",
			`CREATE RULE r AS ON INSERT TO t DO ALSO NOTIFY "` + p + `ch"`},
		{"rule action list", "CREATE RULE r AS ON INSERT TO t DO (NOTIFY a; NOTIFY b)",
			`CREATE RULE r AS ON INSERT TO t DO (NOTIFY "` + p + `a"; NOTIFY "` + p + `b")`},
		{"unicode quoted left alone", `LISTEN U&"d\0061t"`, ""},
		{"pg_notify", "SELECT pg_notify('orders', 'x')", "SELECT pg_notify('" + p + "' || ('orders')::text, 'x')"},
		{"pg_notify param", "SELECT pg_notify($1, $2)", "SELECT pg_notify('" + p + "' || ($1)::text, $2)"},
		{"pg_notify qualified", "SELECT pg_catalog.PG_NOTIFY(f(a, b), 'x')",
			"SELECT pg_catalog.PG_NOTIFY('" + p + "' || (f(a, b))::text, 'x')"},
		{"pg_notify quoted", `SELECT "pg_notify"('a', 'x')`, `SELECT "pg_notify"('` + p + `' || ('a')::text, 'x')`},
		{"pg_notify wrong arity", "SELECT pg_notify('a')", ""},
		{"pg_notify in string", "SELECT 'pg_notify(a, b)'", ""},
		{"pg_notify nested", "SELECT pg_notify(pg_notify('a','b')::text, 'c')",
			"SELECT pg_notify('" + p + "' || (pg_notify('" + p + "' || ('a')::text,'b')::text)::text, 'c')"},
		{"pg_notify then listen", "SELECT pg_notify('a', 'b'); LISTEN a",
			"SELECT pg_notify('" + p + "' || ('a')::text, 'b'); LISTEN \"" + p + "a\""},
		{"unterminated", "LISTEN", ""},
		{"not a channel", "LISTEN 'x'", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, changed := ns.RewriteSQL(nil, []byte(c.in))
			if c.want == "" {
				if changed {
					t.Fatalf("rewrote %q to %q, want it unchanged", c.in, got)
				}
				return
			}
			if !changed || string(got) != c.want {
				t.Fatalf("RewriteSQL(%q)\n got %q (changed %v)\nwant %q", c.in, got, changed, c.want)
			}
			if !Mentions([]byte(c.in)) {
				t.Fatalf("Mentions(%q) is false but the query needs rewriting", c.in)
			}
		})
	}
}

func TestMentions(t *testing.T) {
	for in, want := range map[string]bool{
		"SELECT 1": false, "LiStEn x": true, "select pg_NOTIFY(": true, "listen": true, "liste": false,
		"SELECT abalance FROM pgbench_accounts WHERE aid = $1": false,
	} {
		if got := Mentions([]byte(in)); got != want {
			t.Errorf("Mentions(%q) = %v, want %v", in, got, want)
		}
	}
}

func notification(pid uint32, channel, payload string) []byte {
	body := binary.BigEndian.AppendUint32(nil, pid)
	body = append(append(body, channel...), 0)
	body = append(append(body, payload...), 0)
	msg := append([]byte{'A'}, binary.BigEndian.AppendUint32(nil, uint32(len(body)+4))...)
	return append(msg, body...)
}

func TestNotificationMessage(t *testing.T) {
	a := New(testSecret, tenantA)
	b := New(testSecret, "22222222-2222-2222-2222-222222222222")
	cases := []struct {
		name string
		msg  []byte
		want []byte // nil: dropped
	}{
		{"own channel", notification(77, a.Channel("orders"), "hi"), notification(77, "orders", "hi")},
		{"pid unchanged", notification(5, a.Channel("orders"), "hi"), notification(5, "orders", "hi")},
		{"other tenant", notification(77, b.Channel("orders"), "secret"), nil},
		{"unprefixed", notification(77, "orders", "x"), nil},
		{"prefix only as substring", notification(77, "x"+a.Channel("orders"), "x"), nil},
		{"truncated", notification(77, a.Prefix()[:4], "")[:12], nil},
		{"not a notification", []byte{'N', 0, 0, 0, 4}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ok := a.NotificationMessage([]byte("keep"), c.msg)
			if c.want == nil {
				if ok || string(got) != "keep" {
					t.Fatalf("kept %q, want it dropped and dst untouched", got)
				}
				return
			}
			if !ok || !bytes.Equal(got, append([]byte("keep"), c.want...)) {
				t.Fatalf("got %q (ok %v), want %q", got, ok, c.want)
			}
		})
	}
}

func TestQueryMessage(t *testing.T) {
	ns := New(testSecret, tenantA)
	q := func(sql string) []byte {
		msg := append([]byte{'Q'}, binary.BigEndian.AppendUint32(nil, uint32(len(sql)+5))...)
		return append(append(msg, sql...), 0)
	}
	got, ok := ns.QueryMessage([]byte("x"), q("LISTEN a"))
	if want := append([]byte("x"), q(`LISTEN "`+ns.Channel("a")+`"`)...); !ok || !bytes.Equal(got, want) {
		t.Fatalf("Query: got %q, want %q", got, want)
	}
	if _, ok := ns.QueryMessage(nil, q("SELECT 1")); ok {
		t.Fatal("an unrelated query was rewritten")
	}
	parse := func(name, sql string, oids ...uint32) []byte {
		body := append(append([]byte(name), 0), sql...)
		body = append(body, 0)
		body = binary.BigEndian.AppendUint16(body, uint16(len(oids)))
		for _, o := range oids {
			body = binary.BigEndian.AppendUint32(body, o)
		}
		msg := append([]byte{'P'}, binary.BigEndian.AppendUint32(nil, uint32(len(body)+4))...)
		return append(msg, body...)
	}
	got, ok = ns.QueryMessage(nil, parse("s1", "SELECT pg_notify($1, $2)", 25, 25))
	want := parse("s1", "SELECT pg_notify('"+ns.Prefix()+"' || ($1)::text, $2)", 25, 25)
	if !ok || !bytes.Equal(got, want) {
		t.Fatalf("Parse: got %q, want %q", got, want)
	}
	if _, ok := ns.QueryMessage(nil, []byte{'Q', 0, 0, 0, 9, 'L', 'I', 'S', 'T'}); ok {
		t.Fatal("a message without its terminator was rewritten")
	}
}

// FuzzRewriteSQL checks that the lexer and rewriter never panic, leave SQL
// without channel words alone, and only ever add text (nothing of the
// client's query is lost).
func FuzzRewriteSQL(f *testing.F) {
	for _, s := range []string{
		"LISTEN a", `NOTIFY "x""y", 'p'`, "SELECT pg_notify($1, $2)", "DO $$ LISTEN a $$", "/* /* */ */ LISTEN b",
		"CREATE RULE r AS ON INSERT TO t DO (NOTIFY a; NOTIFY b)", "SELECT E'\\'' ; listen c", "$a$ $b$",
		"pg_notify((", "U&\"a\" LISTEN", "listen\x00notify",
	} {
		f.Add([]byte(s))
	}
	ns := New(testSecret, tenantA)
	f.Fuzz(func(t *testing.T, sql []byte) {
		out, changed := ns.RewriteSQL(nil, sql)
		if !changed {
			if out != nil {
				t.Fatalf("unchanged but returned %q", out)
			}
			return
		}
		if !Mentions(sql) {
			t.Fatalf("rewrote %q, which Mentions says names no channel", sql)
		}
		if len(out) <= len(sql) {
			t.Fatalf("rewrite of %q shrank it to %q", sql, out)
		}
		if !bytes.Contains(out, []byte(ns.Prefix())) {
			t.Fatalf("rewrite of %q does not carry the prefix: %q", sql, out)
		}
	})
}
