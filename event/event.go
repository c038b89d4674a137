// Package event is the contract's "revoke key" event (SPEC §2): its fields,
// limits and identifier rule, the strict decoder every reader of events
// uses, and the names of the outcomes and dead-letter reasons that metrics,
// records and commands are all built from.
package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/revoker/revoker/cloudflare"
)

// Limits of an event (SPEC §2).
const (
	MaxBytes          = 64 << 10
	MaxDepth          = 32
	MaxReasonRunes    = 1024
	MaxRequesterRunes = 256
	// MaxRecordedID is how many characters of an event id records and logs keep
	// (SPEC §10): a reader compares an id cut as much.
	MaxRecordedID = 256
)

// Event is one validated "revoke key" request.
type Event struct {
	AccountID   string    `json:"account_id"`
	KeyID       string    `json:"key_id"`
	Reason      string    `json:"reason,omitempty"`
	RequestedBy string    `json:"requested_by,omitempty"`
	RequestedAt time.Time `json:"requested_at,omitzero"`
}

// ErrInvalid wraps every reason an event is refused.
var ErrInvalid = errors.New("invalid event")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// Decode parses and validates body. An event it refuses holds only those
// of its ids that pass their rule, and only when the body is sound JSON.
// It is strict on purpose: the body
// must be exactly one JSON object of valid UTF-8, with no field name repeated
// in any object and no nesting deeper than MaxDepth. Field names match
// exactly (encoding/json would also take "ACCOUNT_ID"), so there is one
// reading of which key an event names. Nothing from the body reaches a URL
// unless it passed its rule here.
func Decode(body []byte) (Event, error) {
	var ev Event
	if len(body) > MaxBytes {
		return ev, invalid("body is %d bytes, more than %d", len(body), MaxBytes)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return ev, invalid("body is empty")
	}
	if !utf8.Valid(body) {
		return ev, invalid("body is not valid UTF-8")
	}
	fields, err := scanObject(body, knownFields[:], MaxDepth)
	if err != nil {
		return ev, err
	}
	return decodeFields(fields)
}

// decodeFields reads the event from the raw values of its known fields.
// An event it refuses still holds those of its ids that pass their rule
// (the others empty), so that its record is filed under its key (SPEC §5a).
func decodeFields(fields [][]byte) (Event, error) {
	ev, err := readFields(fields)
	if err != nil {
		ev = Event{AccountID: validID(fields[0]), KeyID: validID(fields[1])}
	}
	return ev, err
}

// validID is the identifier raw holds, or "" unless it is a JSON string
// that passes the identifier rule.
func validID(raw []byte) string {
	var s string
	if raw == nil || raw[0] != '"' || json.Unmarshal(raw, &s) != nil || !cloudflare.ValidIdentifier(s) {
		return ""
	}
	return s
}

// readFields reads and checks the event's fields.
func readFields(fields [][]byte) (Event, error) {
	var ev Event
	var seen [len(knownFields)]bool
	for i, name := range knownFields {
		raw := fields[i]
		if raw == nil {
			continue
		}
		if raw[0] != '"' {
			return ev, invalid("%s must be a string, got %s", name, jsonKind(raw))
		}
		s := string(raw[1 : len(raw)-1])
		if bytes.IndexByte(raw, '\\') >= 0 {
			if err := json.Unmarshal(raw, &s); err != nil {
				return ev, invalid("%s: %v", name, err)
			}
		}
		seen[i] = true
		switch name {
		case "account_id":
			ev.AccountID = s
		case "key_id":
			ev.KeyID = s
		case "reason":
			ev.Reason = s
		case "requested_by":
			ev.RequestedBy = s
		case "requested_at":
			t, err := parseRFC3339(s)
			if err != nil {
				return ev, invalid("requested_at must be an RFC 3339 time, got %s", quote(s))
			}
			ev.RequestedAt = t
		}
	}
	if !seen[0] {
		return ev, invalid("account_id is missing")
	}
	if !seen[1] {
		return ev, invalid("key_id is missing")
	}
	return ev, ev.Validate()
}

// Validate checks the field rules of SPEC §2.
func (ev Event) Validate() error {
	if !cloudflare.ValidIdentifier(ev.AccountID) {
		return invalid("account_id must be 1-32 characters of [A-Za-z0-9], got %s", quote(ev.AccountID))
	}
	if !cloudflare.ValidIdentifier(ev.KeyID) {
		return invalid("key_id must be 1-32 characters of [A-Za-z0-9], got %s", quote(ev.KeyID))
	}
	if n := utf8.RuneCountInString(ev.Reason); n > MaxReasonRunes {
		return invalid("reason is %d characters, more than %d", n, MaxReasonRunes)
	}
	if n := utf8.RuneCountInString(ev.RequestedBy); n > MaxRequesterRunes {
		return invalid("requested_by is %d characters, more than %d", n, MaxRequesterRunes)
	}
	return nil
}

// quote shows a bad value in an error: quoted, and cut short so an error
// line stays one readable line.
func quote(s string) string {
	const max = 48
	if utf8.RuneCountInString(s) > max {
		s = string([]rune(s)[:max]) + "…"
	}
	return fmt.Sprintf("%q", s)
}

// jsonKind names the kind of a raw JSON value for an error.
func jsonKind(raw []byte) string {
	switch raw[0] {
	case 'n':
		return "null"
	case 't', 'f':
		return "a boolean"
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	}
	return "a number"
}

// knownFields are the event's fields; the scanner keeps the raw values of
// these alone, so unknown fields cost nothing to skip.
var knownFields = [...]string{"account_id", "key_id", "reason", "requested_by", "requested_at"}

// scanObject checks the structural rules of a body and returns the raw
// JSON value of each top-level field named in want (nil when absent). It
// first lets json.Valid judge the syntax (including "exactly one value"),
// then walks the bytes once, so it only ever reads well-formed JSON.
func scanObject(body []byte, want []string, maxDepth int) ([][]byte, error) {
	if !json.Valid(body) {
		var v any
		err := json.Unmarshal(body, &v) // only for its description of the fault
		if err == nil {
			err = errors.New("not valid JSON")
		}
		return nil, invalid("not JSON: %v", err)
	}
	sc := scanner{b: body, maxDepth: maxDepth}
	sc.space()
	if sc.b[sc.i] != '{' {
		return nil, invalid("body must be a JSON object")
	}
	top := make([][]byte, len(want))
	if err := sc.object(1, want, top); err != nil {
		return nil, err
	}
	return top, nil
}

// scanner walks JSON that json.Valid has accepted.
type scanner struct {
	b        []byte
	i        int
	maxDepth int // the deepest nesting allowed; the body is level 1
}

func (sc *scanner) space() {
	for sc.i < len(sc.b) {
		switch sc.b[sc.i] {
		case ' ', '\t', '\n', '\r':
			sc.i++
		default:
			return
		}
	}
}

// str reads the string at sc.i and returns it quoted, as in the body.
func (sc *scanner) str() (quoted []byte, escaped bool) {
	start := sc.i
	sc.i++
	for {
		switch sc.b[sc.i] {
		case '\\':
			escaped = true
			sc.i += 2
		case '"':
			sc.i++
			return sc.b[start:sc.i], escaped
		default:
			sc.i++
		}
	}
}

// errLoneSurrogate refuses an escape that names half a character:
// encoding/json would read it as U+FFFD, so two different names would
// read alike and text would be kept other than it was sent.
var errLoneSurrogate = invalid("a \\u escape names half a character (a lone surrogate): not valid UTF-8")

// loneSurrogate reports whether the quoted JSON string holds a \u escape
// of a surrogate that is not one half of a high-low pair.
func loneSurrogate(quoted []byte) bool {
	for i := 0; i < len(quoted); i++ {
		if quoted[i] != '\\' {
			continue
		}
		i++
		if quoted[i] != 'u' {
			continue
		}
		r := hex4(quoted[i+1 : i+5])
		i += 4
		switch {
		case r >= 0xDC00 && r <= 0xDFFF:
			return true // a low half with no high half before it
		case r >= 0xD800 && r <= 0xDBFF:
			if i+6 >= len(quoted) || quoted[i+1] != '\\' || quoted[i+2] != 'u' {
				return true
			}
			if lo := hex4(quoted[i+3 : i+7]); lo < 0xDC00 || lo > 0xDFFF {
				return true
			}
			i += 6
		}
	}
	return false
}

// hex4 is the value of four hex digits, which json.Valid has checked.
func hex4(b []byte) rune {
	var r rune
	for _, c := range b {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		default:
			r |= rune(c - 'A' + 10)
		}
	}
	return r
}

// object reads the object at sc.i, nested depth deep (the body is 1); top,
// when not nil, receives the raw values of the fields named in want.
func (sc *scanner) object(depth int, want []string, top [][]byte) error {
	if depth > sc.maxDepth {
		return invalid("nested deeper than %d levels", MaxDepth)
	}
	sc.i++ // {
	var names fieldNames
	for {
		sc.space()
		if sc.b[sc.i] == '}' {
			sc.i++
			return nil
		}
		quoted, escaped := sc.str()
		key := quoted[1 : len(quoted)-1]
		if escaped && loneSurrogate(quoted) {
			return errLoneSurrogate
		}
		if escaped {
			// "a" and "\u0061" are the same name.
			var s string
			if err := json.Unmarshal(quoted, &s); err != nil {
				return invalid("field name: %v", err)
			}
			key = []byte(s)
		}
		if !names.add(key) {
			return invalid("field %s appears twice", quote(string(key)))
		}
		sc.space()
		sc.i++ // :
		sc.space()
		start := sc.i
		if err := sc.value(depth); err != nil {
			return err
		}
		if top != nil {
			for i, k := range want {
				if string(key) == k {
					top[i] = sc.b[start:sc.i]
				}
			}
		}
		sc.space()
		if sc.b[sc.i] == ',' {
			sc.i++
		}
	}
}

// value reads the value at sc.i inside a container at depth.
func (sc *scanner) value(depth int) error {
	switch sc.b[sc.i] {
	case '{':
		return sc.object(depth+1, nil, nil)
	case '[':
		if depth+1 > sc.maxDepth {
			return invalid("nested deeper than %d levels", MaxDepth)
		}
		sc.i++
		for {
			sc.space()
			if sc.b[sc.i] == ']' {
				sc.i++
				return nil
			}
			if err := sc.value(depth + 1); err != nil {
				return err
			}
			sc.space()
			if sc.b[sc.i] == ',' {
				sc.i++
			}
		}
	case '"':
		if quoted, escaped := sc.str(); escaped && loneSurrogate(quoted) {
			return errLoneSurrogate
		}
	default: // a number, true, false or null
		for sc.i < len(sc.b) {
			switch sc.b[sc.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return nil
			}
			sc.i++
		}
	}
	return nil
}

// fieldNames is the set of an object's field names so far. The names are
// slices of the body (no copies); past a handful, each is also hashed, so
// the check stays linear in the body's size (64 KiB of distinct names would
// otherwise cost a quadratic scan) and allocates nothing per name. A hash
// seen before is confirmed by comparing the names themselves.
type fieldNames struct {
	names  [][]byte
	hashes map[uint64]struct{}
	seed   maphash.Seed
}

const fewNames = 8

// add records name and reports whether it was new.
func (n *fieldNames) add(name []byte) bool {
	if len(n.names) < fewNames {
		for _, k := range n.names {
			if bytes.Equal(k, name) {
				return false
			}
		}
		n.names = append(n.names, name)
		return true
	}
	if n.hashes == nil {
		n.seed = maphash.MakeSeed()
		n.hashes = make(map[uint64]struct{}, 4*fewNames)
		for _, k := range n.names {
			n.hashes[maphash.Bytes(n.seed, k)] = struct{}{}
		}
	}
	h := maphash.Bytes(n.seed, name)
	if _, seen := n.hashes[h]; seen {
		for _, k := range n.names {
			if bytes.Equal(k, name) {
				return false
			}
		}
	}
	n.hashes[h] = struct{}{}
	n.names = append(n.names, name)
	return true
}

// parseRFC3339 parses s as RFC 3339 (§5.6) allows, which time.Parse does
// not whole: a lower-case t and z, and a leap second (second 60, at the
// last minute of a UTC day), taken as the first second after it. What
// time.Parse takes beyond it, a comma before the fraction, is refused.
func parseRFC3339(s string) (time.Time, error) {
	if strings.IndexByte(s, ',') >= 0 {
		return time.Time{}, errors.New("a comma is not RFC 3339")
	}
	b := []byte(s)
	if len(b) > 10 && b[10] == 't' {
		b[10] = 'T'
	}
	if n := len(b); n > 0 && b[n-1] == 'z' {
		b[n-1] = 'Z'
	}
	if !rfc3339Shape(b) {
		return time.Time{}, errors.New("not of the form 2006-01-02T15:04:05Z or with an offset +hh:mm")
	}
	leap := len(b) > 18 && b[17] == '6' && b[18] == '0'
	if leap {
		b[17], b[18] = '5', '9'
	}
	t, err := time.Parse(time.RFC3339, string(b))
	if err != nil || !leap {
		return t, err
	}
	if u := t.UTC(); u.Hour() != 23 || u.Minute() != 59 {
		return time.Time{}, errors.New("second 60 outside the last minute of a UTC day")
	}
	return t.Add(time.Second), nil
}

// rfc3339Shape reports whether b has RFC 3339's date-time shape (after the
// lower-case t and z are made upper case): time.Parse also takes a
// one-digit hour and offsets such as +24:00 or +05:60.
func rfc3339Shape(b []byte) bool {
	digits := func(i, n int) bool {
		for ; n > 0; i, n = i+1, n-1 {
			if i >= len(b) || b[i] < '0' || b[i] > '9' {
				return false
			}
		}
		return true
	}
	if len(b) < 20 || !digits(0, 4) || b[4] != '-' || !digits(5, 2) || b[7] != '-' || !digits(8, 2) ||
		b[10] != 'T' || !digits(11, 2) || b[13] != ':' || !digits(14, 2) || b[16] != ':' || !digits(17, 2) {
		return false
	}
	i := 19
	if b[i] == '.' {
		i++
		if !digits(i, 1) {
			return false
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	switch {
	case i == len(b)-1 && b[i] == 'Z':
		return true
	case i == len(b)-6 && (b[i] == '+' || b[i] == '-') && digits(i+1, 2) && b[i+3] == ':' && digits(i+4, 2):
		hh, mm := (b[i+1]-'0')*10+b[i+2]-'0', (b[i+4]-'0')*10+b[i+5]-'0'
		return hh <= 23 && mm <= 59
	}
	return false
}
