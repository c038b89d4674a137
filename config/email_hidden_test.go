package config_test

import (
	"strings"
	"testing"

	"github.com/revoker/revoker/config"
)

// The legacy pair swapped by mistake (the Global API Key in
// CLOUDFLARE_EMAIL) must not put the key on stderr (SPEC §6: secrets never
// appear in errors, not even in part), as the credentials file's e-mail
// check already takes care not to.
func TestKeyInEmailVariableNotInErrors(t *testing.T) {
	const key = "0123456789abcdef0123456789abcdef01234"
	env := map[string]string{"CLOUDFLARE_EMAIL": key, "CLOUDFLARE_API_KEY": "ops@example.com"}
	_, err := load(t, config.All, env)
	if err == nil {
		t.Fatal("a key as the e-mail was taken")
	}
	if strings.Contains(err.Error(), key[:12]) {
		t.Fatalf("the error shows the key: %v", err)
	}
}
