package ingress

import (
	"encoding/json"
	"errors"
	"mime"
	"strconv"
	"strings"
	"time"
)

// Request headers beyond the signatures.
const (
	HeaderIdempotencyKey    = "Idempotency-Key"
	HeaderPrefer            = "Prefer"
	HeaderPreferenceApplied = "Preference-Applied"
	HeaderTraceID           = "Revoker-Trace-Id"
	// MaxIdempotencyKey is the longest idempotency key taken, in bytes.
	MaxIdempotencyKey = 200
	// maxPreferWait bounds a parsed wait before the cap applies, so that
	// no value overflows a duration.
	maxPreferWait = 24 * time.Hour
)

// jsonContentType reports whether a Content-Type header names JSON:
// application/json, with no parameter but a UTF-8 charset.
func jsonContentType(ct string) bool {
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return false
	}
	for k, v := range params {
		if k != "charset" || !strings.EqualFold(v, "utf-8") {
			return false
		}
	}
	return true
}

// preferWait returns the wait a request's Prefer headers ask for (RFC
// 7240: "wait=<seconds>", among other preferences separated by commas,
// each with parameters after ";"), and whether one was asked for. A wait
// that is not a number of seconds is ignored, as RFC 7240 asks of
// preferences a server cannot understand.
func preferWait(values []string) (time.Duration, bool) {
	for _, v := range values {
		for _, pref := range strings.Split(v, ",") {
			pref, _, _ = strings.Cut(pref, ";")
			name, val, ok := strings.Cut(strings.TrimSpace(pref), "=")
			if !ok || !strings.EqualFold(strings.TrimSpace(name), "wait") {
				continue
			}
			val = strings.Trim(strings.TrimSpace(val), `"`)
			if val == "" || strings.IndexFunc(val, func(r rune) bool { return r < '0' || r > '9' }) >= 0 {
				continue
			}
			if val = strings.TrimLeft(val, "0"); val == "" {
				val = "0"
			}
			if len(val) > 9 {
				// Too many seconds to count is the longest wait (RFC 9111
				// §1.2.2 reads an overflowing delta-seconds so), not none.
				return maxPreferWait, true
			}
			n, err := strconv.Atoi(val)
			if err != nil {
				continue
			}
			return min(time.Duration(n)*time.Second, maxPreferWait), true
		}
	}
	return 0, false
}

// validIdempotencyKey reports whether k is 1-MaxIdempotencyKey bytes of
// visible ASCII: it becomes part of an event id, a header and a URL.
func validIdempotencyKey(k string) bool {
	if k == "" || len(k) > MaxIdempotencyKey {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x21 || k[i] > 0x7e {
			return false
		}
	}
	return true
}

// errUrgent is the complaint about a bad "urgent" field.
var errUrgent = errors.New(`urgent must be true or false`)

// urgentOf reads the optional top-level "urgent" field of a body that
// event.Decode accepted (so one JSON object, no name repeated). The name
// matches exactly, as the event's own fields do.
func urgentOf(body []byte) (bool, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		return false, err
	}
	raw, ok := top["urgent"]
	if !ok {
		return false, nil
	}
	switch string(raw) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, errUrgent
}
