package cloudflare_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/revoker/revoker/cloudflare"
)

// TestCFRayRedactedStaysWithinItsLimit: a CF-Ray is kept up to 128
// characters (SPEC §10), its echoes of the credential redacted too. A ray
// of 128 characters (within the limit) whose 8-character runs of the
// token each become the 10-character "[redacted]" is cut again, visibly.
func TestCFRayRedactedStaysWithinItsLimit(t *testing.T) {
	run := secret[:8] // "SECRETto"
	ray := strings.Repeat(run+"-", 14)
	ray += strings.Repeat("x", 128-len(ray))
	if len(ray) != 128 {
		t.Fatalf("setup: %d", len(ray))
	}
	rec := newRecorder(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Cf-Ray", ray)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"success":true,"errors":[],"messages":[],"result":"ok"}`)
	})
	c := newClient(t, rec.URL, cloudflare.Token(secret), 10*time.Second)
	resp, err := c.DeleteSigningKey(t.Context(), "acc1", "key1")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(resp.CFRay, run) {
		t.Fatalf("secret run kept: %q", resp.CFRay)
	}
	if n := utf8.RuneCountInString(resp.CFRay); n > cloudflare.MaxCFRay || !strings.HasSuffix(resp.CFRay, "…") {
		t.Fatalf("CF-Ray kept %d characters (limit %d), cut visibly or not: %q", n, cloudflare.MaxCFRay, resp.CFRay)
	}
}
