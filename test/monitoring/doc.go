// Package monitoring holds the tests of the shipped monitoring files:
// deploy/prometheus/vitalproxy-alerts.yml (Prometheus alerting rules) and
// deploy/grafana/vitalproxy-dashboard.json (Grafana dashboard).
//
// The tests parse the rules with Prometheus's own rule-file parser (what
// `promtool check rules` runs), parse every PromQL expression of the rules
// and of the dashboard, check the dashboard's structure, and check that every
// metric the files refer to is exported by a real proxy: one runs in-process
// against a throwaway PostgreSQL with the isolation probe enabled, serves a
// few clients, and its registry is gathered. A renamed or removed metric
// therefore fails the build instead of leaving a silent alert or an empty
// panel.
package monitoring
