package docgen

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
)

// UpdateEnv names the environment variable that makes Sync write the
// documents instead of comparing them.
const UpdateEnv = "VITALPROXY_UPDATE_DOCS"

// RegenerateCommand is the command that rewrites every generated section.
const RegenerateCommand = "go generate ./internal/docgen"

// Marker lines around a generated section.
const (
	beginMarker = "<!-- BEGIN GENERATED: "
	endMarker   = "<!-- END GENERATED: "
)

// ErrNoSection means a document lacks the marker lines of a section.
var ErrNoSection = errors.New("no generated section")

// Splice returns doc with the generated section name replaced by body. The
// section is the text between a line starting with
// "<!-- BEGIN GENERATED: name" and the line "<!-- END GENERATED: name -->";
// both marker lines are kept as they are.
func Splice(doc []byte, name, body string) ([]byte, error) {
	begin, end, err := sectionBounds(doc, name)
	if err != nil {
		return nil, err
	}
	if body != "" && !strings.HasSuffix(body, "\n") {
		body += "\n"
	}
	out := make([]byte, 0, len(doc)-(end-begin)+len(body))
	out = append(out, doc[:begin]...)
	out = append(out, body...)
	return append(out, doc[end:]...), nil
}

// Section returns the current text of section name in doc.
func Section(doc []byte, name string) (string, error) {
	begin, end, err := sectionBounds(doc, name)
	if err != nil {
		return "", err
	}
	return string(doc[begin:end]), nil
}

// sectionBounds returns the byte range between the end of section name's
// begin line and the start of its end line.
func sectionBounds(doc []byte, name string) (begin, end int, err error) {
	open := []byte(beginMarker + name)
	closing := []byte(endMarker + name + " -->")
	begin, end = -1, -1
	pos := 0
	for _, line := range bytes.SplitAfter(doc, []byte("\n")) {
		trimmed := bytes.TrimRight(line, "\r\n")
		switch {
		case bytes.HasPrefix(trimmed, open) && len(trimmed) > len(open) && (trimmed[len(open)] == ' ' || trimmed[len(open)] == '.'):
			if begin >= 0 {
				return 0, 0, fmt.Errorf("section %q: two begin markers", name)
			}
			begin = pos + len(line)
		case bytes.Equal(trimmed, closing):
			if begin < 0 {
				return 0, 0, fmt.Errorf("section %q: end marker before its begin marker", name)
			}
			if end >= 0 {
				return 0, 0, fmt.Errorf("section %q: two end markers", name)
			}
			end = pos
		}
		pos += len(line)
	}
	if begin < 0 || end < 0 {
		return 0, 0, fmt.Errorf("section %q: %w (want a line %q...%q and a line %q)",
			name, ErrNoSection, beginMarker+name, " -->", string(closing))
	}
	return begin, end, nil
}

// Sync compares section name of the document at path with body. When they
// differ it returns an error that shows the first difference and names the
// command that regenerates the documents, or, with VITALPROXY_UPDATE_DOCS=1
// in the environment, rewrites the section and returns nil.
func Sync(path, name, body string) error {
	doc, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	updated, err := Splice(doc, name, body)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if bytes.Equal(doc, updated) {
		return nil
	}
	if os.Getenv(UpdateEnv) == "1" {
		st, err := os.Stat(path)
		if err != nil {
			return err
		}
		return os.WriteFile(path, updated, st.Mode().Perm())
	}
	current, _ := Section(doc, name)
	want, _ := Section(updated, name)
	return fmt.Errorf("%s: the generated section %q does not match the code; run `%s` and commit the result\n%s",
		path, name, RegenerateCommand, FirstDifference(current, want))
}

// FirstDifference describes the first line where got and want differ.
func FirstDifference(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < max(len(g), len(w)); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if i >= len(g) || i >= len(w) || gl != wl {
			return fmt.Sprintf("line %d of the section:\n  document: %q\n  code:     %q", i+1, gl, wl)
		}
	}
	return "no difference"
}
