package config_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/revoker/revoker/config"
)

// The NATS client refuses a list mixing ws:// or wss:// URLs with nats://
// or tls:// ones: such a REVOKER_NATS_URL is a bad value, refused by Load
// and named, like any other (SPEC §6), not a failure of the first connect.
func TestNATSURLMixedWebsocketSchemesRefused(t *testing.T) {
	for _, v := range []string{
		"nats://127.0.0.1:4222,ws://127.0.0.1:8080",
		"wss://a.example:443, tls://u:pw-never-shown@b.example:4222",
	} {
		env := baseEnv()
		env["REVOKER_NATS_URL"] = v
		_, err := load(t, config.All, env)
		var ce *config.Error
		if !errors.As(err, &ce) || ce.Name != "REVOKER_NATS_URL" {
			t.Fatalf("%q: err %v, want a *config.Error naming REVOKER_NATS_URL", v, err)
		}
		if strings.Contains(err.Error(), "pw-never-shown") {
			t.Fatalf("the error shows the password: %v", err)
		}
	}
}
