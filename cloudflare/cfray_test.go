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

// A CF-Ray of megabytes (a hostile or broken proxy) must not travel into
// records and log lines whole: it is kept to 128 characters, on one line.
func TestCFRayBounded(t *testing.T) {
	tests := []struct {
		name, ray, want string
	}{
		{"normal", "8f1c2a3b4d5e6f70-SJC", "8f1c2a3b4d5e6f70-SJC"},
		{"exactly 128", strings.Repeat("a", 128), strings.Repeat("a", 128)},
		{"2 MiB", strings.Repeat("b", 2<<20), strings.Repeat("b", 127) + "…"},
		{"multi-byte", strings.Repeat("é", 200), strings.Repeat("é", 127) + "…"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder(t, func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Cf-Ray", tt.ray)
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, `{"success":true,"errors":[],"messages":[],"result":"ok"}`)
			})
			c := newClient(t, rec.URL, cloudflare.Token(secret), 10*time.Second)
			resp, err := c.DeleteSigningKey(t.Context(), "acc1", "key1")
			if err != nil {
				t.Fatal(err)
			}
			if n := utf8.RuneCountInString(resp.CFRay); n > 128 {
				t.Fatalf("CF-Ray kept %d characters", n)
			}
			if resp.CFRay != tt.want {
				t.Errorf("CF-Ray = %.200q, want %.200q", resp.CFRay, tt.want)
			}
		})
	}
}

// The fast path for plain rays must say exactly what cleaning says.
func FuzzCutRayFastPathAgrees(f *testing.F) {
	for _, s := range []string{
		"8f1c2a3b4d5e6f70-SJC", "", " ", "a b", "\x7f", "~", "!", "é", "a\tb",
		strings.Repeat("a", cloudflare.MaxCFRay), strings.Repeat("a", cloudflare.MaxCFRay+1),
		visible(), // every character the fast path keeps as it is
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ray string) {
		if got, want := cloudflare.CutRay(ray), cloudflare.CleanRay(ray); got != want {
			t.Fatalf("cutRay(%q) = %q, cleaning gives %q", ray, got, want)
		}
	})
}

// visible is every printable ASCII character but the space, once each.
func visible() string {
	var b strings.Builder
	for c := byte('!'); c <= '~'; c++ {
		b.WriteByte(c)
	}
	return b.String()
}
