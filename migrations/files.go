package migrations

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
)

// LatestVersion is the version of the newest embedded migration.
const LatestVersion int64 = 20251026000007

//go:embed sql/*.sql
var embedded embed.FS

// Embedded returns the migration files compiled into the binary, at the root
// of the returned file system.
func Embedded() fs.FS {
	sub, err := fs.Sub(embedded, "sql")
	if err != nil {
		panic(err) // the directory is embedded; this cannot happen
	}
	return sub
}

// File is one migration file.
type File struct {
	// Version is the numeric prefix of the name, e.g. 20251026000001.
	Version int64
	// Name is the file name, e.g. 20251026000001_create_tenants_table.sql.
	Name string
	// Checksum is the hex sha256 of Content.
	Checksum string
	// Content is the whole file.
	Content []byte
}

// UpSQL returns the file's Up section: what `migrate up` runs, and what may
// be re-run by hand with psql -f.
func (f File) UpSQL() string { up, _ := sections(f.Content); return up }

// DownSQL returns the file's Down section.
func (f File) DownSQL() string { _, down := sections(f.Content); return down }

// ReadFiles reads the *.sql migrations at the root of fsys, ordered by
// version.
func ReadFiles(fsys fs.FS) ([]File, error) {
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return nil, fmt.Errorf("list migrations: %w", err)
	}
	files := make([]File, 0, len(names))
	seen := map[int64]string{}
	for _, name := range names {
		prefix, _, ok := strings.Cut(path.Base(name), "_")
		v, err := strconv.ParseInt(prefix, 10, 64)
		if !ok || err != nil || v < 1 {
			return nil, fmt.Errorf("migration %s: name must start with a positive version number and an underscore", name)
		}
		if other, dup := seen[v]; dup {
			return nil, fmt.Errorf("migrations %s and %s share version %d", other, name, v)
		}
		seen[v] = name
		content, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", name, err)
		}
		sum := sha256.Sum256(content)
		files = append(files, File{Version: v, Name: path.Base(name), Checksum: hex.EncodeToString(sum[:]), Content: content})
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no migrations (*.sql) found")
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Version < files[j].Version })
	return files, nil
}

// sections splits a goose SQL file at its "-- +goose Up" and
// "-- +goose Down" annotations.
func sections(content []byte) (up, down string) {
	var cur *strings.Builder
	var u, d strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(content))
	sc.Buffer(make([]byte, 0, 64*1024), len(content)+1)
	for sc.Scan() {
		line := sc.Text()
		switch strings.TrimSpace(line) {
		case "-- +goose Up":
			cur = &u
			continue
		case "-- +goose Down":
			cur = &d
			continue
		}
		if cur != nil {
			cur.WriteString(line)
			cur.WriteByte('\n')
		}
	}
	return strings.TrimSpace(u.String()) + "\n", strings.TrimSpace(d.String()) + "\n"
}
