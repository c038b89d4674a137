package event_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"regexp"
	"time"
	"unicode/utf8"

	"github.com/revoker/revoker/event"
)

// refDecode is a plain reading of SPEC §2 built on json.Decoder's
// tokenizer: slower than DecodeEvent, and simple enough to trust. The fuzz
// test holds the two to the same verdict on every input.
func refDecode(body []byte) (event.Event, bool) {
	var ev event.Event
	if len(body) > event.MaxBytes || len(bytes.TrimSpace(body)) == 0 || !utf8.Valid(body) || refLoneSurrogate(body) {
		return ev, false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	type frame struct {
		object, expectKey bool
		keys              map[string]bool
	}
	tok, err := dec.Token()
	if d, ok := tok.(json.Delim); err != nil || !ok || d != '{' {
		return ev, false
	}
	stack := []frame{{object: true, expectKey: true, keys: map[string]bool{}}}
	top := map[string]any{}
	var cur string
	for len(stack) > 0 {
		tok, err := dec.Token()
		if err != nil {
			return ev, false
		}
		f := &stack[len(stack)-1]
		if d, ok := tok.(json.Delim); ok && (d == '}' || d == ']') {
			stack = stack[:len(stack)-1]
			continue
		}
		if f.object && f.expectKey {
			k := tok.(string)
			if f.keys[k] {
				return ev, false
			}
			f.keys[k], f.expectKey = true, false
			if len(stack) == 1 {
				cur = k
			}
			continue
		}
		if f.object {
			f.expectKey = true
		}
		if len(stack) == 1 {
			top[cur] = tok
		}
		if d, ok := tok.(json.Delim); ok {
			if len(stack) >= event.MaxDepth {
				return ev, false
			}
			stack = append(stack, frame{object: d == '{', expectKey: d == '{', keys: map[string]bool{}})
		}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return ev, false
	}
	str := func(name string, dst *string) bool {
		v, ok := top[name]
		if !ok {
			return true
		}
		s, ok := v.(string)
		*dst = s
		return ok
	}
	var at string
	if !str("account_id", &ev.AccountID) || !str("key_id", &ev.KeyID) || !str("reason", &ev.Reason) ||
		!str("requested_by", &ev.RequestedBy) || !str("requested_at", &at) {
		return ev, false
	}
	if _, ok := top["account_id"]; !ok {
		return ev, false
	}
	if _, ok := top["key_id"]; !ok {
		return ev, false
	}
	if _, ok := top["requested_at"]; ok {
		t, err := time.Parse(time.RFC3339, at)
		if err != nil {
			return ev, false
		}
		ev.RequestedAt = t
	}
	return ev, ev.Validate() == nil
}

// surrogateEscape is a \u escape of half a character: \uD800-\uDFFF.
var surrogateEscape = regexp.MustCompile(`\\u[dD][89a-fA-F][0-9a-fA-F]{2}`)

// refLoneSurrogate reports whether body holds a surrogate escape that is
// not the high half of a pair directly followed by its low half; escaped
// backslashes are set aside first, so "\\ud800" is no escape.
func refLoneSurrogate(body []byte) bool {
	b := bytes.ReplaceAll(body, []byte(`\\`), []byte(`__`))
	locs := surrogateEscape.FindAllIndex(b, -1)
	low := func(i int) bool { return bytes.IndexByte([]byte("cdefCDEF"), b[locs[i][0]+3]) >= 0 }
	for i := 0; i < len(locs); i++ {
		if low(i) || i+1 == len(locs) || locs[i+1][0] != locs[i][1] || !low(i+1) {
			return true
		}
		i++
	}
	return false
}
