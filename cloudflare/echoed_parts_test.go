package cloudflare_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/revoker/revoker/cloudflare"
)

// TestEchoedSecretKeptOut: whatever an answer echoes of the
// credential must not reach what the Response keeps (BodyError, the
// envelope's Summary, CFRay): they go into logs, details and records.
// SPEC §6: secrets never appear in logs, records or errors, "not even in
// part".
func TestEchoedSecretKeptOut(t *testing.T) {
	const token = "cfut_SeCrEtT0kenValue0123456789abcdefXYZ"
	// escapeAll writes s as JSON \u escapes: the same string to any JSON
	// reader.
	escapeAll := func(s string) string {
		var sb strings.Builder
		for _, r := range s {
			sb.WriteString(`\u00`)
			sb.WriteString(strings.ToLower(string("0123456789ABCDEF"[r>>4]) + string("0123456789ABCDEF"[r&15])))
		}
		return sb.String()
	}
	for _, tc := range []struct {
		name   string
		status int
		header func(w http.ResponseWriter, r *http.Request)
		body   func(r *http.Request) string
	}{
		{"CF-Ray header echoing the Authorization header", 502,
			func(w http.ResponseWriter, r *http.Request) { w.Header().Set("Cf-Ray", r.Header.Get("Authorization")) },
			func(*http.Request) string { return "<html>bad gateway</html>" }},
		{"Content-Type header echoing the token", 404,
			func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "))
			},
			func(*http.Request) string { return "<html>not found</html>" }},
		{"envelope message quoting the token JSON-escaped", 400, nil,
			func(r *http.Request) string {
				v := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
				return `{"success":false,"errors":[{"code":6003,"message":"Invalid request headers","error_chain":[{"code":6111,"message":"Invalid format for Authorization header: ` + escapeAll(v) + `"}]}],"messages":[],"result":null}`
			}},
		{"proxy page quoting the first 24 characters of the token", 404, nil,
			func(r *http.Request) string {
				v := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
				return "<html>No route. Authorization: Bearer " + v[:24] + "...</html>"
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tc.header != nil {
					tc.header(w, r)
				}
				w.WriteHeader(tc.status)
				io.WriteString(w, tc.body(r))
			}))
			defer ts.Close()
			c, err := cloudflare.New(cloudflare.Config{BaseURL: ts.URL, Credential: cloudflare.Token(token), Timeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			resp, err := c.DeleteSigningKey(context.Background(), "acct", "key")
			if err != nil {
				t.Fatal(err)
			}
			kept := resp.CFRay + " " + resp.BodyError + " " + resp.Envelope.Summary()
			if strings.Contains(kept, token[:16]) {
				t.Fatalf("the answer as kept holds (part of) the secret: %q", kept)
			}
		})
	}
}

// TestHugeRetryAfterIsAHold: a 429 whose Retry-After (or
// Retry-After-Ms) is a delta larger than 32 digits is still a wait asked
// for, to be capped (SPEC §4: "Any hold that the API asks for —
// Retry-After, Retry-After-Ms … — is capped at 5 minutes"), not read as
// absent: absent, a 429 pauses only for the current backoff interval
// (milliseconds), and calls resume at once into a 5-minute block.
func TestHugeRetryAfterIsAHold(t *testing.T) {
	huge := "1" + strings.Repeat("0", 40)
	for name, h := range map[string]string{"Retry-After": huge, "Retry-After-Ms": huge} {
		t.Run(name, func(t *testing.T) {
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set(name, h)
				w.WriteHeader(429)
				io.WriteString(w, `{"success":false,"errors":[{"code":971,"message":"Please wait and consider throttling your request speed"}],"messages":[],"result":null}`)
			}))
			defer ts.Close()
			c, err := cloudflare.New(cloudflare.Config{BaseURL: ts.URL, Credential: cloudflare.Token("cfut_0123456789abcdef"), Timeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			resp, err := c.DeleteSigningKey(context.Background(), "acct", "key")
			if err != nil {
				t.Fatal(err)
			}
			if !resp.HasRetryAfter || resp.RetryAfter < 5*time.Minute {
				t.Fatalf("%s: %s read as HasRetryAfter=%v RetryAfter=%v, want a wait of at least the 5-minute cap", name, h, resp.HasRetryAfter, resp.RetryAfter)
			}
		})
	}
}
