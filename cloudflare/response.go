package cloudflare

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Response is what one call learned from the API. Every field is safe to log.
type Response struct {
	Status   int       // HTTP status, 0 if none
	CFRay    string    // CF-Ray header: links the audit trail to Cloudflare's side
	Envelope *Envelope // nil when the body is not a v4 envelope
	// BodyError says why the body is not an envelope ("" when it is): at
	// most ~200 printable characters of the body, on one line.
	BodyError string
	// RetryAfter is the wait the API asked for, from Retry-After-Ms first,
	// else Retry-After (delta-seconds, or an HTTP-date relative to the
	// response's Date header, else to now); 0 when absent, unparsable or
	// negative. It is capped at MaxRetryAfter.
	RetryAfter time.Duration
	// HasRetryAfter reports that a header was present and parsed (a date in
	// the past gives HasRetryAfter with RetryAfter 0: "retry now").
	HasRetryAfter bool
	// ShouldRetry is x-should-retry: "true" or "false" (any case); nil when
	// absent or anything else.
	ShouldRetry *bool
	RateLimit   RateLimit // parsed rate-limit headers
	// Policy is the quota the Ratelimit-Policy header announces (the most
	// restrictive one when several are given).
	Policy   RatePolicy
	Duration time.Duration // wall time of the call, body read included
	// scrub takes the request's secrets out of a string read from the
	// answer (RedactSecrets), for what is read after the call; nil: none.
	scrub func(string) string
}

// RatePolicy is what a Ratelimit-Policy header says of the quota:
// `"default";q=1200;w=300` is 1,200 calls per 300 s. Enterprise accounts
// may have more than the documented 1,200 per 5 minutes, some less.
type RatePolicy struct {
	Known  bool          // a policy with both a quota and a window was given
	Quota  int           // calls allowed per window
	Window time.Duration // the window, at least 1 s when Known
}

// PerSecond is the policy's rate, Quota/Window in calls per second; 0 when
// the policy is not Known.
func (p RatePolicy) PerSecond() float64 {
	if !p.Known || p.Window <= 0 {
		return 0
	}
	return float64(p.Quota) / p.Window.Seconds()
}

// RateLimit is what the rate-limit headers of a response say.
type RateLimit struct {
	Known     bool          // a header was present and gave the remaining calls
	Remaining int           // calls left in the window
	Reset     time.Duration // until the window resets; 0 when not given
}

// Envelope is Cloudflare's v4 response envelope. Only Success decides the
// outcome; Result varies ("ok", "Revoked", ...) and is kept raw.
type Envelope struct {
	Success  bool            `json:"success"`
	Errors   []Message       `json:"errors"`
	Messages []Message       `json:"messages"`
	Result   json.RawMessage `json:"result"`
	// irregular says why an envelope whose success is true is odd
	// ("errors" or "messages" not an array): success still decides a
	// delete, but such an answer proves no key absent.
	irregular string
}

// MessageSource is the optional "source" of a Message. It is an alias so an
// anonymous struct of the same shape is interchangeable with it.
type MessageSource = struct {
	Pointer string `json:"pointer"`
}

// Message is one entry of an envelope's errors or messages. ErrorChain holds
// the causes Cloudflare nests under some errors (6003 -> 6111, 6103).
type Message struct {
	Code             int            `json:"code"`
	Message          string         `json:"message"`
	DocumentationURL string         `json:"documentation_url,omitempty"`
	Source           *MessageSource `json:"source,omitempty"`
	ErrorChain       []Message      `json:"error_chain,omitempty"`
}

// HasCode reports whether any error, or any error in their error_chain at
// any depth, carries code.
func (e *Envelope) HasCode(code int) bool {
	return e != nil && hasCode(e.Errors, code)
}

func hasCode(ms []Message, code int) bool {
	for i := range ms {
		if ms[i].Code == code || hasCode(ms[i].ErrorChain, code) {
			return true
		}
	}
	return false
}

// summaryMax bounds Summary: it goes into one log line and one header.
const summaryMax = 512

// Summary renders the errors, error_chain entries following their parent,
// as one line: "6003 Invalid request headers; 6111 Invalid format for
// Authorization header". It is cut to ~512 bytes; "" when there are none.
func (e *Envelope) Summary() string {
	if e == nil {
		return ""
	}
	var sb strings.Builder
	var walk func(ms []Message)
	walk = func(ms []Message) {
		for i := range ms {
			if sb.Len() > summaryMax {
				return
			}
			m := &ms[i]
			if sb.Len() > 0 {
				sb.WriteString("; ")
			}
			switch text := oneLine(m.Message, summaryMax); {
			case m.Code != 0 && text != "":
				fmt.Fprintf(&sb, "%d %s", m.Code, text)
			case m.Code != 0:
				sb.WriteString(strconv.Itoa(m.Code))
			case text != "":
				sb.WriteString(text)
			default:
				sb.WriteString("(no code, no message)")
			}
			walk(m.ErrorChain)
		}
	}
	walk(e.Errors)
	return oneLine(sb.String(), summaryMax)
}

// bodySnippet is how much of a body that is not an envelope is quoted.
const bodySnippet = 200

// maxChainDepth bounds error_chain decoding: each level re-scans its bytes,
// so unbounded nesting in a hostile 64 KiB body would cost quadratic time.
const maxChainDepth = 8

// decodeEnvelope decodes body as a v4 envelope. It returns the envelope, or
// nil and a one-line reason. Field names match exactly (encoding/json would
// also accept "SUCCESS"); entries of errors/messages are decoded leniently
// (a code given as a string, a bare string as message) so that an odd entry
// cannot hide a success.
func decodeEnvelope(body []byte, contentType string) (*Envelope, string) {
	if env, ok := decodePlainEnvelope(body); ok {
		return env, ""
	}
	return decodeEnvelopeFully(body, contentType)
}

// decodePlainEnvelope reads, without encoding/json's map of every field, the
// answer to nearly every call: valid JSON, an object whose field names hold
// only printable ASCII without escapes, "success" a boolean, "errors" and
// "messages" empty or absent. ok is false for anything else, which
// decodeEnvelopeFully reads; where ok is true, both read the same envelope
// (FuzzPlainEnvelope).
func decodePlainEnvelope(body []byte) (*Envelope, bool) {
	b := bytes.TrimSpace(body)
	if len(b) < 2 || b[0] != '{' || !json.Valid(b) {
		return nil, false
	}
	var success, errs, msgs, result []byte
	i := skipSpace(b, 1)
	for i < len(b) && b[i] != '}' {
		if b[i] == ',' {
			i = skipSpace(b, i+1)
		}
		// A field name: Valid says it is a string; one that needs
		// decoding goes the long way.
		end := bytes.IndexByte(b[i+1:], '"')
		if end < 0 {
			return nil, false
		}
		name := b[i+1 : i+1+end]
		for _, c := range name {
			if c < ' ' || c > '~' || c == '\\' {
				return nil, false
			}
		}
		i = skipSpace(b, i+1+end+1)
		i = skipSpace(b, i+1) // the colon
		start := i
		i = skipValue(b, i)
		if i < 0 {
			return nil, false
		}
		v := b[start:i]
		var field *[]byte
		switch string(name) {
		case "success":
			field = &success
		case "errors":
			field = &errs
		case "messages":
			field = &msgs
		case "result":
			field = &result
		}
		if field != nil {
			if *field != nil {
				// Given twice, it reads two ways ("success" false, then
				// true): the long way refuses it.
				return nil, false
			}
			*field = v
		}
		i = skipSpace(b, i)
	}
	env := &Envelope{}
	switch string(success) {
	case "true":
		env.Success = true
	case "false":
	default:
		return nil, false
	}
	for _, list := range [][]byte{errs, msgs} {
		if list != nil && string(list) != "[]" && string(list) != "null" {
			return nil, false
		}
	}
	if result != nil {
		env.Result = bytes.Clone(result)
	}
	return env, true
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipValue returns the end of the JSON value starting at b[i], in b that
// json.Valid accepted; -1 if it cannot tell.
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	depth := 0
	for ; i < len(b); i++ {
		switch c := b[i]; c {
		case '"':
			for i++; i < len(b) && b[i] != '"'; i++ {
				if b[i] == '\\' {
					i++
				}
			}
			if i >= len(b) {
				return -1
			}
			if depth == 0 {
				return i + 1
			}
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return i // the end of the enclosing object
			}
			depth--
			if depth == 0 {
				return i + 1
			}
		case ',', ' ', '\t', '\n', '\r':
			if depth == 0 {
				return i
			}
		}
	}
	if depth == 0 {
		return i
	}
	return -1
}

// decodeEnvelopeFully is decodeEnvelope for any body.
func decodeEnvelopeFully(body []byte, contentType string) (*Envelope, string) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return nil, "empty body"
	}
	// One pass: Unmarshal checks the whole body's syntax before it decodes.
	var top map[string]json.RawMessage
	err := json.Unmarshal(trimmed, &top)
	var syntax *json.SyntaxError
	switch {
	case errors.As(err, &syntax):
		return nil, "not JSON" + describeType(contentType) + ": " + oneLine(string(trimmed), bodySnippet)
	case err != nil || top == nil:
		return nil, "JSON but not an object: " + oneLine(string(trimmed), bodySnippet)
	}
	name, dup, differ := repeatedMember(trimmed)
	twice := fmt.Sprintf("JSON naming %q twice: %s", oneLine(name, 64), oneLine(string(trimmed), bodySnippet))
	if dup && name == "success" && differ {
		// Read two ways (false, then true): neither is the answer.
		return nil, twice
	}
	var env Envelope
	switch string(top["success"]) {
	case "true":
		env.Success = true
	case "false":
	default:
		return nil, `JSON without a boolean "success": ` + oneLine(string(trimmed), bodySnippet)
	}
	var ok bool
	for _, l := range []struct {
		name string
		to   *[]Message
	}{{"errors", &env.Errors}, {"messages", &env.Messages}} {
		if *l.to, ok = decodeMessages(top[l.name], 0); ok {
			continue
		}
		why := fmt.Sprintf("%q is not an array: %s", l.name, oneLine(string(top[l.name]), bodySnippet))
		if !env.Success {
			return nil, why
		}
		// success decides (SPEC §1): an odd list cannot hide a
		// confirmed delete, but it marks the answer.
		env.irregular = why
	}
	if r, present := top["result"]; present {
		env.Result = r
	}
	if dup {
		if !env.Success {
			return nil, twice // which errors, which result?
		}
		// success decides a delete (SPEC §1); no list is proven by it.
		env.irregular = twice
	}
	return &env, ""
}

// repeatedMember reports the first of the envelope's names (success,
// errors, messages, result) that the JSON object body, valid already,
// gives twice at its top level, compared as decoded (so an escaped
// spelling is the same name), "success" before any other; and whether its
// copies differ.
func repeatedMember(body []byte) (name string, dup, differ bool) {
	copies := map[string][]string{}
	err := eachMember(body, func(n string, v json.RawMessage) error {
		switch n {
		case "success", "errors", "messages", "result":
			copies[n] = append(copies[n], string(bytes.TrimSpace(v)))
		}
		return nil
	})
	if err != nil {
		return "", false, false
	}
	for _, n := range []string{"success", "errors", "messages", "result"} {
		if c := copies[n]; len(c) > 1 {
			return n, true, slices.ContainsFunc(c, func(v string) bool { return v != c[0] })
		}
	}
	return "", false, false
}

// eachMember calls fn with each member of the JSON object raw, in order,
// its name decoded (so an escaped spelling is the same name); it stops at
// fn's first error, or says raw is not an object.
func eachMember(raw []byte, fn func(name string, v json.RawMessage) error) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return errors.New("not an object")
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return err
		}
		name, _ := tok.(string)
		if err := fn(name, v); err != nil {
			return err
		}
	}
	return nil
}

func describeType(ct string) string {
	if ct == "" {
		return ""
	}
	return " (Content-Type " + oneLine(ct, 64) + ")"
}

// decodeMessages decodes an array of messages; absent or null is an empty
// list, anything but an array is not ok.
func decodeMessages(raw json.RawMessage, depth int) ([]Message, bool) {
	if len(raw) == 0 || string(raw) == "null" || string(raw) == "[]" {
		return nil, true
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, false
	}
	out := make([]Message, 0, len(items))
	for _, it := range items {
		out = append(out, decodeMessage(it, depth))
	}
	return out, true
}

func decodeMessage(raw json.RawMessage, depth int) Message {
	var m Message
	if len(raw) > 0 && raw[0] == '"' {
		_ = json.Unmarshal(raw, &m.Message)
		return m
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil || fields == nil {
		// A number, array or boolean where an object belongs: keep it visible.
		m.Message = oneLine(string(raw), bodySnippet)
		return m
	}
	m.Code = decodeCode(fields["code"])
	if err := json.Unmarshal(fields["message"], &m.Message); err != nil && len(fields["message"]) > 0 {
		m.Message = oneLine(string(fields["message"]), bodySnippet)
	}
	_ = json.Unmarshal(fields["documentation_url"], &m.DocumentationURL)
	if src := fields["source"]; len(src) > 0 && src[0] == '{' {
		var s MessageSource
		if json.Unmarshal(src, &s) == nil {
			m.Source = &s
		}
	}
	if depth < maxChainDepth {
		m.ErrorChain, _ = decodeMessages(fields["error_chain"], depth+1)
	}
	return m
}

// decodeCode accepts a JSON number or a string holding one; anything that is
// not an integer within int32 gives 0.
func decodeCode(raw json.RawMessage) int {
	if len(raw) == 0 {
		return 0
	}
	s := string(raw)
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0
		}
		s = strings.TrimSpace(s)
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f != math.Trunc(f) || math.Abs(f) > math.MaxInt32 {
		return 0
	}
	return int(f)
}

// oneLine makes s safe for a single log line or header: every character
// that is not printable (line breaks, tabs, escapes, invalid UTF-8) becomes
// a space, runs of spaces collapse, and the result is cut to max bytes on a
// character boundary, "…" marking the cut.
func oneLine(s string, max int) string {
	var sb strings.Builder
	sb.Grow(min(len(s), max+len("…")))
	space := false
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) || unicode.IsSpace(r) {
			space = sb.Len() > 0
			continue
		}
		need := utf8.RuneLen(r)
		if space {
			need++
		}
		if sb.Len()+need > max {
			return sb.String() + "…"
		}
		if space {
			sb.WriteByte(' ')
			space = false
		}
		sb.WriteRune(r)
	}
	return sb.String()
}

// MaxCFRay is how many characters of a CF-Ray are kept (SPEC §10). A real
// one is about 20; anything longer is kept only far enough to be recognised,
// so a huge header cannot bloat records and log lines.
const MaxCFRay = 128

// CutRay keeps at most MaxCFRay characters of ray, on one line (as
// oneLine), ending in "…" when cut: the CF-Ray a record keeps, and a
// call's span too.
func CutRay(ray string) string {
	if len(ray) <= MaxCFRay && visibleASCII(ray) {
		return ray // what every real CF-Ray is: nothing to cut or clean
	}
	return cleanRay(ray)
}

// KeptRay is the CF-Ray of an answer to a request that sent the headers h,
// as records, logs and spans keep it: cut (CutRay), with any part of a
// secret the request sent replaced (RedactSecrets), and still at most
// MaxCFRay characters, as a replacement may be longer than what it
// replaced.
func KeptRay(ray string, h http.Header) string {
	kept := CutRay(ray)
	if red := RedactSecrets(kept, h); red != kept {
		return CutRay(red)
	}
	return kept
}

// cleanRay is CutRay for a ray that may need cutting or cleaning.
func cleanRay(ray string) string {
	// Cut the bytes first, so a 2 MiB header costs what a short one does.
	cut := len(ray) > 4*MaxCFRay
	if cut {
		ray = ray[:4*MaxCFRay]
	}
	r := []rune(oneLine(ray, len(ray)))
	if !cut && len(r) <= MaxCFRay {
		return string(r)
	}
	return string(r[:min(len(r), MaxCFRay-1)]) + "…"
}

// visibleASCII reports whether s holds only printable ASCII other than
// the space, which oneLine keeps as it is.
func visibleASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// MaxRetryAfter caps RetryAfter and RateLimit.Reset so that a broken or
// hostile header can neither overflow a Duration nor park the worker for
// longer than a day.
const MaxRetryAfter = 24 * time.Hour

// parseRetryAfter reads Retry-After-Ms (milliseconds, may be fractional)
// first, else Retry-After (delta-seconds, also fractional, or an HTTP-date
// taken relative to the Date header, else to now). Unparsable or negative
// values count as absent.
func parseRetryAfter(h http.Header, now time.Time) (time.Duration, bool) {
	if v, ok := parseDecimal(h.Get("Retry-After-Ms")); ok {
		return clampDuration(v * float64(time.Millisecond)), true
	}
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0, false
	}
	if secs, ok := parseDecimal(v); ok {
		return clampDuration(secs * float64(time.Second)), true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	ref := now
	if d, err := http.ParseTime(strings.TrimSpace(h.Get("Date"))); err == nil {
		ref = d
	}
	return clampDuration(float64(t.Sub(ref))), true
}

// parseDecimal accepts only digits with at most one '.', so "1e9", "0x10",
// "Inf", "-1" and "+1" are all refused (strconv.ParseFloat takes them all).
func parseDecimal(s string) (float64, bool) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, false
	}
	dot, digits := false, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= '0' && c <= '9':
			digits++
		case c == '.' && !dot:
			dot = true
		default:
			return 0, false
		}
	}
	if digits == 0 {
		return 0, false
	}
	// A number too large to hold is the largest (RFC 9111 §1.2.2), one
	// too small 0: ParseFloat answers so with ErrRange.
	f, err := strconv.ParseFloat(s, 64)
	return f, err == nil || errors.Is(err, strconv.ErrRange)
}

func clampDuration(ns float64) time.Duration {
	switch {
	case !(ns > 0): // also NaN
		return 0
	case ns >= float64(MaxRetryAfter):
		return MaxRetryAfter
	}
	return time.Duration(math.Round(ns))
}

// parseShouldRetry reads x-should-retry as Cloudflare's SDKs do.
func parseShouldRetry(h http.Header) *bool {
	var b bool
	switch strings.ToLower(strings.TrimSpace(h.Get("X-Should-Retry"))) {
	case "true":
		b = true
	case "false":
	default:
		return nil
	}
	return &b
}

// epochThreshold: a reset above this many seconds (~2001-09-09) is a Unix
// time, not a delta.
const epochThreshold = 1e9

// parseRateLimit reads, in this order: the IETF draft's structured field
// `RateLimit: "default";r=50;t=30` (the most restrictive item wins), its
// older dictionary form `RateLimit: limit=100, remaining=50, reset=30`, the
// older separate `RateLimit-Remaining`/`RateLimit-Reset`, and
// `X-RateLimit-Remaining`/`X-RateLimit-Reset`. A reset above 1e9 is a Unix
// time, taken relative to the Date header, else to now.
func parseRateLimit(h http.Header, now time.Time) RateLimit {
	// Most answers carry none of these: then the Date header, which only
	// places an absolute reset, is not parsed at all.
	if len(h.Values("Ratelimit")) == 0 && h.Get("Ratelimit-Remaining") == "" && h.Get("X-Ratelimit-Remaining") == "" {
		return RateLimit{}
	}
	ref := now
	if d, err := http.ParseTime(strings.TrimSpace(h.Get("Date"))); err == nil {
		ref = d
	}
	if vs := h.Values("Ratelimit"); len(vs) > 0 {
		if rl, ok := parseRateLimitField(strings.Join(vs, ","), ref); ok {
			return rl
		}
	}
	for _, prefix := range [...]string{"Ratelimit-", "X-Ratelimit-"} {
		rem, ok := parseCount(h.Get(prefix + "Remaining"))
		if !ok {
			continue
		}
		rl := RateLimit{Known: true, Remaining: rem}
		if reset, ok := parseCount(h.Get(prefix + "Reset")); ok {
			rl.Reset = resetDuration(reset, ref)
		}
		return rl
	}
	return RateLimit{}
}

// parseRateLimitField handles both draft forms of the RateLimit field: a list
// of items with r/t parameters, and a dictionary with remaining/reset
// members. It is a tolerant subset of RFC 8941, enough for these values.
func parseRateLimitField(v string, ref time.Time) (RateLimit, bool) {
	var (
		best         RateLimit
		found        bool
		bestHasReset bool
		loose        int // a reset given as its own member (dictionary form)
		haveLoose    bool
	)
	for _, member := range splitOutsideQuotes(v, ',') {
		var rem, reset int
		var hasRem, hasReset bool
		for _, part := range splitOutsideQuotes(member, ';') {
			k, val, ok := strings.Cut(strings.TrimSpace(part), "=")
			if !ok {
				continue // the item's name, e.g. "default"
			}
			n, ok := parseCount(strings.Trim(strings.TrimSpace(val), `"`))
			if !ok {
				continue
			}
			switch strings.ToLower(strings.TrimSpace(k)) {
			case "r", "remaining":
				rem, hasRem = n, true
			case "t", "reset":
				reset, hasReset = n, true
			}
		}
		switch {
		case hasRem && (!found || rem < best.Remaining):
			best = RateLimit{Known: true, Remaining: rem}
			if hasReset {
				best.Reset = resetDuration(reset, ref)
			}
			found, bestHasReset = true, hasReset
		case !hasRem && hasReset:
			loose, haveLoose = reset, true
		}
	}
	if found && !bestHasReset && haveLoose {
		best.Reset = resetDuration(loose, ref)
	}
	return best, found
}

// splitOutsideQuotes splits s at sep, except inside double quotes (with
// backslash escapes), as structured header strings may hold sep.
func splitOutsideQuotes(s string, sep byte) []string {
	var out []string
	start, inQ := 0, false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case inQ && c == '\\':
			i++
		case c == '"':
			inQ = !inQ
		case !inQ && c == sep:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// parseCount parses a non-negative decimal integer of at most 18 digits (no
// sign, no overflow).
func parseCount(s string) (int, bool) {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > 18 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

func resetDuration(n int, ref time.Time) time.Duration {
	if n > epochThreshold {
		return clampDuration(float64(time.Unix(int64(n), 0).Sub(ref)))
	}
	return clampDuration(float64(n) * float64(time.Second))
}

// maxPolicyWindow bounds a policy's window: Cloudflare's longest is a day,
// and a larger one would only make a hostile header overflow.
const maxPolicyWindow = 7 * 24 * 60 * 60

// parseRatePolicy reads Ratelimit-Policy, every line joined: items of the
// current draft, `"default";q=1200;w=300`, and of older ones, `1200;w=300`
// (the quota as the item). Items without both a quota and a window of at
// least one second are skipped; of the rest, the one allowing the fewest
// calls per second wins (a 429 comes from the first exhausted).
func parseRatePolicy(h http.Header) RatePolicy {
	vs := h.Values("Ratelimit-Policy")
	if len(vs) == 0 {
		return RatePolicy{}
	}
	var best RatePolicy
	for _, member := range splitOutsideQuotes(strings.Join(vs, ","), ',') {
		var q, w int
		var hasQ, hasW bool
		for i, part := range splitOutsideQuotes(member, ';') {
			part = strings.TrimSpace(part)
			k, val, ok := strings.Cut(part, "=")
			if !ok {
				if i == 0 {
					// An older draft's item: the quota itself.
					q, hasQ = parseCount(part)
				}
				continue
			}
			n, ok := parseCount(strings.Trim(strings.TrimSpace(val), `"`))
			if !ok {
				continue
			}
			switch strings.ToLower(strings.TrimSpace(k)) {
			case "q":
				q, hasQ = n, true
			case "w":
				w, hasW = n, true
			}
		}
		if !hasQ || !hasW || w < 1 || w > maxPolicyWindow {
			continue
		}
		p := RatePolicy{Known: true, Quota: q, Window: time.Duration(w) * time.Second}
		// q1/w1 < q2/w2 as q1*w2 < q2*w1; a tie keeps the first.
		if !best.Known || float64(p.Quota)*best.Window.Seconds() < float64(best.Quota)*p.Window.Seconds() {
			best = p
		}
	}
	return best
}
