package integration_test

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestConsoleJDBC reaches the operator console with the PostgreSQL JDBC
// driver, as GUI tools do: connect (with the settings the driver sends),
// DatabaseMetaData, SHOW TENANTS as a Statement and as a PreparedStatement
// (the extended protocol), a bad command that errors while the session goes
// on.
func TestConsoleJDBC(t *testing.T) {
	noLeaks(t)
	java, jar := jdbcRuntime(t)
	cfg := consoleConfig(t)
	p := startProxy(t, cfg)
	src := testdataFile(t, "ConsoleCheck.java")
	url := fmt.Sprintf("jdbc:postgresql://%s:%d/%s?sslmode=disable", p.host, p.port, consoleDB)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, java, "-cp", jar, src, url, "ops", "ops-pw", dhSlug)
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("JDBC console client: %v\n%s", err, out)
	}
	for _, want := range []string{"PRODUCT PostgreSQL", "FOUND statement " + dhSlug, "FOUND prepared " + dhSlug, "BADCMD 42704", "AFTER ok"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("JDBC console client output lacks %q:\n%s", want, out)
		}
	}
}
