package config

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Error is a bad configuration value. Load returns it as a *Error.
//
// Error() is one line: the name the user set the value by — the flag
// ("--rate-limit") when it came from a flag, else the variable
// ("REVOKER_RATE_LIMIT") — then what is wrong, with the offending value
// quoted unless the value is (or may be) a secret:
//
//	REVOKER_RATE_LIMIT: "fast" is not a number
type Error struct {
	// Name is the flag (with its leading "--") or the variable.
	Name string
	// Problem says what is wrong. It never holds a secret.
	Problem string
}

func (e *Error) Error() string {
	return oneLine(e.Name + ": " + e.Problem)
}

// oneLine replaces line breaks and other control characters so that the
// message stays on one line whatever it holds.
func oneLine(s string) string {
	if !strings.ContainsFunc(s, unicode.IsControl) {
		return s
	}
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
}

// maxShown is how many bytes of a value an error message shows at most.
const maxShown = 120

// quote returns v Go-quoted for a message, cut short when it is long.
func quote(v string) string {
	if len(v) <= maxShown {
		return strconv.Quote(v)
	}
	cut := maxShown
	for cut > 0 && !utf8.RuneStart(v[cut]) {
		cut--
	}
	return strconv.Quote(v[:cut]) + "…"
}

// redactURL hides the user-information part (user:password@, token@) of a
// URL-like string so it can be shown in messages and logs, and its query
// and fragment (?token=…: a NATS URL has no use for them, and a secret put
// there is still a secret). It works on the text, so it also hides them in
// strings that do not parse as URLs, and it errs on the safe side:
// everything between the scheme and the last '@' is hidden, since a
// password may hold '/', and everything past the scheme when a '?' or '#'
// comes before that '@'.
func redactURL(s string) string {
	start := 0
	if i := strings.Index(s, "://"); i > 0 && validScheme(s[:i]) {
		start = i + 3 // not a "://" inside a token of a URL without a scheme
	}
	prefix, rest := s[:start], s[start:]
	at, q := strings.LastIndex(rest, "@"), strings.IndexAny(rest, "?#")
	if at >= 0 && q >= 0 && q < at {
		// A '?' or '#' before the last '@': a password holding one, or a
		// query holding an '@'. Either way nothing past the scheme is
		// sure to be no secret.
		return prefix + "[redacted]"
	}
	if at >= 0 {
		prefix, rest = prefix+"[redacted]@", rest[at+1:]
	}
	if q := strings.IndexAny(rest, "?#"); q >= 0 {
		rest = rest[:q] + "?[redacted]"
	}
	return prefix + rest
}

// validScheme reports whether s is a URL scheme: a letter, then letters,
// digits, '+', '-' or '.'.
func validScheme(s string) bool {
	for i, r := range s {
		letter := 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z'
		if !letter && (i == 0 || !('0' <= r && r <= '9' || r == '+' || r == '-' || r == '.')) {
			return false
		}
	}
	return s != ""
}

// splitSecret reports whether splitting the list s on ',' cut through a
// secret: an entry holding '@' with no scheme of its own is the rest of a
// password that held a ','.
func splitSecret(s string) bool {
	for _, p := range strings.Split(s, ",") {
		if i := strings.Index(p, "://"); strings.Contains(p, "@") && (i <= 0 || !validScheme(strings.TrimSpace(p[:i]))) {
			return true
		}
	}
	return false
}

// redactURLList applies redactURL to each entry of a comma-separated list,
// and hides the whole list when a ',' inside a secret may have split it:
// an entry that is no NATS URL may be a piece of one.
func redactURLList(s string) string {
	if !strings.ContainsAny(s, "@?#") {
		return s
	}
	if splitSecret(s) {
		return "[redacted]"
	}
	parts := strings.Split(s, ",")
	if len(parts) > 1 {
		for _, p := range parts {
			if why, _ := natsURLProblem(strings.TrimSpace(p)); why != "" {
				return "[redacted]"
			}
		}
	}
	for i, p := range parts {
		parts[i] = redactURL(p)
	}
	return strings.Join(parts, ",")
}
