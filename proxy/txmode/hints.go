package txmode

// Hints from a statement's text about session state it may leave behind on
// the backend. They are heuristics over words (a word inside a string
// literal counts too, which only costs an extra reset), and they cannot see
// into functions: see the package documentation.
const (
	// hintReset: the statement may change settings without a SET command
	// tag (set_config). The backend gets RESET ALL when released.
	hintReset uint8 = 1 << iota
	// hintDiscard: the statement may leave session state that outlives
	// the transaction (temporary objects, WITH HOLD cursors, session
	// advisory locks, LISTEN, SQL-level PREPARE). The backend gets DISCARD
	// ALL when released.
	hintDiscard
)

var identChar = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	t['_'] = true
	t['$'] = true
	for c := 0x80; c < 0x100; c++ {
		t[c] = true
	}
	return t
}()

// scanHints returns the hints for one statement text.
func scanHints(q []byte) uint8 {
	var flags uint8
	var word [32]byte
	for i := 0; i < len(q); {
		if !identChar[q[i]] {
			i++
			continue
		}
		j := i
		for j < len(q) && identChar[q[j]] {
			j++
		}
		if n := j - i; n >= 4 && n <= len(word) {
			for k := 0; k < n; k++ {
				ch := q[i+k]
				if ch >= 'A' && ch <= 'Z' {
					ch += 'a' - 'A'
				}
				word[k] = ch
			}
			flags |= wordHint(word[:n])
		}
		i = j
	}
	return flags
}

func wordHint(w []byte) uint8 {
	switch string(w) {
	case "temp", "temporary", "hold", "listen", "prepare",
		"pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared":
		return hintDiscard
	case "set_config":
		return hintReset
	}
	if len(w) >= 7 && string(w[:7]) == "pg_temp" {
		return hintDiscard
	}
	return 0
}
