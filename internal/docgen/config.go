package docgen

import (
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"
)

// Key is one configuration key.
type Key struct {
	Name    string // as written in the YAML file: pool.max_server_conns, users[].name
	Type    string // for people: string, duration, integer, ...
	Default string // as the loader applies it; empty for none
	Doc     string // from the field's doc comment, one paragraph
	// Leaf is false for a list or map of settings (users, tenants), whose
	// own keys follow it.
	Leaf bool
	// Repeated is true for keys inside a list or map entry, which have no
	// default and no environment variable.
	Repeated bool
}

// ConfigOptions say how to read a configuration struct.
type ConfigOptions struct {
	// Docs are the doc comments of the struct's fields and of the fields
	// of the types it uses, by type and field name (see FieldDocs).
	Docs map[string]map[string]string
	// Defaults maps every key that has one onto its default, as the loader
	// applies it.
	Defaults map[string]any
	// Secret is the type of secret strings, shown as "string (secret)".
	Secret reflect.Type
	// MapKeys names the placeholder of a map key in key names
	// (tenants → <slug>); other maps use <key>.
	MapKeys map[string]string
}

// ConfigKeys walks the struct type t the way the loader decodes it (the
// mapstructure tag names each key; nested structs are dotted, list entries
// read key[].field and map entries key.<placeholder>.field) and returns its
// keys in declaration order. It fails when a key has no doc comment or
// when the defaults and the keys disagree: every key outside lists and maps
// must have a default (the loader knows only keys with one, so only they
// can be set from the environment), and every default must name a key.
func ConfigKeys(t reflect.Type, opts ConfigOptions) ([]Key, error) {
	w := &keyWalker{opts: opts, docs: opts.Docs}
	w.walk(t, "", false)
	known := map[string]bool{}
	for _, k := range w.keys {
		known[k.Name] = true
	}
	var extra []string
	for name := range opts.Defaults {
		if !known[name] {
			extra = append(extra, name)
		}
	}
	sort.Strings(extra)
	for _, name := range extra {
		w.errs = append(w.errs, fmt.Errorf("default for %s, which is not a key of %s", name, t))
	}
	return w.keys, errors.Join(w.errs...)
}

type keyWalker struct {
	opts ConfigOptions
	docs map[string]map[string]string // type name → field name → doc
	keys []Key
	errs []error
}

var durationType = reflect.TypeFor[time.Duration]()

func (w *keyWalker) walk(t reflect.Type, prefix string, repeated bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag, _, _ := strings.Cut(f.Tag.Get("mapstructure"), ",")
		if tag == "-" {
			continue
		}
		where := t.Name() + "." + f.Name
		if tag == "" {
			w.errs = append(w.errs, fmt.Errorf("%s has no mapstructure tag", where))
			continue
		}
		name := prefix + tag
		doc := cleanDoc(f.Name, w.docs[t.Name()][f.Name])
		ft := f.Type
		switch {
		case ft.Kind() == reflect.Struct && ft != durationType:
			// A group of keys (upstream, pool, ...): documented by its own
			// keys.
			w.walk(ft, name+".", repeated)
			continue
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			w.add(where, Key{Name: name, Type: "list", Doc: doc, Repeated: repeated})
			w.walk(ft.Elem(), name+"[].", true)
			continue
		case ft.Kind() == reflect.Map && ft.Elem().Kind() == reflect.Struct:
			placeholder := w.opts.MapKeys[name]
			if placeholder == "" {
				placeholder = "<key>"
			}
			w.add(where, Key{Name: name, Type: "map", Doc: doc, Repeated: repeated})
			w.walk(ft.Elem(), name+"."+placeholder+".", true)
			continue
		}
		typ, err := w.typeName(ft)
		if err != nil {
			w.errs = append(w.errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		k := Key{Name: name, Type: typ, Doc: doc, Leaf: true, Repeated: repeated}
		if !repeated {
			d, ok := w.opts.Defaults[name]
			if !ok {
				w.errs = append(w.errs, fmt.Errorf("%s (%s) has no default: add it to the loader's defaults, or it cannot be set from the environment", name, where))
			}
			k.Default = formatDefault(d)
		}
		w.add(where, k)
	}
}

func (w *keyWalker) add(where string, k Key) {
	if k.Doc == "" {
		w.errs = append(w.errs, fmt.Errorf("%s (%s) has no doc comment", k.Name, where))
	}
	w.keys = append(w.keys, k)
}

func (w *keyWalker) typeName(t reflect.Type) (string, error) {
	switch {
	case w.opts.Secret != nil && t == w.opts.Secret:
		return "string (secret)", nil
	case t == durationType:
		return "duration", nil
	}
	switch t.Kind() {
	case reflect.String:
		return "string", nil
	case reflect.Bool:
		return "boolean", nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "integer", nil
	case reflect.Slice:
		if t.Elem().Kind() == reflect.String {
			return "list of strings", nil
		}
	}
	return "", fmt.Errorf("no documented name for type %s", t)
}

// formatDefault renders a default as it would be written in the file.
func formatDefault(v any) string {
	switch d := v.(type) {
	case nil:
		return ""
	case string:
		return d
	case []string:
		return "[" + strings.Join(d, ", ") + "]"
	default:
		return fmt.Sprint(d)
	}
}

// FieldDocs parses the non-test Go files of the package in dir and returns
// the doc comment (or else the line comment) of every field of every struct
// type, by type and field name.
func FieldDocs(dir string) (map[string]map[string]string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	fset := token.NewFileSet()
	out := map[string]map[string]string{}
	for _, path := range files {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ParseComments)
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", path, err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			ts, ok := n.(*ast.TypeSpec)
			if !ok {
				return true
			}
			st, ok := ts.Type.(*ast.StructType)
			if !ok {
				return false
			}
			fields := map[string]string{}
			for _, fl := range st.Fields.List {
				text := fl.Doc.Text()
				if text == "" {
					text = fl.Comment.Text()
				}
				for _, n := range fl.Names {
					fields[n.Name] = text
				}
			}
			out[ts.Name.Name] = fields
			return false
		})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no struct types in %s", dir)
	}
	return out, nil
}

// cleanDoc turns a field's doc comment into one paragraph about its key:
// the Go name that starts it ("Listen is the TCP address ...") is dropped.
func cleanDoc(field, text string) string {
	s := strings.Join(strings.Fields(text), " ")
	rest, ok := strings.CutPrefix(s, field+" ")
	if !ok {
		rest, ok = strings.CutPrefix(s, field+", ")
	}
	if !ok {
		return s
	}
	for _, verb := range []string{"is ", "are "} {
		if r, ok := strings.CutPrefix(rest, verb); ok {
			rest = r
			break
		}
	}
	if rest == "" {
		return s
	}
	return strings.ToUpper(rest[:1]) + rest[1:]
}

// ConfigTable renders keys as a Markdown table. Key names that appear in a
// description are set as code.
func ConfigTable(keys []Key) string {
	names := make([]string, 0, len(keys))
	for _, k := range keys {
		names = append(names, k.Name)
	}
	var b strings.Builder
	b.WriteString("| key | type | default | meaning |\n|---|---|---|---|\n")
	for _, k := range keys {
		def := ""
		if k.Default != "" {
			def = code(k.Default)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", code(k.Name), k.Type, def, prose(k.Doc, names))
	}
	return b.String()
}

// code sets s as a Markdown code span.
func code(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	if strings.Contains(s, "`") {
		return "`` " + s + " ``"
	}
	return "`" + s + "`"
}

// prose makes text safe in a Markdown table cell: outside code spans, <
// and > are escaped, and flags (--listen) and the dotted or underscored
// words of codeWords (pool.mode, role_secret) are set as code.
func prose(text string, codeWords []string) string {
	parts := strings.Split(text, "`")
	for i := 0; i < len(parts); i += 2 {
		if i == len(parts)-1 && len(parts)%2 == 0 {
			break // an unmatched backtick: leave the rest alone
		}
		words := strings.Split(parts[i], " ")
		for j, w := range words {
			core := strings.TrimRight(w, ".,;:)")
			lead := strings.TrimLeft(core, "(")
			isKey := strings.ContainsAny(lead, "._") && slices.Contains(codeWords, lead)
			if lead != "" && (strings.HasPrefix(lead, "--") || isKey) {
				start := len(w) - len(strings.TrimLeft(w, "("))
				words[j] = w[:start] + "`" + lead + "`" + w[start+len(lead):]
				continue
			}
			words[j] = strings.NewReplacer("<", "&lt;", ">", "&gt;").Replace(w)
		}
		parts[i] = strings.Join(words, " ")
	}
	return strings.ReplaceAll(strings.Join(parts, "`"), "|", `\|`)
}
