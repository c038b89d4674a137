package worker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
	"unicode/utf8"

	"github.com/revoker/revoker/cloudflare"
)

// Limits of an event (SPEC §2).
const (
	MaxEventBytes     = 64 << 10
	MaxDepth          = 32
	MaxReasonRunes    = 1024
	MaxRequesterRunes = 256
)

// Event is one validated "revoke key" request.
type Event struct {
	AccountID   string    `json:"account_id"`
	KeyID       string    `json:"key_id"`
	Reason      string    `json:"reason,omitempty"`
	RequestedBy string    `json:"requested_by,omitempty"`
	RequestedAt time.Time `json:"requested_at,omitzero"`
}

// ErrInvalidEvent wraps every reason an event is refused.
var ErrInvalidEvent = errors.New("invalid event")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidEvent}, args...)...)
}

// DecodeEvent parses and validates body. It is strict on purpose: the body
// must be exactly one JSON object of valid UTF-8, with no field name repeated
// in any object and no nesting deeper than MaxDepth. Field names match
// exactly (encoding/json would also take "ACCOUNT_ID"), so there is one
// reading of which key an event names. Nothing from the body reaches a URL
// unless it passed its rule here.
func DecodeEvent(body []byte) (Event, error) {
	var ev Event
	if len(body) > MaxEventBytes {
		return ev, invalid("body is %d bytes, more than %d", len(body), MaxEventBytes)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return ev, invalid("body is empty")
	}
	if !utf8.Valid(body) {
		return ev, invalid("body is not valid UTF-8")
	}
	fields, err := scanObject(body)
	if err != nil {
		return ev, err
	}
	var seen [5]bool
	for i, name := range []string{"account_id", "key_id", "reason", "requested_by", "requested_at"} {
		v, ok := fields[name]
		if !ok {
			continue
		}
		s, isString := v.(string)
		if !isString {
			return ev, invalid("%s must be a string, got %s", name, jsonKind(v))
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
			t, err := time.Parse(time.RFC3339, s)
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

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case json.Number, float64:
		return "a number"
	case json.Delim:
		return "an object or array"
	}
	return "another type"
}

// scanObject walks the body's tokens once, enforcing the structural rules,
// and returns the top-level fields whose values are scalars (objects and
// arrays are returned as their opening delimiter).
func scanObject(body []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	type frame struct {
		object    bool
		expectKey bool
		keys      map[string]struct{}
	}
	var (
		stack  []frame
		top    = map[string]any{}
		curKey string // the top-level key whose value comes next
	)
	tok, err := dec.Token()
	if err != nil {
		return nil, invalid("not JSON: %v", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, invalid("body must be a JSON object")
	}
	stack = append(stack, frame{object: true, expectKey: true, keys: map[string]struct{}{}})
	for len(stack) > 0 {
		tok, err := dec.Token()
		if err != nil {
			return nil, invalid("not JSON: %v", err)
		}
		f := &stack[len(stack)-1]
		if d, ok := tok.(json.Delim); ok && (d == '}' || d == ']') {
			stack = stack[:len(stack)-1]
			continue
		}
		if f.object && f.expectKey {
			key := tok.(string) // the decoder guarantees a string here
			if _, dup := f.keys[key]; dup {
				return nil, invalid("field %s appears twice", quote(key))
			}
			f.keys[key] = struct{}{}
			f.expectKey = false
			if len(stack) == 1 {
				curKey = key
			}
			continue
		}
		// A value: the frame it sits in expects a key next.
		if f.object {
			f.expectKey = true
		}
		if len(stack) == 1 {
			top[curKey] = tok
		}
		if d, ok := tok.(json.Delim); ok {
			if len(stack) >= MaxDepth {
				return nil, invalid("nested deeper than %d levels", MaxDepth)
			}
			stack = append(stack, frame{object: d == '{', expectKey: d == '{', keys: map[string]struct{}{}})
		}
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, invalid("data after the JSON object")
	}
	return top, nil
}
