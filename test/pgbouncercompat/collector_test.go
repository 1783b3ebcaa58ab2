package pgbouncercompat_test

import (
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"

	"github.com/lib/pq"
	"github.com/prometheus/client_golang/prometheus"
)

// pgbCollector scrapes a PgBouncer admin database as the Prometheus
// community's pgbouncer_exporter does: lib/pq through database/sql (so the
// simple query protocol), its queries, its metric names, and its rules for
// reading values (labels must scan as a string or a number; metric values
// must be numbers or numeric text). Where the exporter logs an unparsable
// value and goes on, this collector records it, so that a test can fail
// on it.
type pgbCollector struct {
	dsn string

	mu     sync.Mutex
	errors []error
}

// Column usages of a namespace's mapping.
type colUse struct {
	label  bool
	metric string // metric name after the namespace
	gauge  bool
	factor float64
}

var pgbNamespaces = map[string]map[string]colUse{
	"pools": {
		"database": {label: true}, "user": {label: true},
		"cl_active":             {metric: "client_active_connections", gauge: true, factor: 1},
		"cl_waiting":            {metric: "client_waiting_connections", gauge: true, factor: 1},
		"cl_active_cancel_req":  {metric: "client_active_cancel_connections", gauge: true, factor: 1},
		"cl_waiting_cancel_req": {metric: "client_waiting_cancel_connections", gauge: true, factor: 1},
		"sv_active":             {metric: "server_active_connections", gauge: true, factor: 1},
		"sv_active_cancel":      {metric: "server_active_cancel_connections", gauge: true, factor: 1},
		"sv_being_canceled":     {metric: "server_being_canceled_connections", gauge: true, factor: 1},
		"sv_idle":               {metric: "server_idle_connections", gauge: true, factor: 1},
		"sv_used":               {metric: "server_used_connections", gauge: true, factor: 1},
		"sv_tested":             {metric: "server_testing_connections", gauge: true, factor: 1},
		"sv_login":              {metric: "server_login_connections", gauge: true, factor: 1},
		"maxwait":               {metric: "client_maxwait_seconds", gauge: true, factor: 1},
	},
	"stats_totals": {
		"database":       {label: true},
		"query_count":    {metric: "queries_pooled_total", factor: 1},
		"query_time":     {metric: "queries_duration_seconds_total", factor: 1e-6},
		"bytes_received": {metric: "received_bytes_total", factor: 1},
		"bytes_sent":     {metric: "sent_bytes_total", factor: 1},
		"wait_time":      {metric: "client_wait_seconds_total", factor: 1e-6},
		"xact_count":     {metric: "sql_transactions_pooled_total", factor: 1},
		"xact_time":      {metric: "server_in_transaction_seconds_total", factor: 1e-6},
	},
	"databases": {
		"name": {label: true}, "host": {label: true}, "port": {label: true}, "database": {label: true},
		"force_user": {label: true}, "pool_mode": {label: true},
		"pool_size":           {metric: "pool_size", gauge: true, factor: 1},
		"reserve_pool":        {metric: "reserve_pool", gauge: true, factor: 1},
		"max_connections":     {metric: "max_connections", gauge: true, factor: 1},
		"current_connections": {metric: "current_connections", gauge: true, factor: 1},
		"paused":              {metric: "paused", gauge: true, factor: 1},
		"disabled":            {metric: "disabled", gauge: true, factor: 1},
	},
}

var (
	pgbLists  = []string{"databases", "users", "pools", "free_clients", "used_clients", "login_clients", "free_servers", "used_servers"}
	pgbConfig = map[string]string{"max_client_conn": "max_client_connections", "max_user_connections": "max_user_connections"}
)

func (c *pgbCollector) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.errors = append(c.errors, err)
}

// scrapeErrors are the errors of the scrapes so far.
func (c *pgbCollector) scrapeErrors() []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.errors)
}

// Describe sends no descriptions: the collector is unchecked, as the
// exporter's metrics depend on what the server answers.
func (c *pgbCollector) Describe(chan<- *prometheus.Desc) {}

func gauge(name, help string, v float64, labels map[string]string) prometheus.Metric {
	names := make([]string, 0, len(labels))
	for k := range labels {
		names = append(names, k)
	}
	slices.Sort(names)
	vals := make([]string, len(names))
	for i, n := range names {
		vals[i] = labels[n]
	}
	return prometheus.MustNewConstMetric(prometheus.NewDesc(name, help, names, nil), prometheus.GaugeValue, v, vals...)
}

// Collect scrapes once.
func (c *pgbCollector) Collect(ch chan<- prometheus.Metric) {
	up := 1.0
	defer func() { ch <- gauge("pgbouncer_up", "scrape succeeded", up, nil) }()
	conn, err := pq.NewConnector(c.dsn)
	if err != nil {
		c.fail(err)
		up = 0
		return
	}
	db := sql.OpenDB(conn)
	defer db.Close()
	db.SetMaxOpenConns(1)
	if err := c.ping(db); err != nil {
		c.fail(err)
		up = 0
		return
	}
	for _, f := range []func(*sql.DB, chan<- prometheus.Metric) error{c.version, c.lists, c.config} {
		if err := f(db, ch); err != nil {
			c.fail(err)
			up = 0
		}
	}
	for ns, mapping := range pgbNamespaces {
		if err := c.namespace(db, ns, mapping, ch); err != nil {
			c.fail(err)
			up = 0
		}
	}
}

func (c *pgbCollector) ping(db *sql.DB) error {
	rows, err := db.Query("SHOW STATS")
	if err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	return rows.Close()
}

func (c *pgbCollector) version(db *sql.DB, ch chan<- prometheus.Metric) error {
	rows, err := db.Query("SHOW VERSION;")
	if err != nil {
		return fmt.Errorf("SHOW VERSION: %w", err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil || len(cols) != 1 || cols[0] != "version" {
		return fmt.Errorf("SHOW VERSION columns %q: %v", cols, err)
	}
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return err
		}
		ch <- gauge("pgbouncer_version_info", "version", 1, map[string]string{"version": v})
	}
	return rows.Err()
}

func (c *pgbCollector) lists(db *sql.DB, ch chan<- prometheus.Metric) error {
	rows, err := db.Query("SHOW LISTS;")
	if err != nil {
		return fmt.Errorf("SHOW LISTS: %w", err)
	}
	defer rows.Close()
	if cols, err := rows.Columns(); err != nil || len(cols) != 2 {
		return fmt.Errorf("SHOW LISTS columns %q: %v", cols, err)
	}
	for rows.Next() {
		var list string
		var items sql.RawBytes
		if err := rows.Scan(&list, &items); err != nil {
			return err
		}
		v, err := strconv.ParseFloat(string(items), 64)
		if err != nil {
			return fmt.Errorf("SHOW LISTS %s: %w", list, err)
		}
		if slices.Contains(pgbLists, list) {
			ch <- gauge("pgbouncer_"+list, list, v, nil)
		}
	}
	return rows.Err()
}

func (c *pgbCollector) config(db *sql.DB, ch chan<- prometheus.Metric) error {
	rows, err := db.Query("SHOW CONFIG;")
	if err != nil {
		return fmt.Errorf("SHOW CONFIG: %w", err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil || (len(cols) != 3 && len(cols) != 4) {
		return fmt.Errorf("SHOW CONFIG columns %q: %v", cols, err)
	}
	for rows.Next() {
		var key, changeable string
		var value, def sql.RawBytes
		dest := []any{&key, &value, &def, &changeable}
		if len(cols) == 3 {
			dest = []any{&key, &value, &changeable}
		}
		if err := rows.Scan(dest...); err != nil {
			return err
		}
		name, ok := pgbConfig[key]
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(string(value), 64)
		if err != nil {
			return fmt.Errorf("SHOW CONFIG %s: %w", key, err)
		}
		ch <- gauge("pgbouncer_config_"+name, key, v, nil)
	}
	return rows.Err()
}

func (c *pgbCollector) namespace(db *sql.DB, ns string, mapping map[string]colUse, ch chan<- prometheus.Metric) error {
	rows, err := db.Query("SHOW " + ns + ";")
	if err != nil {
		return fmt.Errorf("SHOW %s: %w", ns, err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return err
	}
	vals := make([]any, len(cols))
	dest := make([]any, len(cols))
	for i := range vals {
		dest[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return err
		}
		labels := map[string]string{}
		for i, col := range cols {
			if !mapping[col].label {
				continue
			}
			switch v := vals[i].(type) {
			case string:
				labels[col] = v
			case int64:
				labels[col] = strconv.FormatInt(v, 10)
			case float64:
				labels[col] = fmt.Sprintf("%f", v)
			case nil:
				labels[col] = ""
			default:
				c.fail(fmt.Errorf("SHOW %s: label column %s has an unhandled type %T", ns, col, v))
				labels[col] = "<invalid>"
			}
		}
		for i, col := range cols {
			m, ok := mapping[col]
			if !ok || m.label {
				continue
			}
			v, ok := toFloat(vals[i])
			if !ok {
				c.fail(fmt.Errorf("SHOW %s: cannot parse column %s value %v", ns, col, vals[i]))
				continue
			}
			name := "pgbouncer_" + ns + "_" + m.metric
			if m.gauge {
				ch <- gauge(name, col, v*m.factor, labels)
			} else {
				names, lvals := sortedLabels(labels)
				ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(name, col, names, nil), prometheus.CounterValue, v*m.factor, lvals...)
			}
		}
	}
	return rows.Err()
}

func sortedLabels(labels map[string]string) ([]string, []string) {
	names := make([]string, 0, len(labels))
	for k := range labels {
		names = append(names, k)
	}
	slices.Sort(names)
	vals := make([]string, len(names))
	for i, n := range names {
		vals[i] = labels[n]
	}
	return names, vals
}

// toFloat reads a value as the exporter does: numbers, and text that
// parses as a number.
func toFloat(v any) (float64, bool) {
	switch v := v.(type) {
	case int64:
		return float64(v), true
	case float64:
		return v, true
	case []byte:
		f, err := strconv.ParseFloat(string(v), 64)
		return f, err == nil
	case string:
		f, err := strconv.ParseFloat(v, 64)
		return f, err == nil
	}
	return 0, false
}

var errNoMetric = errors.New("no such metric")
