package docgen_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/vitalproxy/vitalproxy/internal/docgen"
)

func TestSplice(t *testing.T) {
	const doc = "# Title\n\nbefore\n<!-- BEGIN GENERATED: keys. Run the generator. -->\nold\nlines\n<!-- END GENERATED: keys -->\nafter\n"
	tests := []struct {
		name, doc, section, body string
		want                     string
		wantErr                  string
	}{
		{name: "replace", doc: doc, section: "keys", body: "new\n",
			want: "# Title\n\nbefore\n<!-- BEGIN GENERATED: keys. Run the generator. -->\nnew\n<!-- END GENERATED: keys -->\nafter\n"},
		{name: "adds the last newline", doc: doc, section: "keys", body: "new",
			want: "# Title\n\nbefore\n<!-- BEGIN GENERATED: keys. Run the generator. -->\nnew\n<!-- END GENERATED: keys -->\nafter\n"},
		{name: "empty body", doc: doc, section: "keys", body: "",
			want: "# Title\n\nbefore\n<!-- BEGIN GENERATED: keys. Run the generator. -->\n<!-- END GENERATED: keys -->\nafter\n"},
		{name: "other section", doc: doc, section: "metrics", wantErr: "no generated section"},
		{name: "name is a prefix of another", doc: doc, section: "key", wantErr: "no generated section"},
		{name: "no end", doc: "<!-- BEGIN GENERATED: keys -->\nx\n", section: "keys", wantErr: "no generated section"},
		{name: "end first", doc: "<!-- END GENERATED: keys -->\n<!-- BEGIN GENERATED: keys -->\n", section: "keys", wantErr: "end marker before"},
		{name: "two begins", doc: "<!-- BEGIN GENERATED: keys -->\n<!-- BEGIN GENERATED: keys -->\n<!-- END GENERATED: keys -->\n",
			section: "keys", wantErr: "two begin markers"},
	}
	for _, tc := range tests {
		t.Run("splice/"+tc.name, func(t *testing.T) {
			got, err := docgen.Splice([]byte(tc.doc), tc.section, tc.body)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

func TestSync(t *testing.T) {
	path := filepath.Join(t.TempDir(), "doc.md")
	const doc = "intro\n<!-- BEGIN GENERATED: s -->\nold\n<!-- END GENERATED: s -->\n"
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(docgen.UpdateEnv, "")
	if err := docgen.Sync(path, "s", "old\n"); err != nil {
		t.Errorf("sync/unchanged: %v", err)
	}
	err := docgen.Sync(path, "s", "new\n")
	if err == nil || !strings.Contains(err.Error(), docgen.RegenerateCommand) || !strings.Contains(err.Error(), `"new"`) {
		t.Errorf("sync/drift: error %v, want the regenerate command and the differing line", err)
	}
	if b, _ := os.ReadFile(path); string(b) != doc {
		t.Errorf("sync/drift changed the file:\n%s", b)
	}
	t.Setenv(docgen.UpdateEnv, "1")
	if err := docgen.Sync(path, "s", "new\n"); err != nil {
		t.Fatalf("sync/update: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "intro\n<!-- BEGIN GENERATED: s -->\nnew\n<!-- END GENERATED: s -->\n" {
		t.Errorf("sync/update wrote:\n%s", b)
	}
}

type secret string

type sample struct {
	Name    string             `mapstructure:"name"`
	Token   secret             `mapstructure:"token"`
	Group   sampleGroup        `mapstructure:"group"`
	Items   []sampleItem       `mapstructure:"items"`
	ByName  map[string]sample2 `mapstructure:"by_name"`
	Skipped string             `mapstructure:"-"`
}

type sampleGroup struct {
	Wait  time.Duration `mapstructure:"wait"`
	Count int           `mapstructure:"count"`
	List  []string      `mapstructure:"list"`
}

type sampleItem struct {
	On bool `mapstructure:"on"`
}

type sample2 struct {
	Cap int `mapstructure:"cap"`
}

var sampleDocs = map[string]map[string]string{
	"sample":      {"Name": "Name is the name.\n", "Token": "Token, when set, signs.\n", "Items": "Items are things.\n", "ByName": "Per name.\n"},
	"sampleGroup": {"Wait": "Wait bounds the wait.\n", "Count": "How many.\n", "List": "List are | values <x>.\n"},
	"sampleItem":  {"On": "On turns it on (see group.count).\n"},
	"sample2":     {"Cap": "Cap caps.\n"},
}

func sampleDefaults() map[string]any {
	return map[string]any{"name": "n", "token": "", "group.wait": "5s", "group.count": 3, "group.list": []string{"a", "b"}}
}

func TestConfigKeys(t *testing.T) {
	opts := func(defaults map[string]any, docs map[string]map[string]string) docgen.ConfigOptions {
		return docgen.ConfigOptions{Docs: docs, Defaults: defaults, Secret: reflect.TypeFor[secret](),
			MapKeys: map[string]string{"by_name": "<name>"}}
	}
	t.Run("keys/complete", func(t *testing.T) {
		keys, err := docgen.ConfigKeys(reflect.TypeFor[sample](), opts(sampleDefaults(), sampleDocs))
		if err != nil {
			t.Fatal(err)
		}
		got := docgen.ConfigTable(keys)
		want := "| key | type | default | meaning |\n|---|---|---|---|\n" +
			"| `name` | string | `n` | The name. |\n" +
			"| `token` | string (secret) |  | When set, signs. |\n" +
			"| `group.wait` | duration | `5s` | Bounds the wait. |\n" +
			"| `group.count` | integer | `3` | How many. |\n" +
			"| `group.list` | list of strings | `[a, b]` | \\| values &lt;x&gt;. |\n" +
			"| `items` | list |  | Things. |\n" +
			"| `items[].on` | boolean |  | Turns it on (see `group.count`). |\n" +
			"| `by_name` | map |  | Per name. |\n" +
			"| `by_name.<name>.cap` | integer |  | Caps. |\n"
		if got != want {
			t.Errorf("table:\n%s\nwant:\n%s", got, want)
		}
	})
	errorCases := []struct {
		name     string
		defaults func(map[string]any)
		docs     func(map[string]map[string]string)
		want     string
	}{
		{name: "missing default", defaults: func(d map[string]any) { delete(d, "group.count") }, want: "group.count (sampleGroup.Count) has no default"},
		{name: "default of no key", defaults: func(d map[string]any) { d["group.gone"] = 1 }, want: "default for group.gone"},
		{name: "missing doc", docs: func(d map[string]map[string]string) { delete(d["sampleItem"], "On") }, want: "items[].on (sampleItem.On) has no doc comment"},
		{name: "undocumented list", docs: func(d map[string]map[string]string) { delete(d["sample"], "Items") }, want: "items (sample.Items) has no doc comment"},
	}
	for _, tc := range errorCases {
		t.Run("keys/"+tc.name, func(t *testing.T) {
			defaults, docs := sampleDefaults(), map[string]map[string]string{}
			for typ, fields := range sampleDocs {
				docs[typ] = map[string]string{}
				for f, d := range fields {
					docs[typ][f] = d
				}
			}
			if tc.defaults != nil {
				tc.defaults(defaults)
			}
			if tc.docs != nil {
				tc.docs(docs)
			}
			_, err := docgen.ConfigKeys(reflect.TypeFor[sample](), opts(defaults, docs))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestFieldDocs(t *testing.T) {
	dir := t.TempDir()
	src := "package p\n\ntype T struct {\n\t// A is documented\n\t// on two lines.\n\tA int\n\tB int // B has a line comment.\n\tC int\n}\n"
	if err := os.WriteFile(filepath.Join(dir, "p.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "p_test.go"), []byte("package p\n\ntype U struct {\n\t// X is a test type.\n\tX int\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	docs, err := docgen.FieldDocs(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]string{"T": {"A": "A is documented\non two lines.\n", "B": "B has a line comment.\n", "C": ""}}
	if !reflect.DeepEqual(docs, want) {
		t.Errorf("docs %q, want %q", docs, want)
	}
}

func TestCommands(t *testing.T) {
	root := &cobra.Command{Use: "tool"}
	root.PersistentFlags().String("config", "", "config file")
	parent := &cobra.Command{Use: "db", Short: "database commands", Long: "Manage the database."}
	parent.PersistentFlags().Bool("dry-run", false, "change nothing")
	up := &cobra.Command{Use: "up [--to N]", Short: "apply", Run: func(*cobra.Command, []string) {}}
	up.Flags().IntP("to", "t", 0, "stop after `N`")
	parent.AddCommand(up, &cobra.Command{Use: "secret", Hidden: true, Run: func(*cobra.Command, []string) {}})
	root.AddCommand(parent)
	got := docgen.Commands(root)
	want := "### Global flags\n\nEvery command takes these (the persistent flags of `tool`).\n\n" +
		"| flag | type | default | meaning |\n|---|---|---|---|\n" +
		"| `--config` | string |  | config file |\n" +
		"\n### `tool db`\n\nDatabase commands.\n\n```text\ntool db\n\nManage the database.\n```\n" +
		"\nSubcommands: `up`.\n\n" +
		"| flag | type | default | meaning |\n|---|---|---|---|\n" +
		"| `--dry-run` | bool |  | change nothing |\n" +
		"\n### `tool db up`\n\nApply.\n\n```text\ntool db up [--to N] [flags]\n```\n\n" +
		"| flag | type | default | meaning |\n|---|---|---|---|\n" +
		"| `-t, --to` | int | `0` | stop after `N` |\n"
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestMetricFamilies(t *testing.T) {
	newRegistry := func() (*prometheus.Registry, *prometheus.CounterVec) {
		reg := prometheus.NewRegistry()
		vec := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "app_requests_total", Help: `Requests by "code".`}, []string{"tenant", "code"})
		reg.MustRegister(vec,
			prometheus.NewGauge(prometheus.GaugeOpts{Name: "app_up", Help: "Whether it runs."}),
			prometheus.NewHistogram(prometheus.HistogramOpts{Name: "app_wait_seconds", Help: "Waits."}),
			prometheus.NewGauge(prometheus.GaugeOpts{Name: "other_thing", Help: "Not ours."}))
		return reg, vec
	}
	t.Run("metrics/unobserved vector", func(t *testing.T) {
		reg, _ := newRegistry()
		_, err := docgen.MetricFamilies(reg, "app_")
		if err == nil || !strings.Contains(err.Error(), "app_requests_total is registered but has no series") {
			t.Errorf("error %v, want one naming app_requests_total", err)
		}
	})
	t.Run("metrics/complete", func(t *testing.T) {
		reg, vec := newRegistry()
		vec.WithLabelValues("a", "200").Inc()
		got, err := docgen.MetricFamilies(reg, "app_")
		if err != nil {
			t.Fatal(err)
		}
		want := []docgen.MetricFamily{
			{Name: "app_requests_total", Type: "counter", Help: `Requests by "code".`, Labels: []string{"tenant", "code"}},
			{Name: "app_up", Type: "gauge", Help: "Whether it runs."},
			{Name: "app_wait_seconds", Type: "histogram", Help: "Waits."},
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("families %+v, want %+v", got, want)
		}
		table := docgen.MetricsTable(got)
		if !strings.Contains(table, "| `app_requests_total` | counter | `tenant`, `code` | Requests by \"code\". |\n") {
			t.Errorf("table:\n%s", table)
		}
	})
	t.Run("metrics/gather error", func(t *testing.T) {
		reg, vec := newRegistry()
		vec.WithLabelValues("a", "200").Inc()
		if err := reg.Register(failing{}); err != nil {
			t.Fatal(err)
		}
		if _, err := docgen.MetricFamilies(reg, "app_"); err == nil || !strings.Contains(err.Error(), "broken") {
			t.Errorf("error %v, want the gather error", err)
		}
	})
}

// failing is a collector whose every collection fails.
type failing struct{}

var failingDesc = prometheus.NewDesc("app_failing", "Fails.", nil, nil)

func (failing) Describe(ch chan<- *prometheus.Desc) { ch <- failingDesc }
func (failing) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.NewInvalidMetric(failingDesc, errors.New("broken"))
}
