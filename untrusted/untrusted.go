// Package untrusted makes text that came from outside — an event, an API
// answer, a header — safe to put in a header, a log line or a terminal:
// one line, no control characters (C0 or C1), no bidirectional-text
// controls that could make a line read other than it is, and bounded.
package untrusted

import (
	"bytes"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Ellipsis marks text that was cut.
const Ellipsis = "…"

// Line returns s as one safe line of at most n bytes, the ellipsis
// included when cut: every unsafe character becomes a space, and
// surrounding white space is trimmed.
func Line(s string, n int) string {
	if strings.IndexFunc(s, Unsafe) >= 0 {
		s = strings.Map(func(r rune) rune {
			if Unsafe(r) {
				return ' '
			}
			return r
		}, s)
	}
	return strings.TrimSpace(Cut(s, n))
}

// Chars is Line counting characters, not bytes: what records keep is
// bounded in characters (SPEC §5: "single lines of at most 256
// characters"), what a log line holds in bytes (§10).
func Chars(s string, n int) string {
	s = Line(s, 4*n) // a character is at most 4 bytes: Line cuts nothing that fits
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	cut, i := 0, 0
	for i = range s {
		if cut == max(n-1, 0) {
			break
		}
		cut++
	}
	return strings.TrimSpace(s[:i] + Ellipsis)
}

// Cut shortens s to at most n bytes, on a character boundary, the
// ellipsis that marks the cut included (so a limit of n characters holds
// too); s is returned as it is when it fits.
func Cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := max(n-len(Ellipsis), 0)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + Ellipsis
}

// Unsafe reports whether r must not reach a terminal or a header as it is:
// control characters (C0, DEL, C1), line and paragraph separators, and the
// bidirectional-text controls.
func Unsafe(r rune) bool {
	switch {
	case unicode.IsControl(r), r == utf8.RuneError:
		return true
	case r == '\u061c', r == '\u200e', r == '\u200f', r == '\u2028', r == '\u2029':
		return true
	case r >= '\u202a' && r <= '\u202e', r >= '\u2066' && r <= '\u2069':
		return true
	}
	return false
}

// EscapeJSON rewrites every unsafe character of encoded JSON as a \uXXXX
// escape. encoding/json leaves C1 and bidirectional controls raw, and they
// would reach a terminal that way; they can only stand inside strings, where
// the escape means the same character.
func EscapeJSON(b []byte) []byte {
	if bytes.IndexFunc(b, Unsafe) < 0 {
		return b
	}
	out := make([]byte, 0, len(b)+32)
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		if Unsafe(r) {
			out = fmt.Appendf(out, `\u%04x`, r)
		} else {
			out = append(out, b[:n]...)
		}
		b = b[n:]
	}
	return out
}
