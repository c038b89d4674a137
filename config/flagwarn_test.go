package config_test

import (
	"flag"
	"io"
	"strings"
	"testing"

	"github.com/revoker/revoker/config"
)

// A secret given as a flag works but is readable by anyone who can list
// processes: Load's caller gets a warning naming what to use instead, and
// the warning never holds the secret.
func TestSecretFlagWarnings(t *testing.T) {
	const tok, key, pw, natsTok = "FLAGtok0123456789", "FLAGkey0123456789", "FLAGpw0123456789", "FLAGnatstok012345"
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want []string // each a warning must mention, one warning per entry
	}{
		{"token flag", []string{"--cloudflare-api-token", tok},
			nil, []string{"--cloudflare-api-token CLOUDFLARE_API_TOKEN_FILE"}},
		{"key flag", []string{"--cloudflare-email", "ops@example.com", "--cloudflare-api-key", key},
			nil, []string{"--cloudflare-api-key CLOUDFLARE_API_KEY"}},
		{"nats url with a password", []string{"--cloudflare-api-token-file", "testdata/token.txt", "--nats-url", "nats://svc:" + pw + "@127.0.0.1:4222"},
			nil, []string{"--nats-url REVOKER_NATS_URL REVOKER_NATS_CREDS"}},
		{"nats url list with a token", []string{"--cloudflare-api-token-file", "testdata/token.txt", "--nats-url", "nats://127.0.0.1:4222,nats://" + natsTok + "@127.0.0.1:4223"},
			nil, []string{"--nats-url REVOKER_NATS_URL"}},
		{"all three", []string{"--cloudflare-email", "ops@example.com", "--cloudflare-api-key", key, "--nats-url", "nats://" + natsTok + "@127.0.0.1:4222"},
			nil, []string{"--cloudflare-api-key", "--nats-url"}},
		{"secrets from the environment", nil,
			map[string]string{"CLOUDFLARE_API_TOKEN": tok, "REVOKER_NATS_URL": "nats://" + natsTok + "@127.0.0.1:4222"}, nil},
		{"plain nats url flag", []string{"--cloudflare-api-token-file", "testdata/token.txt", "--nats-url", "nats://127.0.0.1:4222"},
			nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("serve", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			ld := config.Register(fs, config.All)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			if _, err := ld.Load(func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok }); err != nil {
				t.Fatalf("Load: %v", err)
			}
			warns := config.SecretFlagWarnings(fs)
			if len(warns) != len(tt.want) {
				t.Fatalf("warnings = %q, want %d", warns, len(tt.want))
			}
			for i, w := range warns {
				for _, word := range strings.Fields(tt.want[i]) {
					if !strings.Contains(w, word) {
						t.Errorf("warning %q does not name %s", w, word)
					}
				}
				if !strings.Contains(w, "process") {
					t.Errorf("warning %q does not say why", w)
				}
				for _, s := range []string{tok, key, pw, natsTok} {
					if strings.Contains(w, s) {
						t.Errorf("warning %q holds a secret", w)
					}
				}
			}
		})
	}
}
