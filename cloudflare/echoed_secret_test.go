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

// TestAnswerEchoingTheCredentialKeepsItOut: an answer that echoes the
// request's auth headers (a proxy's debug page at a wrong base URL, an
// error message quoting the header) must not carry the secret into what
// the Response keeps (BodyError, the envelope's messages): those go into
// log lines, readiness reasons and dead-letter details, which must never
// hold the token (SPEC §5, §10; "Secrets never appear in its errors").
func TestAnswerEchoingTheCredentialKeepsItOut(t *testing.T) {
	const token = "cfut_SeCrEtT0kenValue0123456789abcdefXYZ"
	for name, creds := range map[string]cloudflare.Credential{
		"token":  cloudflare.Token(token),
		"legacy": cloudflare.LegacyKey("ops@example.com", token),
	} {
		for _, tc := range []struct {
			name   string
			status int
			body   func(r *http.Request) string
		}{
			{"404 page echoing the headers", 404, func(r *http.Request) string {
				return "<html><body>No route. Request headers: Authorization=" + r.Header.Get("Authorization") +
					" X-Auth-Key=" + r.Header.Get("X-Auth-Key") + "</body></html>"
			}},
			{"400 envelope quoting the header", 400, func(r *http.Request) string {
				v := r.Header.Get("Authorization") + r.Header.Get("X-Auth-Key")
				return `{"success":false,"errors":[{"code":6003,"message":"Invalid request headers","error_chain":[{"code":6111,"message":"Invalid format for Authorization header: ` + v + `"}]}],"messages":[],"result":null}`
			}},
		} {
			t.Run(name+"/"+tc.name, func(t *testing.T) {
				ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					w.WriteHeader(tc.status)
					io.WriteString(w, tc.body(r))
				}))
				defer ts.Close()
				c, err := cloudflare.New(cloudflare.Config{BaseURL: ts.URL, Credential: creds, Timeout: time.Second})
				if err != nil {
					t.Fatal(err)
				}
				resp, err := c.DeleteSigningKey(context.Background(), "acct", "key")
				if err != nil {
					t.Fatal(err)
				}
				kept := resp.BodyError + " " + resp.Envelope.Summary()
				if strings.Contains(kept, token) {
					t.Fatalf("the answer's text as kept holds the secret: %q", kept)
				}
			})
		}
	}
}
