package topology_test

import (
	"strings"
	"testing"

	"github.com/vitalproxy/vitalproxy/proxy/topology"
)

func TestParseHosts(t *testing.T) {
	tests := []struct {
		name    string
		url     string
		extra   []string
		want    []string // host:port, in order
		tls     []int    // TLS attempts per host; nil: not checked
		wantErr string
	}{
		{name: "one host", url: "postgres://db:5433/app?sslmode=disable", want: []string{"db:5433"}, tls: []int{1}},
		{name: "default port", url: "postgres://db/app?sslmode=disable", want: []string{"db:5432"}},
		{name: "multi-host URL", url: "postgres://h1:5432,h2:5433/app?sslmode=disable", want: []string{"h1:5432", "h2:5433"}},
		{name: "prefer tries TLS then plain, per host", url: "postgres://h1:5432,h2:5433/app?sslmode=prefer",
			want: []string{"h1:5432", "h2:5433"}, tls: []int{2, 2}},
		{name: "keyword/value string", url: "host=h1,h2 port=5432,5433 dbname=app sslmode=disable", want: []string{"h1:5432", "h2:5433"}},
		{name: "extra hosts take the first port", url: "postgres://h1:6000/app?sslmode=disable",
			extra: []string{"h2", "h3:7000", "[::1]:5432", "::2"}, want: []string{"h1:6000", "h2:6000", "h3:7000", "[::1]:5432", "[::2]:6000"}},
		{name: "duplicates kept once", url: "postgres://h1:5432,h1:5432/app?sslmode=prefer", extra: []string{"h1:5432", "h2"},
			want: []string{"h1:5432", "h2:5432"}, tls: []int{2, 2}},
		{name: "empty URL", url: "", wantErr: "no upstream host"},
		{name: "bad port in URL", url: "postgres://h1:5432,h2:x/app", wantErr: "invalid port"},
		{name: "bad extra port", url: "postgres://h1/app", extra: []string{"h2:70000"}, wantErr: `upstream host "h2:70000": invalid port`},
		{name: "extra with a scheme", url: "postgres://h1/app", extra: []string{"postgres://h2"}, wantErr: "not a plain host"},
		{name: "extra with a comma", url: "postgres://h1/app", extra: []string{"h2,h3"}, wantErr: "not a plain host"},
		{name: "empty extra", url: "postgres://h1/app", extra: []string{""}, wantErr: "empty host"},
		{name: "empty extra host", url: "postgres://h1/app", extra: []string{":5432"}, wantErr: "empty host"},
		{name: "extra with a keyword/value URL", url: "host=h1", extra: []string{"h2"}, wantErr: "needs upstream.url to be a postgres:// URL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := topology.ParseHosts(tc.url, tc.extra)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, e := range got {
				names = append(names, e.String())
			}
			if strings.Join(names, " ") != strings.Join(tc.want, " ") {
				t.Fatalf("hosts %v, want %v", names, tc.want)
			}
			for i, n := range tc.tls {
				if len(got[i].TLS) != n {
					t.Errorf("%s: %d TLS attempts, want %d", names[i], len(got[i].TLS), n)
				}
			}
		})
	}
}

func TestParseHostsHidesPassword(t *testing.T) {
	_, err := topology.ParseHosts("postgres://u:sekrit@h1:x/app", nil)
	if err == nil || strings.Contains(err.Error(), "sekrit") {
		t.Fatalf("err = %v", err)
	}
}

func TestParseLSN(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"0/0", 0, true},
		{"16/B374D848", 0x16<<32 | 0xB374D848, true},
		{"FFFFFFFF/FFFFFFFF", 1<<64 - 1, true},
		{"", 0, false},
		{"16", 0, false},
		{"x/1", 0, false},
	}
	for _, tc := range tests {
		got, err := topology.ParseLSN(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseLSN(%q) = %d, %v", tc.in, got, err)
		}
	}
}
