package docgen

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// MetricFamily is one metric family as a registry describes it.
type MetricFamily struct {
	Name   string
	Type   string // counter, gauge, histogram, summary, untyped
	Help   string
	Labels []string // variable labels, in declaration order
}

// Registry is what MetricFamilies reads: a Prometheus registry describes
// every collector registered on it (whether or not it has series yet) and
// gathers the series that exist.
type Registry interface {
	prometheus.Gatherer
	prometheus.Collector
}

// MetricFamilies returns, sorted by name, the metric families reg
// describes whose names start with prefix. Names, help and label names
// come from the descriptors; the type from the gathered series, since a
// descriptor does not carry it. A family that is described but has no
// series yet is an error naming it, so that the caller makes the proxy
// produce it before gathering.
func MetricFamilies(reg Registry, prefix string) ([]MetricFamily, error) {
	descs := make(chan *prometheus.Desc)
	go func() {
		reg.Describe(descs)
		close(descs)
	}()
	byName := map[string]*MetricFamily{}
	var errs []string
	for d := range descs {
		mf, err := parseDesc(d)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		if !strings.HasPrefix(mf.Name, prefix) {
			continue
		}
		if prev, ok := byName[mf.Name]; ok && (prev.Help != mf.Help || !equal(prev.Labels, mf.Labels)) {
			errs = append(errs, fmt.Sprintf("%s is described twice, differently", mf.Name))
		}
		byName[mf.Name] = &mf
	}
	gathered, err := reg.Gather()
	if err != nil {
		return nil, fmt.Errorf("gather: %w", err)
	}
	for _, g := range gathered {
		if mf, ok := byName[g.GetName()]; ok && len(g.GetMetric()) > 0 {
			mf.Type = typeName(g.GetType())
		}
	}
	out := make([]MetricFamily, 0, len(byName))
	for _, mf := range byName {
		if mf.Type == "" {
			errs = append(errs, fmt.Sprintf("%s is registered but has no series yet, so its type is unknown: make the proxy produce it first", mf.Name))
		}
		out = append(out, *mf)
	}
	if len(errs) > 0 {
		sort.Strings(errs)
		return nil, fmt.Errorf("metric families: %s", strings.Join(errs, "; "))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func equal(a, b []string) bool { return strings.Join(a, ",") == strings.Join(b, ",") }

func typeName(t dto.MetricType) string {
	switch t {
	case dto.MetricType_COUNTER:
		return "counter"
	case dto.MetricType_GAUGE:
		return "gauge"
	case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
		return "histogram"
	case dto.MetricType_SUMMARY:
		return "summary"
	default:
		return "untyped"
	}
}

// parseDesc reads name, help and variable labels from a descriptor's
// String form, the only way client_golang shows them:
//
//	Desc{fqName: "n", help: "h", unit: "", constLabels: {}, variableLabels: {a,c(b)}}
func parseDesc(d *prometheus.Desc) (MetricFamily, error) {
	if err := d.Err(); err != nil {
		return MetricFamily{}, fmt.Errorf("invalid descriptor: %w", err)
	}
	s := d.String()
	bad := func(what string) (MetricFamily, error) {
		return MetricFamily{}, fmt.Errorf("cannot read the %s of descriptor %s", what, s)
	}
	var mf MetricFamily
	rest, ok := strings.CutPrefix(s, `Desc{fqName: `)
	if !ok {
		return bad("name")
	}
	q, err := strconv.QuotedPrefix(rest)
	if err != nil {
		return bad("name")
	}
	mf.Name, _ = strconv.Unquote(q)
	rest, ok = strings.CutPrefix(rest[len(q):], `, help: `)
	if !ok {
		return bad("help")
	}
	if q, err = strconv.QuotedPrefix(rest); err != nil {
		return bad("help")
	}
	mf.Help, _ = strconv.Unquote(q)
	const open = "variableLabels: {"
	i := strings.LastIndex(rest, open)
	if i < 0 || !strings.HasSuffix(rest, "}}") {
		return bad("labels")
	}
	if labels := rest[i+len(open) : len(rest)-2]; labels != "" {
		for _, l := range strings.Split(labels, ",") {
			if inner, ok := strings.CutPrefix(l, "c("); ok {
				l = strings.TrimSuffix(inner, ")")
			}
			mf.Labels = append(mf.Labels, l)
		}
	}
	return mf, nil
}

// MetricsTable renders families as a Markdown table.
func MetricsTable(families []MetricFamily) string {
	var b strings.Builder
	b.WriteString("| metric | type | labels | help |\n|---|---|---|---|\n")
	for _, mf := range families {
		labels := make([]string, len(mf.Labels))
		for i, l := range mf.Labels {
			labels[i] = code(l)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", code(mf.Name), mf.Type, strings.Join(labels, ", "), prose(mf.Help, nil))
	}
	return b.String()
}
