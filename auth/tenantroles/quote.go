package tenantroles

import (
	"errors"
	"strings"

	"github.com/jackc/pgx/v5"
)

// quoteIdent quotes a role or other identifier for use in DDL.
func quoteIdent(name string) string { return pgx.Identifier{name}.Sanitize() }

// errNUL is returned for a literal containing a NUL byte, which PostgreSQL
// cannot store in text.
var errNUL = errors.New("string literal contains a NUL byte")

// quoteLiteral quotes s as an SQL string literal, the way libpq's
// PQescapeLiteral does: quotes are doubled and, when s holds a backslash,
// the E'...' form with doubled backslashes is used so the result reads the same
// whatever standard_conforming_strings is.
func quoteLiteral(s string) (string, error) {
	if strings.IndexByte(s, 0) >= 0 {
		return "", errNUL
	}
	q := "'" + strings.ReplaceAll(s, "'", "''") + "'"
	if strings.Contains(s, `\`) {
		q = " E" + strings.ReplaceAll(q, `\`, `\\`)
	}
	return q, nil
}
