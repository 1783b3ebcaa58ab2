package txmode_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/proxy/pool"
	"github.com/vitalproxy/vitalproxy/test/fixture"
)

// BenchmarkSelectOne measures one round trip of SELECT 1 as a tenant role,
// straight to PostgreSQL and through the engine (a backend borrowed and
// returned per transaction), with the simple protocol and with a prepared
// statement. The difference is the engine's cost per transaction;
// allocations per operation include the client's.
//
//	go test -run '^$' -bench SelectOne -benchmem ./proxy/txmode/
func BenchmarkSelectOne(b *testing.B) {
	e := newEnv(b, pool.Config{MaxConns: 2}, nil)
	ctx := context.Background()
	role := e.key(dh).Role
	direct := fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable", role, auth.RolePassword(fixture.Secret, role), e.c.Host, e.c.Port, e.db.Name)
	for _, ep := range []struct{ name, url string }{{"direct", direct}, {"txmode", e.url(dh)}} {
		pc, err := pgconn.Connect(ctx, ep.url)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { pc.Close(context.Background()) })
		if _, err := pc.Prepare(ctx, "one", "SELECT 1", nil); err != nil {
			b.Fatal(err)
		}
		b.Run(ep.name+"/simple", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := pc.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(ep.name+"/prepared", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if res := pc.ExecPrepared(ctx, "one", nil, nil, nil).Read(); res.Err != nil {
					b.Fatal(res.Err)
				}
			}
		})
	}
}
