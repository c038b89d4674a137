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
	_, ok := l.ids[strings.ToLower(id)]
	return ok
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
		list.why = oneLine(why, summaryMax)
		return list, nil
	}
	list.Listed, list.ids, list.why = true, ids, ""
	return list, nil
}

// provenKeys returns the ids of a key list, or why the answer is not one.
func provenKeys(resp *Response, body []byte) (map[string]struct{}, string) {
	switch env := resp.Envelope; {
	case resp.Status < 200 || resp.Status > 299:
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
	}
	ids, err := parseKeyResult(resp.Envelope.Result)
	if err != nil {
		return nil, err.Error()
	}
	if err := checkComplete(body, len(ids)); err != nil {
		return nil, err.Error()
	}
	return ids, ""
}

// parseKeyResult reads the result of a key list: a JSON array of objects,
// each with exactly one "id" member holding a non-empty string. It is
// strict because its answer is used as proof of a key's absence: an entry
// that could hide an id (a repeated "id", a number, an "ID") makes the
// whole list worthless. Ids are returned in lower case (see Has).
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
		ids[strings.ToLower(id)] = struct{}{}
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

// checkComplete refuses a list whose result_info says it is one page of
// several: the v4 envelope pages other lists that way, and a page without
// the key proves nothing about the account. Absent or unreadable
// result_info is not evidence of more pages.
func checkComplete(body []byte, n int) error {
	var top struct {
		Info json.RawMessage `json:"result_info"`
	}
	if json.Unmarshal(body, &top) != nil || len(top.Info) == 0 || top.Info[0] != '{' {
		return nil
	}
	var info map[string]json.RawMessage
	if json.Unmarshal(top.Info, &info) != nil {
		return nil
	}
	// A number given as a string counts too: the check only ever refuses.
	num := func(name string) (float64, bool) {
		s := string(info[name])
		if len(s) > 0 && s[0] == '"' && json.Unmarshal(info[name], &s) != nil {
			return 0, false
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		return f, err == nil
	}
	if p, ok := num("total_pages"); ok && p > 1 {
		return fmt.Errorf("result_info: %g pages, one read", p)
	}
	if p, ok := num("page"); ok && p > 1 {
		return fmt.Errorf("result_info: page %g, not the first", p)
	}
	if t, ok := num("total_count"); ok && t > float64(n) {
		return fmt.Errorf("result_info: %g keys in all, %d listed", t, n)
	}
	var cursors struct {
		After string `json:"after"`
	}
	if c := info["cursors"]; len(c) > 0 && json.Unmarshal(c, &cursors) == nil && cursors.After != "" {
		return errors.New("result_info: a cursor to more keys")
	}
	return nil
}
