package cloudflare

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"unicode"
)

// maxListBody is how much of a key list is read: an account holds at most
// 1,000 keys, each entry well under 200 bytes.
const maxListBody = 256 << 10

// KeyList is the answer to GET {base}/accounts/{account_id}/stream/keys.
type KeyList struct {
	*Response // status, CF-Ray, envelope, retry and rate-limit hints, as for a delete; never nil
	// Listed reports that the answer proves the account's keys: 2xx, the
	// envelope's success true, and a result that is a JSON array of objects with string "id".
	Listed bool
	ids    map[string]struct{}
	why    string
}

// Has reports whether the list names key id (false when !Listed). Ids are
// compared without regard to case: absence is claimed only when no spelling
// of the key is listed, so an API that matched ids loosely could not make a
// live key look gone.
func (l *KeyList) Has(id string) bool {
	if l == nil || !l.Listed {
		return false
	}
	_, ok := l.ids[foldID(id)]
	return ok
}

// foldID is id with each letter replaced by the least of the letters
// that fold to it (as strings.EqualFold folds), so ids that EqualFold
// calls the same fold alike: "ſ" is "s", the Kelvin sign "k".
func foldID(id string) string {
	return strings.Map(func(r rune) rune {
		least := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			least = min(least, f)
		}
		return least
	}, id)
}

// Why says, on one line safe to log, why the answer proves nothing about
// the account's keys; "" when Listed.
func (l *KeyList) Why() string {
	if l == nil {
		return "no answer"
	}
	return l.why
}

// ListSigningKeys calls GET {base}/accounts/{accountID}/stream/keys once, with the same
// rules as DeleteSigningKey: identifier validated before it reaches the URL, same auth,
// timeout, body limits (the list can hold up to 1,000 keys: allow a larger body for it,
// e.g. 256 KiB), errors never holding secrets, no redirects followed.
//
// The returned *KeyList and its Response are never nil; err is as for
// DeleteSigningKey. Listed is false whenever the answer is anything but a
// complete list: another status, no envelope, success false, a result that
// is not an array of objects each with one string "id", or a result_info
// saying that more pages exist.
func (c *Client) ListSigningKeys(ctx context.Context, accountID string) (*KeyList, error) {
	list := &KeyList{Response: &Response{}, why: "no answer"}
	if !ValidIdentifier(accountID) {
		return list, fmt.Errorf("%w: the account id is not 1-32 characters of [A-Za-z0-9]", ErrInvalidIdentifier)
	}
	resp, body, err := c.call(ctx, http.MethodGet, maxListBody, "accounts", accountID, "stream", "keys")
	list.Response = resp
	if err != nil {
		return list, err
	}
	ids, why := provenKeys(resp, body)
	if why != "" {
		if resp.scrub != nil {
			why = resp.scrub(why) // it may quote the body: an id, an entry
		}
		list.why = oneLine(why, summaryMax)
		return list, nil
	}
	list.Listed, list.ids, list.why = true, ids, ""
	return list, nil
}

// provenKeys returns the ids of a key list, or why the answer is not one.
func provenKeys(resp *Response, body []byte) (map[string]struct{}, string) {
	switch env := resp.Envelope; {
	// 203 is a proxy's rewriting of the answer, 206 a part of it: neither
	// is the API's whole list, which an absence is read from.
	case resp.Status < 200 || resp.Status > 299 || resp.Status == http.StatusNonAuthoritativeInfo || resp.Status == http.StatusPartialContent:
		why := "HTTP " + strconv.Itoa(resp.Status)
		if s := env.Summary(); s != "" {
			why += ": " + s
		} else if env == nil {
			why += ", not the envelope: " + resp.BodyError
		}
		return nil, why
	case env == nil:
		return nil, "not the envelope: " + resp.BodyError
	case !env.Success:
		why := `"success" is false`
		if s := env.Summary(); s != "" {
			why += ": " + s
		}
		return nil, why
	case env.irregular != "":
		return nil, env.irregular
	}
	ids, err := parseKeyResult(resp.Envelope.Result)
	if err != nil {
		return nil, err.Error()
	}
	if len(ids) > MaxAccountKeys {
		// More than an account holds: not the one page of every key that
		// an absence can be read from (SPEC §1).
		return nil, fmt.Sprintf("%d keys listed, more than an account holds (%d): not the account's whole list", len(ids), MaxAccountKeys)
	}
	if err := checkComplete(body, len(ids)); err != nil {
		return nil, err.Error()
	}
	return ids, ""
}

// MaxAccountKeys is the most signing keys an account holds (SPEC §1).
const MaxAccountKeys = 1000

// listMembers are the members a key list's envelope may have: anything
// else might say the list is partial in a way not read here.
var listMembers = map[string]bool{"success": true, "errors": true, "messages": true, "result": true, "result_info": true}

// members decodes the JSON object raw into its members, refusing a name
// given twice (compared as decoded) and any name not in allowed.
func members(raw []byte, allowed map[string]bool) (map[string]json.RawMessage, error) {
	out := map[string]json.RawMessage{}
	err := eachMember(raw, func(name string, v json.RawMessage) error {
		if _, dup := out[name]; dup {
			return fmt.Errorf("%q given twice", oneLine(name, 64))
		}
		if !allowed[name] {
			return fmt.Errorf("unknown member %q", oneLine(name, 64))
		}
		out[name] = v
		return nil
	})
	return out, err
}

// parseKeyResult reads the result of a key list: a JSON array of objects,
// each with exactly one "id" member holding a non-empty string. It is
// strict because its answer is used as proof of a key's absence: an entry
// that could hide an id (a repeated "id", a number, an "ID") makes the
// whole list worthless. Ids are returned folded (see Has).
func parseKeyResult(raw json.RawMessage) (map[string]struct{}, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, errors.New(`no "result"`)
	}
	if !json.Valid(raw) {
		return nil, errors.New(`"result" is not JSON`)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		return nil, errors.New(`"result" is not an array: ` + oneLine(string(raw), bodySnippet))
	}
	ids := make(map[string]struct{})
	for i := 0; dec.More(); i++ {
		id, err := parseKeyEntry(dec)
		if err != nil {
			return nil, fmt.Errorf(`"result" entry %d: %w`, i, err)
		}
		// Key ids are identifiers (the endpoint's, SPEC §2), never
		// repeated: an id padded, spelled with look-alikes, or listed
		// twice (so a full page looks short) makes the list worthless.
		if !ValidIdentifier(id) {
			return nil, fmt.Errorf(`"result" entry %d: id %q is not 1-32 characters of [A-Za-z0-9]`, i, oneLine(id, 40))
		}
		if _, dup := ids[foldID(id)]; dup {
			return nil, fmt.Errorf(`"result" entry %d: id %q listed twice`, i, id)
		}
		ids[foldID(id)] = struct{}{}
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim(']') {
		return nil, errors.New(`"result" is not a closed array`)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New(`"result" holds more than one value`)
	}
	return ids, nil
}

// parseKeyEntry reads one object of the result and returns its "id".
func parseKeyEntry(dec *json.Decoder) (string, error) {
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return "", errors.New("not an object")
	}
	var id string
	seen := false
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return "", err
		}
		name, _ := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return "", err
		}
		if name != "id" {
			if strings.EqualFold(name, "id") {
				// Read as the id by readers that match names loosely
				// (encoding/json, so cloudflare-go): another id.
				return "", fmt.Errorf("an id spelled %q", oneLine(name, 16))
			}
			continue
		}
		if seen {
			return "", errors.New(`"id" given twice`)
		}
		seen = true
		// null would unmarshal into a string without error: look first.
		if v = bytes.TrimSpace(v); len(v) == 0 || v[0] != '"' || json.Unmarshal(v, &id) != nil {
			return "", errors.New(`"id" is not a string`)
		}
		if id == "" {
			return "", errors.New(`"id" is empty`)
		}
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return "", err
	}
	if !seen {
		return "", errors.New(`no "id"`)
	}
	return id, nil
}

// infoMembers are the members of result_info the v4 API uses to page a
// list, each read below; any other might page it in a way not read here.
var infoMembers = map[string]bool{
	"page": true, "per_page": true, "count": true, "total_count": true, "total_pages": true,
	"cursor": true, "cursors": true, "is_truncated": true,
}

// checkComplete refuses a list of n keys that is not the whole account's
// for certain: a body whose envelope names a member twice or one no list
// has, or whose result_info says, or might say, that more keys follow
// (pages, a count beyond n, a cursor, a truncation). A page without the
// key proves nothing about the account (SPEC §4, "The proof", point 1).
func checkComplete(body []byte, n int) error {
	top, err := members(bytes.TrimSpace(body), listMembers)
	if err != nil {
		return fmt.Errorf("the list's envelope: %w", err)
	}
	raw := bytes.TrimSpace(top["result_info"])
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	info, err := members(raw, infoMembers)
	if err != nil {
		return fmt.Errorf("result_info: %w", err)
	}
	for name, v := range info {
		if err := pagesOf(name, bytes.TrimSpace(v), n); err != nil {
			return fmt.Errorf("result_info: %w", err)
		}
	}
	// A page as full as a page can be, with no total beside it: more keys
	// may follow, unless it holds as many as an account can.
	_, pages := infoNumber(info["total_pages"])
	_, total := infoNumber(info["total_count"])
	if per, ok := infoNumber(info["per_page"]); ok && !pages && !total && n < MaxAccountKeys {
		if count, ok := infoNumber(info["count"]); n >= int(per) || ok && count >= per {
			return fmt.Errorf("result_info: a full page of %g, and no total", per)
		}
	}
	return nil
}

// infoNumber is the number v holds (null or absent: none), as pagesOf
// has already checked it.
func infoNumber(v json.RawMessage) (float64, bool) {
	v = bytes.TrimSpace(v)
	if len(v) == 0 || string(v) == "null" {
		return 0, false
	}
	f, err := number("", v)
	return f, err == nil
}

// number reads the count v: digits only (a page, a count), given as a
// JSON number or a string holding one, read exactly. Anything else (a
// sign, a fraction, an exponent, NaN) might be read otherwise by another
// reader, so it is none.
func number(name string, v []byte) (float64, error) {
	s := string(v)
	if len(s) > 0 && s[0] == '"' && json.Unmarshal(v, &s) != nil {
		return 0, fmt.Errorf("%s is not a count", name)
	}
	s = strings.TrimSpace(s)
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("%s is not a count", name)
	}
	return float64(n), nil
}

// pagesOf checks one member of result_info for a sign of more keys than n.
func pagesOf(name string, v []byte, n int) error {
	if string(v) == "null" {
		return nil
	}
	num := func() (float64, error) { return number(name, v) }
	switch name {
	case "per_page":
		per, err := num()
		if err == nil && per < 1 {
			err = fmt.Errorf("per_page %g", per)
		}
		return err
	case "total_pages", "page":
		p, err := num()
		switch {
		case err != nil:
		case p > 1:
			err = fmt.Errorf("%s %g: not the only page", name, p)
		case p < 1 && n > 0:
			err = fmt.Errorf("%s %g beside %d keys", name, p, n)
		}
		return err
	case "total_count", "count":
		c, err := num()
		if err == nil && c != float64(n) {
			err = fmt.Errorf("%s %g, %d listed", name, c, n)
		}
		return err
	case "cursor":
		if string(v) != `""` {
			return errors.New("a cursor to more keys")
		}
	case "is_truncated":
		if string(v) != "false" {
			return errors.New("is_truncated is not false")
		}
	case "cursors":
		cursors, err := members(v, map[string]bool{"after": true, "before": true})
		if err != nil {
			return fmt.Errorf("cursors: %w", err)
		}
		if after := bytes.TrimSpace(cursors["after"]); len(after) > 0 && string(after) != "null" && string(after) != `""` {
			return errors.New("a cursor to more keys")
		}
	}
	return nil
}
