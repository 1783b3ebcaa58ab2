package main

import (
	"strings"
	"testing"

	"github.com/vitalproxy/vitalproxy/auth"
	"github.com/vitalproxy/vitalproxy/auth/tenantroles"
)

func TestTenantSyncProbe(t *testing.T) {
	e := newCLIEnv(t)
	a, b := tenantroles.ProbeTenantA, tenantroles.ProbeTenantB
	tests := []struct {
		name string
		sql  string // run as superuser first
		env  map[string]string
		args []string
		want []string
	}{
		{name: "without-probe", args: []string{"tenant", "sync"}, want: []string{"nothing changed"}},
		{name: "flag", args: []string{"tenant", "sync", "--probe"}, want: []string{
			"added probe tenant " + a, "added probe tenant " + b,
			"probe tenant " + a + ": inserted canary agent " + tenantroles.ProbeCanary(a),
			"probe tenant " + b + ": inserted canary agent " + tenantroles.ProbeCanary(b),
			"4 change(s)",
		}},
		{name: "flag/again", args: []string{"tenant", "sync", "--probe"}, want: []string{"nothing changed"}},
		{name: "config/repairs", sql: `UPDATE public.agents SET is_shared = true, sharing_mode = 'global' WHERE name = '` + tenantroles.ProbeCanary(b) + `'`,
			env: map[string]string{"VITALPROXY_PROBE_ENABLED": "true"}, args: []string{"tenant", "sync"},
			want: []string{"probe tenant " + b + ": made canary agent " + tenantroles.ProbeCanary(b) + " private and live again", "1 change(s)"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			if tc.sql != "" {
				e.sql(t, tc.sql)
			}
			out := e.mustRun(t, "", tc.args...)
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
	for _, slug := range tenantroles.ProbeTenants() {
		if err := e.login(e.role(slug, auth.ReadOnly)); err != nil {
			t.Errorf("login as %s's read-only role: %v", slug, err)
		}
	}
	if out := e.mustRun(t, "", "tenant", "list"); !strings.Contains(out, a) || !strings.Contains(out, b) {
		t.Errorf("tenant list lacks the probe tenants:\n%s", out)
	}
}
