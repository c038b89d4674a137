package cloudflare_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/revoker/revoker/cloudflare"
)

// listBody is a successful key list naming ids.
func listBody(ids ...string) string {
	entries := make([]string, len(ids))
	for i, id := range ids {
		entries[i] = fmt.Sprintf(`{"id":%q,"created":"2025-01-02T03:04:05.%06dZ"}`, id, i)
	}
	return `{"success":true,"errors":[],"messages":[],"result":[` + strings.Join(entries, ",") + `]}`
}

func TestListSigningKeys(t *testing.T) {
	// A full account: 1,000 keys of 32 hex digits, more than a delete's
	// body limit, within the list's.
	full := make([]string, 1000)
	for i := range full {
		full[i] = fmt.Sprintf("%032x", i+1)
	}
	full[500] = "k1"
	fullBody := listBody(full...)
	if len(fullBody) <= cloudflare.MaxBody || len(fullBody) > cloudflare.MaxListBody {
		t.Fatalf("a full list is %d bytes", len(fullBody))
	}
	oversized := listBody("k2") + strings.Repeat(" ", cloudflare.MaxListBody)
	// One more key than an account can hold: not the whole list of one.
	tooMany := listBody(append(slices.Clone(full), fmt.Sprintf("%032x", 5000))...)

	tests := []struct {
		name    string
		status  int
		ctype   string
		body    string
		listed  bool
		has     bool   // Has("k1")
		why     string // substring of Why() when !listed
		wantEnv bool   // an envelope was decoded
	}{
		{name: "with the key", status: 200, body: listBody("k0", "k1", "k2"), listed: true, has: true, wantEnv: true},
		{name: "with the key in another case", status: 200, body: listBody("K1", "k2"), listed: true, has: true, wantEnv: true},
		{name: "without the key", status: 200, body: listBody("k0", "k2", "k10", "xk1"), listed: true, wantEnv: true},
		{name: "no keys at all", status: 200, body: listBody(), listed: true, wantEnv: true},
		{name: "a full account", status: 200, body: fullBody, listed: true, has: true, wantEnv: true},
		{name: "a full account on a full page, no total", status: 200, listed: true, has: true, wantEnv: true,
			body: strings.TrimSuffix(fullBody, "}") + `,"result_info":{"page":1,"per_page":1000,"count":1000}}`},
		{name: "a full page, and its total", status: 200, listed: true, wantEnv: true,
			body: `{"success":true,"result":[{"id":"k0"},{"id":"k2"}],"result_info":{"page":1,"per_page":2,"count":2,"total_count":2}}`},
		{name: "the key spelled with the Kelvin sign", status: 200, why: "is not 1-32 characters", wantEnv: true,
			body: `{"success":true,"result":[{"id":"\u212a1"},{"id":"k2"}]}`},
		{name: "one page of one", status: 200, listed: true, wantEnv: true,
			body: `{"success":true,"errors":[],"messages":[],"result":[{"id":"k2"}],"result_info":{"page":1,"per_page":1000,"count":1,"total_count":1,"total_pages":1}}`},
		{name: "201", status: 201, body: listBody("k2"), listed: true, wantEnv: true},
		{name: "203, rewritten by a proxy", status: 203, body: listBody("k2"), why: "HTTP 203", wantEnv: true},
		{name: "206, a part", status: 206, body: listBody("k2"), why: "HTTP 206", wantEnv: true},
		{name: "more keys than an account holds", status: 200, body: tooMany, why: "1001 keys listed, more than an account holds (1000)", wantEnv: true},

		{name: "success false", status: 200, body: `{"success":false,"errors":[{"code":10001,"message":"nope"}],"messages":[],"result":[]}`,
			why: `"success" is false: 10001 nope`, wantEnv: true},
		{name: "html 404", status: 404, ctype: "text/html", body: "<html><head><title>404 Not Found</title></head><body>nginx</body></html>",
			why: "HTTP 404, not the envelope: not JSON (Content-Type text/html)"},
		{name: "envelope 404", status: 404, body: `{"success":false,"errors":[{"code":7000,"message":"No route for that URI"}],"messages":[],"result":null}`,
			why: "HTTP 404: 7000 No route for that URI", wantEnv: true},
		{name: "a list with a 404", status: 404, body: listBody("k2"), why: "HTTP 404", wantEnv: true},
		{name: "a list with a 503", status: 503, body: listBody("k2"), why: "HTTP 503", wantEnv: true},
		{name: "a list with a 302", status: 302, body: listBody("k2"), why: "HTTP 302", wantEnv: true},
		{name: "204 without a body", status: 204, why: "not the envelope: empty body"},
		{name: "200 not JSON", status: 200, body: "OK", why: "not the envelope: not JSON"},
		{name: "result a string", status: 200, body: `{"success":true,"errors":[],"messages":[],"result":"ok"}`, why: `"result" is not an array`, wantEnv: true},
		{name: "result an object", status: 200, body: `{"success":true,"result":{"id":"k2"}}`, why: `"result" is not an array`, wantEnv: true},
		{name: "result null", status: 200, body: `{"success":true,"result":null}`, why: `"result" is not an array`, wantEnv: true},
		{name: "no result", status: 200, body: `{"success":true,"errors":[],"messages":[]}`, why: `no "result"`, wantEnv: true},
		{name: "entry a string", status: 200, body: `{"success":true,"result":[{"id":"k2"},"k3"]}`, why: `entry 1: not an object`, wantEnv: true},
		{name: "entry without id", status: 200, body: `{"success":true,"result":[{"name":"k1"}]}`, why: `entry 0: no "id"`, wantEnv: true},
		{name: "id in capitals", status: 200, body: `{"success":true,"result":[{"ID":"k1"}]}`, why: `an id spelled "ID"`, wantEnv: true},
		{name: "id a number", status: 200, body: `{"success":true,"result":[{"id":1}]}`, why: `"id" is not a string`, wantEnv: true},
		{name: "id null", status: 200, body: `{"success":true,"result":[{"id":null}]}`, why: `"id" is not a string`, wantEnv: true},
		{name: "id empty", status: 200, body: `{"success":true,"result":[{"id":""}]}`, why: `"id" is empty`, wantEnv: true},
		{name: "id twice", status: 200, body: `{"success":true,"result":[{"id":"k1","id":"k2"}]}`, why: `"id" given twice`, wantEnv: true},
		{name: "more pages", status: 200, why: "total_pages 2", wantEnv: true,
			body: `{"success":true,"result":[{"id":"k2"}],"result_info":{"page":1,"per_page":1,"total_pages":2}}`},
		{name: "a later page", status: 200, why: "page 2", wantEnv: true,
			body: `{"success":true,"result":[{"id":"k2"}],"result_info":{"page":"2"}}`},
		{name: "more keys than listed", status: 200, why: "total_count 3, 1 listed", wantEnv: true,
			body: `{"success":true,"result":[{"id":"k2"}],"result_info":{"total_count":3}}`},
		{name: "a cursor to more", status: 200, why: "cursor", wantEnv: true,
			body: `{"success":true,"result":[{"id":"k2"}],"result_info":{"cursors":{"after":"abc"}}}`},
		// An answer that reads two ways, or that may page the list in a
		// way not read, proves nothing.
		{name: "result twice", status: 200, why: `naming "result" twice`, wantEnv: true,
			body: `{"success":true,"errors":[],"messages":[],"result":[{"id":"k1"}],"result":[]}`},
		{name: "result twice, one escaped", status: 200, why: `naming "result" twice`, wantEnv: true,
			body: `{"success":true,"errors":[],"messages":[],"result":[{"id":"k1"}],"\u0072esult":[]}`},
		{name: "success twice", status: 200, why: `"success" twice`, wantEnv: false,
			body: `{"success":false,"errors":[],"messages":[],"result":[],"success":true}`},
		{name: "result_info twice", status: 200, why: `"result_info" given twice`, wantEnv: true,
			body: `{"success":true,"result":[{"id":"k2"}],"result_info":{"total_pages":2},"result_info":{}}`},
		{name: "a member no list has", status: 200, why: `unknown member "next"`, wantEnv: true,
			body: `{"success":true,"result":[{"id":"k2"}],"next":"/accounts/acc1/stream/keys?page=2"}`},
		{name: "a KV-style cursor", status: 200, why: "a cursor to more keys", wantEnv: true,
			body: `{"success":true,"result":[{"id":"k2"}],"result_info":{"count":1,"cursor":"6Ck1la0VxJ0djhidm1MdX2F"}}`},
		{name: "an R2-style truncation", status: 200, why: "is_truncated", wantEnv: true,
			body: `{"success":true,"result":[{"id":"k2"}],"result_info":{"is_truncated":true}}`},
		{name: "a count of another page", status: 200, why: "count 2, 1 listed", wantEnv: true,
			body: `{"success":true,"result":[{"id":"k2"}],"result_info":{"count":2}}`},
		{name: "a paging member not read", status: 200, why: `unknown member "next_page"`, wantEnv: true,
			body: `{"success":true,"result":[{"id":"k2"}],"result_info":{"next_page":2}}`},
		{name: "pages not a number", status: 200, why: "total_pages is not a count", wantEnv: true,
			body: `{"success":true,"result":[{"id":"k2"}],"result_info":{"total_pages":"many"}}`},
		{name: "result_info not an object", status: 200, why: "result_info: not an object", wantEnv: true,
			body: `{"success":true,"result":[{"id":"k2"}],"result_info":"page 1 of 2"}`},
		{name: "messages not a list", status: 200, why: `"messages" is not an array`, wantEnv: true,
			body: `{"success":true,"errors":[],"messages":{"more":true},"result":[{"id":"k2"}]}`},
		{name: "an id spelled ID beside it", status: 200, why: `an id spelled "ID"`, wantEnv: true,
			body: `{"success":true,"errors":[],"messages":[],"result":[{"id":"k0","ID":"k1"}]}`},
		{name: "an id spelled Id beside it", status: 200, why: `an id spelled "Id"`, wantEnv: true,
			body: `{"success":true,"errors":[],"messages":[],"result":[{"Id":"k1","id":"k0"}]}`},
		{name: "a full first page, no total", status: 200, why: "a full page of 2", wantEnv: true,
			body: `{"success":true,"result":[{"id":"k0"},{"id":"k2"}],"result_info":{"page":1,"per_page":2,"count":2}}`},
		{name: "more keys than a page", status: 200, why: "a full page of 1", wantEnv: true,
			body: `{"success":true,"result":[{"id":"k0"},{"id":"k2"}],"result_info":{"per_page":1}}`},
		{name: "pages NaN", status: 200, why: "total_pages is not a count", wantEnv: true,
			body: `{"success":true,"result":[{"id":"k0"}],"result_info":{"total_pages":"NaN"}}`},
		{name: "page Inf", status: 200, why: "page is not a count", wantEnv: true,
			body: `{"success":true,"result":[{"id":"k0"}],"result_info":{"page":"+Inf"}}`},
		{name: "an id listed twice, a page looking short", status: 200, why: `id "K0" listed twice`, wantEnv: true,
			body: `{"success":true,"result":[{"id":"k0"},{"id":"K0"}],"result_info":{"page":1,"per_page":2}}`},
		{name: "no pages beside keys", status: 200, why: "total_pages 0 beside 2 keys", wantEnv: true,
			body: `{"success":true,"result":[{"id":"k0"},{"id":"k2"}],"result_info":{"page":1,"per_page":2,"total_pages":0}}`},
		{name: "pages negative", status: 200, why: "total_pages is not a count", wantEnv: true,
			body: `{"success":true,"result":[{"id":"k0"},{"id":"k2"}],"result_info":{"page":1,"per_page":2,"total_pages":-1}}`},
		{name: "pages a fraction read as 1", status: 200, why: "total_pages is not a count", wantEnv: true,
			body: `{"success":true,"result":[{"id":"k0"},{"id":"k2"}],"result_info":{"page":1,"per_page":2,"total_pages":1.0000000000000001}}`},
		{name: "an id padded", status: 200, why: "is not 1-32 characters", wantEnv: true,
			body: `{"success":true,"result":[{"id":" k1"}]}`},
		{name: "an id with a NUL", status: 200, why: "is not 1-32 characters", wantEnv: true,
			body: `{"success":true,"result":[{"id":"k1\u0000"}]}`},
		{name: "an id in full-width letters", status: 200, why: "is not 1-32 characters", wantEnv: true,
			body: `{"success":true,"result":[{"id":"\uff4b1"}]}`},
		{name: "an id with a zero-width space", status: 200, why: "is not 1-32 characters", wantEnv: true,
			body: `{"success":true,"result":[{"id":"k\u200b1"}]}`},
		{name: "oversized", status: 200, body: oversized, why: fmt.Sprintf("body larger than %d bytes", cloudflare.MaxListBody)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
				if tt.ctype != "" {
					w.Header().Set("Content-Type", tt.ctype)
				}
				if tt.status/100 == 3 {
					w.Header().Set("Location", "/elsewhere")
				}
				w.Header().Set("Cf-Ray", "8f1c2a3b4d5e6f70-SJC")
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			})
			c := newClient(t, rec.URL+"/client/v4/", cloudflare.Token(secret), 5*time.Second)
			list, err := c.ListSigningKeys(t.Context(), "acc1")
			if err != nil {
				t.Fatalf("ListSigningKeys: %v", err)
			}
			if list == nil || list.Response == nil {
				t.Fatalf("list = %+v", list)
			}
			if list.Status != tt.status || list.CFRay != "8f1c2a3b4d5e6f70-SJC" {
				t.Errorf("Status = %d, CFRay = %q", list.Status, list.CFRay)
			}
			if list.Listed != tt.listed {
				t.Fatalf("Listed = %v, want %v (Why %q)", list.Listed, tt.listed, list.Why())
			}
			if got := list.Has("k1"); got != tt.has {
				t.Errorf(`Has("k1") = %v, want %v`, got, tt.has)
			}
			if (list.Envelope != nil) != tt.wantEnv {
				t.Errorf("Envelope = %+v, BodyError %q", list.Envelope, list.BodyError)
			}
			if tt.listed {
				if list.Why() != "" {
					t.Errorf("Why = %q for a list", list.Why())
				}
				if tt.name != "no keys at all" && !list.Has("k2") && !list.Has(full[0]) {
					t.Error("a listed key is not in the list")
				}
			} else {
				if !strings.Contains(list.Why(), tt.why) {
					t.Errorf("Why = %q, want it to contain %q", list.Why(), tt.why)
				}
				if len(list.Why()) > 600 || strings.ContainsAny(list.Why(), "\r\n\t") {
					t.Errorf("Why is not one short line: %q", list.Why())
				}
				for _, id := range []string{"k1", "k2", "k3"} {
					if list.Has(id) {
						t.Errorf("Has(%q) = true on an answer that is not a list", id)
					}
				}
			}

			reqs := rec.requests()
			if len(reqs) != 1 {
				t.Fatalf("%d requests, want 1 (no redirect followed)", len(reqs))
			}
			r := reqs[0]
			if r.Method != http.MethodGet || r.URL.EscapedPath() != "/client/v4/accounts/acc1/stream/keys" {
				t.Errorf("request = %s %s", r.Method, r.URL.EscapedPath())
			}
			if r.Header.Get("Authorization") != "Bearer "+secret || r.Header.Get("User-Agent") != "revoker/test" ||
				r.Header.Get("Accept") != "application/json" {
				t.Errorf("headers = %v", r.Header)
			}
			assertNoSecret(t, "list", list)
		})
	}
}

func TestListSigningKeysInvalidAccount(t *testing.T) {
	rec := newRecorder(t, nil)
	c := newClient(t, rec.URL, cloudflare.Token(secret), 5*time.Second)
	for _, id := range []string{"", "..", "a/b", "a%2Fb", "a?b", "a b", strings.Repeat("a", 33), "é", "a\x00"} {
		list, err := c.ListSigningKeys(t.Context(), id)
		if !errors.Is(err, cloudflare.ErrInvalidIdentifier) {
			t.Errorf("%q: err = %v, want ErrInvalidIdentifier", id, err)
		}
		if list == nil || list.Response == nil || list.Status != 0 || list.Listed || list.Has("k") || list.Why() == "" {
			t.Errorf("%q: list = %+v", id, list)
		}
	}
	if n := len(rec.requests()); n != 0 {
		t.Fatalf("server saw %d requests for invalid identifiers", n)
	}
}

// TestCallErrorsNameTheMethod checks that the shared request path reports
// the method of the call that failed, and keeps the timeout contract.
func TestCallErrorsNameTheMethod(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	c := newClient(t, rec.URL, cloudflare.Token(secret), 50*time.Millisecond)

	list, err := c.ListSigningKeys(t.Context(), "acc")
	if !errors.Is(err, cloudflare.ErrTimeout) || !strings.HasPrefix(err.Error(), "cloudflare: GET "+rec.URL+"/accounts/acc/stream/keys: ") {
		t.Errorf("list: err = %v", err)
	}
	if list.Listed || list.Status != 0 || list.Duration <= 0 {
		t.Errorf("list = %+v", list)
	}
	assertNoSecret(t, "list error", err)

	_, err = c.DeleteSigningKey(t.Context(), "acc", "k")
	if !errors.Is(err, cloudflare.ErrTimeout) || !strings.HasPrefix(err.Error(), "cloudflare: DELETE "+rec.URL+"/accounts/acc/stream/keys/k: ") {
		t.Errorf("delete: err = %v", err)
	}

	srv := httptest.NewServer(http.NotFoundHandler())
	base := srv.URL
	srv.Close()
	c = newClient(t, base, cloudflare.Token(secret), 5*time.Second)
	list, err = c.ListSigningKeys(t.Context(), "acc")
	if err == nil || errors.Is(err, cloudflare.ErrTimeout) || list.Listed {
		t.Errorf("closed server: %+v, %v", list, err)
	}
	assertNoSecret(t, "list error", err)
}

// TestListKeepAlive checks that an oversized list is drained like a
// delete's body, so the next call reuses the connection.
func TestListKeepAlive(t *testing.T) {
	for _, size := range []int{cloudflare.MaxListBody, cloudflare.MaxListBody + 1} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			body := strings.Repeat(" ", size)
			rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) })
			c := newClient(t, rec.URL, cloudflare.Token(secret), 5*time.Second)
			for range 5 {
				if _, err := c.ListSigningKeys(t.Context(), "a"); err != nil {
					t.Fatal(err)
				}
			}
			if n := rec.conns.Load(); n != 1 {
				t.Errorf("%d connections for 5 sequential calls", n)
			}
		})
	}
}

func FuzzParseKeyResult(f *testing.F) {
	for _, s := range []string{
		`[]`, `[{"id":"k1"}]`, `[{"id":"K1","created":"2025-01-02T03:04:05Z"},{"id":"k2"}]`,
		`[{"id":"k1","id":"k2"}]`, `[{"ID":"k1"}]`, `[{"id":null}]`, `[{"id":1}]`, `[{"id":""}]`,
		`["k1"]`, `[[{"id":"k1"}]]`, `null`, `"ok"`, `{"id":"k1"}`, `[{"id":"k1"}] [1]`,
		`[{"id":"k\u0031","x":{"id":"k9"}}]`, `[{"id":"\xff"}]`, ` [ { "id" : "k1" } ] `,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		ids, err := cloudflare.ParseKeyResult(raw)
		if (err == nil) != (ids != nil) {
			t.Fatalf("ids %v with err %v", ids, err)
		}
		if err != nil {
			if strings.ContainsAny(err.Error(), "\r\n") || len(err.Error()) > 400 {
				t.Fatalf("error not one short line: %q", err)
			}
			return
		}
		// Whatever is accepted must be what a plain decode sees: an array
		// of objects, each with a non-empty string "id", and no other ids.
		var entries []map[string]json.RawMessage
		if err := json.Unmarshal(raw, &entries); err != nil || entries == nil {
			t.Fatalf("accepted %q, which is not an array of objects: %v", raw, err)
		}
		want := map[string]bool{}
		for i, e := range entries {
			var id string
			if e == nil || len(e["id"]) == 0 || e["id"][0] != '"' || json.Unmarshal(e["id"], &id) != nil || id == "" {
				t.Fatalf("accepted %q, entry %d without a string id", raw, i)
			}
			for name := range e {
				if name != "id" && strings.EqualFold(name, "id") {
					t.Fatalf("accepted %q, entry %d with an id spelled %q", raw, i, name)
				}
			}
			if !cloudflare.ValidIdentifier(id) {
				t.Fatalf("accepted %q, entry %d with the id %q, no identifier", raw, i, id)
			}
			want[cloudflare.FoldID(id)] = true
		}
		if len(want) != len(entries) {
			t.Fatalf("accepted %q, which lists an id twice", raw)
		}
		if len(ids) != len(want) {
			t.Fatalf("%q: ids %v, want %v", raw, ids, want)
		}
		for id := range ids {
			if !want[id] {
				t.Fatalf("%q: id %q not in %v", raw, id, want)
			}
		}
	})
}

// An id is listed under every spelling strings.EqualFold calls the same:
// "ſ" (U+017F) folds to "s", which lower-casing leaves as it is.
func TestKeyIdsFoldAsEqualFoldDoes(t *testing.T) {
	list := cloudflare.NewKeyList(nil, "k\u017f1", "\u212a2")
	for _, id := range []string{"ks1", "KS1", "k2", "K2"} {
		if !list.Has(id) {
			t.Errorf("Has(%q) = false on a list of %q and %q", id, "k\u017f1", "\u212a2")
		}
	}
	if list.Has("kt1") {
		t.Error("Has(kt1) on a list without it")
	}
}
