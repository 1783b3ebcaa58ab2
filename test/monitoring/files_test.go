package monitoring_test

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

// The files under test, relative to this package.
const (
	rulesFile     = "../../deploy/prometheus/vitalproxy-alerts.yml"
	dashboardFile = "../../deploy/grafana/vitalproxy-dashboard.json"
)

// promql parses like Prometheus does by default.
var promql = parser.NewParser(parser.Options{})

// metricNames returns the metric names an expression selects.
func metricNames(expr parser.Expr) []string {
	var out []string
	parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
		vs, ok := node.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual {
				name = m.Value
			}
		}
		if name != "" {
			out = append(out, name)
		}
		return nil
	})
	return out
}

// loadRules parses the rules file as Prometheus does and returns it with
// the metric names each rule's expression selects.
func loadRules(t testing.TB) (*rulefmt.RuleGroups, map[string][]string) {
	t.Helper()
	groups, errs := rulefmt.ParseFile(rulesFile, false, model.UTF8Validation, promql, nil)
	for _, err := range errs {
		t.Errorf("%s: %v", rulesFile, err)
	}
	if len(errs) > 0 {
		t.FailNow()
	}
	uses := map[string][]string{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			expr, err := promql.ParseExpr(r.Expr)
			if err != nil {
				t.Fatalf("%s: %s: %v", rulesFile, r.Alert, err)
			}
			uses["alert "+r.Alert] = metricNames(expr)
		}
	}
	return groups, uses
}

func TestAlertRules(t *testing.T) {
	groups, uses := loadRules(t)
	want := []string{
		"VitalproxyIsolationAuditFailing", "VitalproxyIsolationProbeFailing", "VitalproxyIsolationProbeStale",
		"VitalproxyIsolationProbeViolation", "VitalproxyDown", "VitalproxyPoolQueueTimeouts", "VitalproxyPoolSaturated",
		"VitalproxyAuthFailureSpike", "VitalproxyRefusedCancelRequests", "VitalproxyContextInjectionFailures",
	}
	seen := map[string]bool{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			name := r.Alert
			t.Run(g.Name+"/"+name, func(t *testing.T) {
				switch {
				case name == "":
					t.Fatalf("recording rule %q: the file holds alerting rules only", r.Record)
				case seen[name]:
					t.Errorf("alert %s is defined twice", name)
				}
				seen[name] = true
				if !strings.HasPrefix(name, "Vitalproxy") {
					t.Errorf("alert %s: name does not start with Vitalproxy", name)
				}
				if s := r.Labels["severity"]; s != "critical" && s != "warning" {
					t.Errorf("alert %s: severity %q, want critical or warning", name, s)
				}
				for _, a := range []string{"summary", "description"} {
					if strings.TrimSpace(r.Annotations[a]) == "" {
						t.Errorf("alert %s: no %s annotation", name, a)
					}
				}
				if len(uses["alert "+name]) == 0 {
					t.Errorf("alert %s selects no metric", name)
				}
			})
		}
	}
	for _, w := range want {
		if !seen[w] {
			t.Errorf("alert %s is missing", w)
		}
	}
}

// dashboard is the part of a Grafana dashboard the tests look at.
type dashboard struct {
	Title         string  `json:"title"`
	UID           string  `json:"uid"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []variable `json:"list"`
	} `json:"templating"`
}

// variable is a dashboard template variable.
type variable struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Query      json.RawMessage `json:"query"`
	Datasource *datasource     `json:"datasource"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID         int         `json:"id"`
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Datasource *datasource `json:"datasource"`
	GridPos    struct {
		X, Y, W, H int
	} `json:"gridPos"`
	Targets []struct {
		RefID      string      `json:"refId"`
		Expr       string      `json:"expr"`
		Datasource *datasource `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // of a collapsed row
}

// dsVar is the dashboard's data source variable.
const dsVar = "DS_PROMETHEUS"

// grafanaVar matches $name, ${name} and ${name:format}.
var grafanaVar = regexp.MustCompile(`\$\{(\w+)(?::\w+)?\}|\$(\w+)`)

// grafanaBuiltins are Grafana's own variables, as a PromQL duration.
var grafanaBuiltins = map[string]string{"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}

// expand replaces Grafana variables so that the expression can be parsed:
// built-in intervals become durations, the dashboard's own variables a
// plain value (they only appear inside label matchers). Unknown variables
// are reported.
func expand(expr string, vars map[string]bool) (string, error) {
	var unknown []string
	out := grafanaVar.ReplaceAllStringFunc(expr, func(m string) string {
		sub := grafanaVar.FindStringSubmatch(m)
		name := sub[1] + sub[2]
		if d, ok := grafanaBuiltins[name]; ok {
			return d
		}
		if !vars[name] {
			unknown = append(unknown, name)
		}
		return "value"
	})
	if len(unknown) > 0 {
		return "", fmt.Errorf("unknown variable(s) %s", strings.Join(unknown, ", "))
	}
	return out, nil
}

// labelValues matches a Prometheus variable query label_values(selector, label).
var labelValues = regexp.MustCompile(`^label_values\((.+),\s*(\w+)\)$`)

// loadDashboard parses the dashboard, checks its structure and returns it
// with the metric names each panel's (and variable's) queries select.
func loadDashboard(t testing.TB) (*dashboard, map[string][]string) {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(b) {
		t.Fatalf("%s is not valid JSON", dashboardFile)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s is not a dashboard: %v", dashboardFile, err)
	}
	uses := map[string][]string{}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Fatalf("variable %s: query: %v", v.Name, err)
		}
		m := labelValues.FindStringSubmatch(q.Query)
		if m == nil {
			t.Fatalf("variable %s: query %q is not label_values(selector, label)", v.Name, q.Query)
		}
		sel, err := expand(m[1], vars)
		if err != nil {
			t.Fatalf("variable %s: %v", v.Name, err)
		}
		expr, err := promql.ParseExpr(sel)
		if err != nil {
			t.Fatalf("variable %s: %q: %v", v.Name, sel, err)
		}
		uses["variable "+v.Name] = metricNames(expr)
	}
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			var names []string
			for _, tg := range p.Targets {
				e, err := expand(tg.Expr, vars)
				if err != nil {
					t.Fatalf("panel %q, target %s: %v", p.Title, tg.RefID, err)
				}
				expr, err := promql.ParseExpr(e)
				if err != nil {
					t.Fatalf("panel %q, target %s: %q: %v", p.Title, tg.RefID, tg.Expr, err)
				}
				names = append(names, metricNames(expr)...)
			}
			uses[fmt.Sprintf("panel %q", p.Title)] = names
		}
	}
	walk(d.Panels)
	return &d, uses
}

func TestDashboard(t *testing.T) {
	d, uses := loadDashboard(t)
	if d.Title == "" || d.UID == "" {
		t.Errorf("dashboard title %q, uid %q: both are needed", d.Title, d.UID)
	}
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d, want at least 36", d.SchemaVersion)
	}
	hasDS := slices.ContainsFunc(d.Templating.List, func(v variable) bool {
		return v.Name == dsVar && v.Type == "datasource" && string(v.Query) == `"prometheus"`
	})
	if !hasDS {
		t.Errorf("no Prometheus data source variable %s", dsVar)
	}
	wantDS := func(what string, ds *datasource) {
		if ds == nil || ds.Type != "prometheus" || ds.UID != "${"+dsVar+"}" {
			t.Errorf("%s: data source %+v, want prometheus ${%s}", what, ds, dsVar)
		}
	}
	for _, v := range d.Templating.List {
		if v.Type == "query" {
			wantDS("variable "+v.Name, v.Datasource)
		}
	}
	ids := map[int]string{}
	type cell struct{ x, y int }
	taken := map[cell]string{}
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			what := fmt.Sprintf("panel %q", p.Title)
			if p.Title == "" {
				t.Errorf("panel %d has no title", p.ID)
			}
			if prev, dup := ids[p.ID]; dup || p.ID == 0 {
				t.Errorf("%s: id %d is zero or also used by %s", what, p.ID, prev)
			}
			ids[p.ID] = p.Title
			g := p.GridPos
			if g.W <= 0 || g.H <= 0 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
				t.Errorf("%s: gridPos %+v is outside the 24-column grid", what, g)
			}
			for x := g.X; x < g.X+g.W; x++ {
				for y := g.Y; y < g.Y+g.H; y++ {
					if other, ok := taken[cell{x, y}]; ok {
						t.Errorf("%s overlaps %s at (%d,%d)", what, other, x, y)
						return
					}
					taken[cell{x, y}] = what
				}
			}
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			wantDS(what, p.Datasource)
			if len(p.Targets) == 0 {
				t.Errorf("%s has no query", what)
			}
			refs := map[string]bool{}
			for _, tg := range p.Targets {
				if tg.RefID == "" || refs[tg.RefID] {
					t.Errorf("%s: refId %q is empty or repeated", what, tg.RefID)
				}
				refs[tg.RefID] = true
				wantDS(what+" target "+tg.RefID, tg.Datasource)
			}
			if len(uses[what]) == 0 {
				t.Errorf("%s selects no metric", what)
			}
		}
	}
	walk(d.Panels)
	// What the dashboard must show.
	all := map[string]bool{}
	for _, names := range uses {
		for _, n := range names {
			all[n] = true
		}
	}
	for _, m := range []string{
		"vitalproxy_isolation_check", "vitalproxy_isolation_probe_success",
		"vitalproxy_isolation_probe_last_success_timestamp_seconds", "vitalproxy_client_connections",
		"vitalproxy_pool_server_connections", "vitalproxy_pool_clients_waiting", "vitalproxy_pool_wait_seconds_bucket",
		"vitalproxy_pool_queue_timeouts_total", "vitalproxy_pool_server_connections_opened_total",
		"vitalproxy_pool_server_connections_closed_total", "vitalproxy_transactions_total", "vitalproxy_auth_failures_total",
		"vitalproxy_cancel_requests_total", "vitalproxy_bytes_total", "vitalproxy_session_setup_seconds_bucket",
	} {
		if !all[m] {
			t.Errorf("no panel shows %s", m)
		}
	}
}

// referencedMetrics returns every metric name the rules and the dashboard
// select, each with where it is used.
func referencedMetrics(t testing.TB) map[string][]string {
	t.Helper()
	_, ruleUses := loadRules(t)
	_, dashUses := loadDashboard(t)
	out := map[string][]string{}
	for _, uses := range []map[string][]string{ruleUses, dashUses} {
		for where, names := range uses {
			for _, n := range names {
				if !slices.Contains(out[n], where) {
					out[n] = append(out[n], where)
				}
			}
		}
	}
	for _, w := range out {
		sort.Strings(w)
	}
	return out
}
