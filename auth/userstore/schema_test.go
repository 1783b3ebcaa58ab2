package userstore_test

import (
	"context"
	"testing"

	"github.com/vitalproxy/vitalproxy/migrations"
	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

// migrate applies every migration to database db of cluster c.
func migrate(t testing.TB, c *pgtest.Cluster, db string) {
	t.Helper()
	m, err := migrations.New(c.URL(db))
	if err != nil {
		t.Fatalf("migrations: %v", err)
	}
	defer m.Close()
	if _, err := m.Up(context.Background()); err != nil {
		t.Fatalf("migrate up: %v", err)
	}
}
