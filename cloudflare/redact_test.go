package cloudflare_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/revoker/revoker/cloudflare"
)

const redactToken = "cfut_SeCrEtT0kenValue0123456789abcdefXYZ"

func redactHeader() http.Header {
	return http.Header{"Authorization": {"Bearer " + redactToken}, "X-Auth-Key": {"legacyKey0123456789"}}
}

func TestRedactSecrets(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"8f1c2d3e4a5b6c7d-LHR", "8f1c2d3e4a5b6c7d-LHR"},
		{"Bearer " + redactToken, "Bearer [redacted]"},
		{"a " + redactToken[:8] + " b", "a [redacted] b"},
		{"a " + redactToken[:7] + " b", "a " + redactToken[:7] + " b"}, // shorter than a part
		{redactToken[10:30] + "|" + redactToken[:12], "[redacted]|[redacted]"},
		{"key legacyKey0123456789 and cfut_ alone", "key [redacted] and cfut_ alone"},
	} {
		if got := cloudflare.RedactSecrets(tc.in, redactHeader()); got != tc.want {
			t.Errorf("RedactSecrets(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// FuzzRedactSecrets: whatever the text, no run of 8 characters of a secret
// is left in it.
func FuzzRedactSecrets(f *testing.F) {
	f.Add("Bearer " + redactToken)
	f.Add(redactToken[3:20] + redactToken[25:])
	f.Add("xx" + "legacyKey0123456789"[2:12])
	f.Fuzz(func(t *testing.T, s string) {
		got := cloudflare.RedactSecrets(s, redactHeader())
		for _, secret := range []string{redactToken, "legacyKey0123456789"} {
			for i := 0; i+8 <= len(secret); i++ {
				if strings.Contains(got, secret[i:i+8]) {
					t.Fatalf("RedactSecrets(%q) = %q keeps %q of a secret", s, got, secret[i:i+8])
				}
			}
		}
	})
}
