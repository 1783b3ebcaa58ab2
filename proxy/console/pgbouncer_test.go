package console

import (
	"context"
	"encoding/binary"
	"errors"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"
)

func TestParsePgBouncer(t *testing.T) {
	good := map[string]Command{
		"SHOW POOLS":             {Kind: KindPgBouncerShow, Topic: PgBouncerPools},
		"show stats_totals;":     {Kind: KindPgBouncerShow, Topic: PgBouncerStatsTotals},
		"SHOW LISTS":             {Kind: KindPgBouncerShow, Topic: PgBouncerLists},
		"SHOW VERSION":           {Kind: KindPgBouncerShow, Topic: PgBouncerVersion},
		"SHOW server_version":    {Kind: KindShowSetting, Topic: "server_version"},
		"SET application_name=x": {Kind: KindSet, Name: "application_name", Value: "x"},
		"SELECT 1":               {Kind: KindSelect, Name: "?column?", Value: "1"},
		"-- ping":                {Kind: KindEmpty},
	}
	for in, want := range good {
		got, err := ParsePgBouncer(in)
		if err != nil {
			t.Errorf("ParsePgBouncer(%q): %v", in, err)
			continue
		}
		if *got != want {
			t.Errorf("ParsePgBouncer(%q) = %+v, want %+v", in, *got, want)
		}
	}
	bad := map[string]string{
		"PAUSE":                             CodeNotSupported,
		"KILL app":                          CodeNotSupported,
		"RECONNECT":                         CodeNotSupported,
		"SHUTDOWN":                          CodeNotSupported,
		"SET TENANT a max_server_conns = 1": CodeNotSupported,
		"SHOW TENANTS":                      CodeSyntax,
		"SHOW POOLS extra":                  CodeSyntax,
		"FROB":                              CodeSyntax,
	}
	for in, code := range bad {
		_, err := ParsePgBouncer(in)
		var ce *Error
		if !errors.As(err, &ce) || ce.Code != code {
			t.Errorf("ParsePgBouncer(%q) = %v, want SQLSTATE %s", in, err, code)
		}
	}
}

func TestEncodeNumeric(t *testing.T) {
	m := pgtype.NewMap()
	for _, v := range []string{"0", "1", "9999", "10000", "12345678", "100000000", "18446744073709551615", "-42"} {
		b, ok := encodeNumeric(v)
		if !ok {
			t.Fatalf("encodeNumeric(%s) failed", v)
		}
		var n pgtype.Numeric
		if err := m.Scan(OIDNumeric, pgtype.BinaryFormatCode, b, &n); err != nil {
			t.Fatalf("%s: decode: %v", v, err)
		}
		got := new(big.Int).Mul(n.Int, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(n.Exp)), nil))
		if got.String() != v {
			t.Errorf("%s: decoded as %s", v, got)
		}
	}
	if _, ok := encodeNumeric("1.5"); ok {
		t.Error("1.5 encoded as a whole number")
	}
}

// startPgBouncerSession serves a PgBouncer-dialect session over a pipe.
func startPgBouncerSession(t *testing.T, be Backend, role string, tenants []string) (*client, map[string]int) {
	t.Helper()
	srv, cli := net.Pipe()
	counts := map[string]int{}
	var mu sync.Mutex
	done := make(chan error, 1)
	go func() {
		done <- Serve(context.Background(), srv, Options{Backend: be, User: "ops", Role: role, Tenants: tenants,
			Dialect: DialectPgBouncer, MaxMessageSize: 1 << 20,
			Count: func(c, r string) { mu.Lock(); counts[c+"/"+r]++; mu.Unlock() }})
	}()
	t.Cleanup(func() {
		_ = cli.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		_ = srv.Close()
	})
	_ = cli.SetDeadline(time.Now().Add(30 * time.Second))
	return &client{t: t, fe: pgproto3.NewFrontend(cli, cli), c: cli}, counts
}

func TestPgBouncerDialect(t *testing.T) {
	be := &fakeBackend{}
	c, counts := startPgBouncerSession(t, be, RoleStats, []string{"a"})
	if got := c.query("SHOW POOLS"); got != "T:database,user,cl_active,total_xact_count,total_sent D:app,a,3,123456789,70000 C:SHOW Z" {
		t.Fatalf("SHOW POOLS: %s", got)
	}
	if got := c.query("SHOW VERSION"); got != "T:version D:PgBouncer 1.18.0 (vitalproxy test) C:SHOW Z" {
		t.Fatalf("SHOW VERSION: %s", got)
	}
	if got := c.query("SHOW HELP"); got != "N C:SHOW Z" {
		t.Fatalf("SHOW HELP: %s", got)
	}
	if got := c.query("PAUSE"); got != "E:"+CodeNotSupported+" Z" {
		t.Fatalf("PAUSE: %s", got)
	}
	// The scope is the bound user's tenants.
	if len(be.pgbScopes) != 1 || be.pgbScopes[0] != "pools:a" {
		t.Fatalf("scopes %q", be.pgbScopes)
	}
	if counts["pgbouncer_show_pools/ok"] != 1 || counts["pgbouncer_show_version/ok"] != 1 {
		t.Fatalf("counts %v", counts)
	}

	// The extended protocol, binary results: the types' binary encodings.
	c.send(&pgproto3.Parse{Query: "SHOW POOLS"}, &pgproto3.Describe{ObjectType: 'S'},
		&pgproto3.Bind{ResultFormatCodes: []int16{1}}, &pgproto3.Execute{}, &pgproto3.Sync{})
	var fields []pgproto3.FieldDescription
	var row [][]byte
	for {
		m, err := c.fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		switch m := m.(type) {
		case *pgproto3.RowDescription:
			fields = append([]pgproto3.FieldDescription(nil), m.Fields...)
		case *pgproto3.DataRow:
			for _, v := range m.Values {
				row = append(row, append([]byte(nil), v...))
			}
		case *pgproto3.ErrorResponse:
			t.Fatalf("error %s: %s", m.Code, m.Message)
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	wantOIDs := []uint32{OIDText, OIDText, OIDInt4, OIDNumeric, OIDInt8}
	for i, f := range fields {
		if f.DataTypeOID != wantOIDs[i] {
			t.Errorf("column %s: type %d, want %d", f.Name, f.DataTypeOID, wantOIDs[i])
		}
	}
	if len(row) != 5 || string(row[0]) != "app" || binary.BigEndian.Uint32(row[2]) != 3 || binary.BigEndian.Uint64(row[4]) != 70000 {
		t.Fatalf("binary row %q", row)
	}
	var n pgtype.Numeric
	if err := pgtype.NewMap().Scan(OIDNumeric, pgtype.BinaryFormatCode, row[3], &n); err != nil || n.Int.Int64()*pow10(n.Exp) != 123456789 {
		t.Fatalf("numeric %v %v", n, err)
	}
}

func pow10(e int32) int64 {
	p := int64(1)
	for range e {
		p *= 10
	}
	return p
}
