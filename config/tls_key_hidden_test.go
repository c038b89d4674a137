package config_test

import (
	"strings"
	"testing"

	"github.com/revoker/revoker/config"
)

// A private key pasted where the path of its file belongs must not reach
// stderr (SPEC §6: secrets never appear in errors, not even in part), for
// the ingress's key as for NATS's (REVOKER_NATS_TLS_KEY is never shown).
func TestIngressTLSKeyValueNotInErrors(t *testing.T) {
	const pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDzq7PastedKeyBytes\n-----END PRIVATE KEY-----\n"
	for _, env := range []map[string]string{
		{"REVOKER_NATS_TLS_CERT": "testdata/cert.pem", "REVOKER_NATS_TLS_KEY": pem},
		{"REVOKER_INGRESS_ADDR": "127.0.0.1:8443", "REVOKER_INGRESS_CALLERS_FILE": "testdata/cert.pem",
			"REVOKER_INGRESS_TLS_CERT": "testdata/cert.pem", "REVOKER_INGRESS_TLS_KEY": pem},
	} {
		e := baseEnv()
		for k, v := range env {
			e[k] = v
		}
		_, err := load(t, config.All, e)
		if err == nil {
			t.Fatal("a key pasted as a path was taken")
		}
		if strings.Contains(err.Error(), "MIIEvQ") || strings.Contains(err.Error(), "PastedKeyBytes") {
			t.Errorf("the error shows the key: %v", err)
		}
	}
}
