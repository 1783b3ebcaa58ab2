package config_test

import (
	"strings"
	"testing"

	"github.com/vitalproxy/vitalproxy/config"
)

func TestPgBouncerDatabase(t *testing.T) {
	t.Setenv("VITALPROXY_CONFIG", "")
	t.Setenv("VITALPROXY_CONSOLE_DATABASE", "")
	t.Setenv("VITALPROXY_CONSOLE_PGBOUNCER_DATABASE", "")
	c, err := config.Load(config.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Console.PgBouncerDatabase != "pgbouncer" {
		t.Fatalf("console.pgbouncer_database default %q", c.Console.PgBouncerDatabase)
	}
	c.Console.PgBouncerDatabase = c.Console.Database
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "console.pgbouncer_database must differ from console.database") {
		t.Fatalf("the same name twice: %v", err)
	}
	c.Console.PgBouncerDatabase = ""
	if err := c.Validate(); err != nil && strings.Contains(err.Error(), "pgbouncer") {
		t.Fatalf("an empty pgbouncer_database (disabled): %v", err)
	}
}
