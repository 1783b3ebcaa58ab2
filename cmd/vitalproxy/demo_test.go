package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

// syncBuffer is a bytes.Buffer safe for the command goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startDemo runs `vitalproxy demo args...` in-process and returns its
// details once it is ready, a function that stops it (returning the
// command's error) and its output.
func startDemo(t *testing.T, args ...string) (demoInfo, func() error, *syncBuffer) {
	t.Helper()
	t.Setenv("VITALPROXY_CONFIG", "")
	ready := make(chan demoInfo, 1)
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	root := newRootCommand()
	root.SetArgs(append([]string{"demo", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"}, args...))
	root.SetOut(&out)
	root.SetErr(&out)
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(withDemoReady(ctx, ready)) }()
	stop := func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(2 * time.Minute):
			t.Fatal("demo did not stop within 2 minutes")
			return nil
		}
	}
	select {
	case info := <-ready:
		return info, stop, &out
	case err := <-done:
		cancel()
		t.Fatalf("demo ended before it was ready: %v\n%s", err, out.String())
	case <-time.After(3 * time.Minute):
		_ = stop()
		t.Fatalf("demo not ready within 3 minutes\n%s", out.String())
	}
	return demoInfo{}, nil, nil
}

// agentNames lists the agents user sees through the demo's proxy.
func agentNames(t *testing.T, info demoInfo, user string) []string {
	t.Helper()
	u, ok := info.User(user)
	if !ok {
		t.Fatalf("no demo user %s", user)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, info.ConnString(u))
	if err != nil {
		t.Fatalf("connect as %s through the proxy: %v", user, err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT name FROM agents ORDER BY name")
	if err != nil {
		t.Fatalf("%s: query agents: %v", user, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("%s: query agents: %v", user, err)
	}
	return names
}

// checkIsolation checks that each tenant's app user sees its own private
// agent and the shared ones, and not the other tenant's private agent.
func checkIsolation(t *testing.T, info demoInfo) {
	t.Helper()
	tests := []struct {
		user      string
		want      []string
		forbidden string
	}{
		{user: "dh-app", want: []string{"dh-triage-private", "clinical-summary"}, forbidden: "platform-ops-private"},
		{user: "platform-app", want: []string{"platform-ops-private", "clinical-summary"}, forbidden: "dh-triage-private"},
	}
	for _, tt := range tests {
		names := agentNames(t, info, tt.user)
		for _, w := range tt.want {
			if !slices.Contains(names, w) {
				t.Errorf("%s sees %v, want %s among them", tt.user, names, w)
			}
		}
		if slices.Contains(names, tt.forbidden) {
			t.Errorf("%s sees %v, including the other tenant's %s", tt.user, names, tt.forbidden)
		}
	}
}

func TestDemoThrowawayCluster(t *testing.T) {
	info, stop, out := startDemo(t)
	stopped := false
	defer func() {
		if !stopped {
			_ = stop()
		}
	}()
	if info.TempDir == "" {
		t.Fatal("no temp dir reported for the throwaway cluster")
	}
	if _, err := os.Stat(info.TempDir); err != nil {
		t.Fatalf("temp dir: %v", err)
	}
	checkIsolation(t, info)

	u, _ := info.User("dh-app")
	if want := `psql "` + info.ConnString(u) + `"`; !strings.Contains(out.String(), want) {
		t.Errorf("output lacks the ready-to-paste %s\n%s", want, out.String())
	}
	if info.MetricsAddr == "" || !strings.Contains(out.String(), "http://"+info.MetricsAddr+"/metrics") {
		t.Errorf("output lacks the metrics URL (%q)\n%s", info.MetricsAddr, out.String())
	} else {
		resp, err := http.Get("http://" + info.MetricsAddr + "/metrics")
		if err != nil {
			t.Errorf("GET /metrics: %v", err)
		} else {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "vitalproxy_") {
				t.Errorf("GET /metrics: %s, %d bytes without vitalproxy_ metrics", resp.Status, len(body))
			}
		}
	}

	stopped = true
	if err := stop(); err != nil {
		t.Fatalf("demo ended with %v\n%s", err, out.String())
	}
	if _, err := os.Stat(info.TempDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temp dir %s still there after the demo stopped (%v)", info.TempDir, err)
	}
}

func TestDemoUpstream(t *testing.T) {
	c := pgtest.Shared(t)
	info, stop, out := startDemo(t, "--upstream", c.URL("postgres"))
	stopped := false
	defer func() {
		if !stopped {
			_ = stop()
		}
	}()
	if info.TempDir != "" || !strings.HasPrefix(info.Database, "vitalproxy_demo_") {
		t.Fatalf("upstream demo: temp dir %q, database %q", info.TempDir, info.Database)
	}
	checkIsolation(t, info)
	stopped = true
	if err := stop(); err != nil {
		t.Fatalf("demo ended with %v\n%s", err, out.String())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var dbs, roles int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_database WHERE datname = $1`, info.Database).Scan(&dbs); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_roles WHERE starts_with(rolname, $1)`, info.RolePrefix).Scan(&roles); err != nil {
		t.Fatal(err)
	}
	if dbs != 0 || roles != 0 {
		t.Errorf("after the demo: %d database(s) %s and %d role(s) %s* left", dbs, info.Database, roles, info.RolePrefix)
	}
}

func TestDemoWithoutServerBinaries(t *testing.T) {
	t.Setenv("VITALPROXY_CONFIG", "")
	t.Setenv("PG_BIN_DIR", t.TempDir())
	var out bytes.Buffer
	root := newRootCommand()
	root.SetArgs([]string{"demo", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"})
	root.SetOut(&out)
	root.SetErr(&out)
	err := root.ExecuteContext(context.Background())
	if err == nil {
		t.Fatal("demo without server binaries succeeded")
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") || !strings.Contains(msg, "apt-get install postgresql") || !strings.Contains(msg, "--upstream") {
		t.Errorf("error %q: want one line naming apt-get install postgresql and --upstream", msg)
	}
}
