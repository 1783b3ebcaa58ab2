package notify

import (
	"sort"
	"strings"
)

// The lexer follows PostgreSQL's scanner closely enough to find tokens
// outside strings, comments and quoted identifiers: '...' (and E'...'
// with backslash escapes), "..." identifiers, $tag$ quoting, -- and nested
// /* */ comments. Where it could disagree with the server (a client that
// turned standard_conforming_strings off, say) the worst outcome is a
// channel left unprefixed, whose notifications the proxy then drops.

type tokenKind uint8

const (
	tokOther tokenKind = iota
	tokIdent
	tokQuotedIdent
	tokString
	tokSemicolon
	tokLParen
	tokRParen
	tokComma
)

type token struct {
	kind       tokenKind
	start, end int
}

func isIdentStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= 0x80
}

func isIdentCont(c byte) bool {
	return isIdentStart(c) || c >= '0' && c <= '9' || c == '$'
}

// lex splits sql into tokens; comments and whitespace are dropped.
func lex(sql []byte) []token {
	var toks []token
	n := len(sql)
	for i := 0; i < n; {
		c := sql[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
		case c == '-' && i+1 < n && sql[i+1] == '-':
			for i < n && sql[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < n && sql[i+1] == '*':
			depth := 0
			for i < n {
				if sql[i] == '/' && i+1 < n && sql[i+1] == '*' {
					depth++
					i += 2
				} else if sql[i] == '*' && i+1 < n && sql[i+1] == '/' {
					depth--
					i += 2
					if depth == 0 {
						break
					}
				} else {
					i++
				}
			}
		case c == '\'':
			end := skipString(sql, i, false)
			toks = append(toks, token{tokString, i, end})
			i = end
		case c == '"':
			j := skipQuotedIdent(sql, i)
			toks = append(toks, token{tokQuotedIdent, i, j})
			i = j
		case c == '$':
			if end, ok := skipDollar(sql, i); ok {
				toks = append(toks, token{tokString, i, end})
				i = end
				continue
			}
			j := i + 1
			for j < n && sql[j] >= '0' && sql[j] <= '9' {
				j++
			}
			toks = append(toks, token{tokOther, i, j})
			i = j
		case isIdentStart(c):
			j := i + 1
			for j < n && isIdentCont(sql[j]) {
				j++
			}
			if j == i+1 && (c == 'u' || c == 'U') && j+1 < n && sql[j] == '&' && (sql[j+1] == '"' || sql[j+1] == '\'') {
				// U&"..." and U&'...': Unicode escapes, which the rewriter
				// leaves alone (see the package comment).
				var end int
				if sql[j+1] == '\'' {
					end = skipString(sql, j+1, false)
				} else {
					end = skipQuotedIdent(sql, j+1)
				}
				toks = append(toks, token{tokOther, i, end})
				i = end
				continue
			}
			if j < n && sql[j] == '\'' && j == i+1 {
				// E'...', B'...', X'...', N'...': a string with a prefix.
				end := skipString(sql, j, c == 'e' || c == 'E')
				toks = append(toks, token{tokString, i, end})
				i = end
				continue
			}
			toks = append(toks, token{tokIdent, i, j})
			i = j
		case c >= '0' && c <= '9':
			j := i + 1
			for j < n && (sql[j] >= '0' && sql[j] <= '9' || sql[j] == '.') {
				j++
			}
			toks = append(toks, token{tokOther, i, j})
			i = j
		default:
			k := tokOther
			switch c {
			case ';':
				k = tokSemicolon
			case '(':
				k = tokLParen
			case ')':
				k = tokRParen
			case ',':
				k = tokComma
			}
			toks = append(toks, token{k, i, i + 1})
			i++
		}
	}
	return toks
}

// skipQuotedIdent returns the end of the quoted identifier starting at i.
func skipQuotedIdent(sql []byte, i int) int {
	for j := i + 1; j < len(sql); j++ {
		if sql[j] == '"' {
			if j+1 < len(sql) && sql[j+1] == '"' {
				j++
				continue
			}
			return j + 1
		}
	}
	return len(sql)
}

// skipString returns the end of the string literal whose quote is at i.
func skipString(sql []byte, i int, backslash bool) int {
	n := len(sql)
	j := i + 1
	for j < n {
		switch sql[j] {
		case '\\':
			if backslash {
				j += 2
				continue
			}
		case '\'':
			if j+1 < n && sql[j+1] == '\'' {
				j += 2
				continue
			}
			return j + 1
		}
		j++
	}
	return n
}

// skipDollar returns the end of the dollar-quoted string starting at i, if
// one starts there.
func skipDollar(sql []byte, i int) (int, bool) {
	n := len(sql)
	j := i + 1
	if j < n && sql[j] != '$' {
		if !isIdentStart(sql[j]) {
			return 0, false
		}
		for j < n && isIdentCont(sql[j]) && sql[j] != '$' {
			j++
		}
		if j >= n || sql[j] != '$' {
			return 0, false
		}
	}
	if j >= n {
		return 0, false
	}
	tag := sql[i : j+1]
	body := sql[j+1:]
	if k := strings.Index(string(body), string(tag)); k >= 0 {
		return j + 1 + k + len(tag), true
	}
	return n, true
}

// edit replaces sql[start:end] with text.
type edit struct {
	start, end int
	text       string
}

// RewriteSQL moves the channels sql names into the namespace: the channel
// of LISTEN, UNLISTEN and NOTIFY statements (at the start of a statement
// or of a rule action) and the first argument of pg_notify calls. It
// appends the result to dst and reports whether anything changed.
func (n *Namespace) RewriteSQL(dst, sql []byte) ([]byte, bool) {
	toks := lex(sql)
	var edits []edit
	word := func(t token) string {
		if t.kind != tokIdent {
			return ""
		}
		return strings.ToLower(string(sql[t.start:t.end]))
	}
	ruleAction := func(w string) bool { return w == "do" || w == "also" || w == "instead" }
	for i, t := range toks {
		w := word(t)
		switch w {
		case "listen", "unlisten", "notify":
			starts := i == 0 || toks[i-1].kind == tokSemicolon || ruleAction(word(toks[i-1])) ||
				toks[i-1].kind == tokLParen && i >= 2 && ruleAction(word(toks[i-2]))
			if !starts || i+1 >= len(toks) {
				continue
			}
			ch := toks[i+1]
			var name string
			switch ch.kind {
			case tokIdent:
				name = downcase(string(sql[ch.start:ch.end]))
			case tokQuotedIdent:
				if ch.end-ch.start < 2 || sql[ch.end-1] != '"' {
					continue
				}
				name = strings.ReplaceAll(string(sql[ch.start+1:ch.end-1]), `""`, `"`)
			default:
				continue
			}
			edits = append(edits, edit{ch.start, ch.end, quoteIdent(n.prefix + name)})
		default:
			isCall := w == "pg_notify" || t.kind == tokQuotedIdent && string(sql[t.start:t.end]) == `"pg_notify"`
			if !isCall || i+1 >= len(toks) || toks[i+1].kind != tokLParen {
				continue
			}
			depth := 0
		args:
			for k := i + 2; k < len(toks); k++ {
				switch toks[k].kind {
				case tokLParen:
					depth++
					continue
				case tokRParen:
					depth--
					if depth >= 0 {
						continue
					}
				case tokComma:
					if depth > 0 {
						continue
					}
					open := toks[i+1].end
					edits = append(edits,
						edit{open, open, "'" + n.prefix + "' || ("},
						edit{toks[k].start, toks[k].start, ")::text"})
				default:
					continue
				}
				break args
			}
		}
	}
	if len(edits) == 0 {
		return dst, false
	}
	sort.SliceStable(edits, func(a, b int) bool { return edits[a].start < edits[b].start })
	pos := 0
	for _, e := range edits {
		dst = append(dst, sql[pos:e.start]...)
		dst = append(dst, e.text...)
		pos = e.end
	}
	return append(dst, sql[pos:]...), true
}

// downcase folds an unquoted identifier as PostgreSQL does: ASCII only.
func downcase(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
