package cloudflare

import "testing"

// TestTargetIsJoinPath: the URL joined by hand is the one url.JoinPath
// makes, whatever the base URL's path holds.
func TestTargetIsJoinPath(t *testing.T) {
	bases := []string{
		"https://api.cloudflare.com/client/v4",
		"https://api.cloudflare.com/client/v4/",
		"https://api.cloudflare.com",
		"https://api.cloudflare.com/",
		"http://127.0.0.1:8080",
		"http://127.0.0.1:8080/a/../b/./c//d",
		"https://proxy.example/a%20b/c%2Fd/",
		"https://proxy.example/é/ü",
		"https://[::1]:8443/x/..",
		"https://proxy.example/..",
	}
	paths := [][]string{
		{"accounts", "acct01", "stream", "keys", "k1"},
		{"accounts", "acct01", "stream", "keys"},
		{"accounts", "x"},
		{"accounts", "..", "keys"}, // not identifiers: url.JoinPath itself
		{"accounts", "a/b"},
		{"accounts", ""},
		{},
	}
	for _, b := range bases {
		u, err := parseBaseURL(b)
		if err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		c, err := New(Config{BaseURL: b, Credential: Token("t")})
		if err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		for _, p := range paths {
			if got, want := c.target(p), u.JoinPath(p...).String(); got != want {
				t.Errorf("base %q, path %q: %q, want %q", b, p, got, want)
			}
		}
	}
}
