package main

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/queue/queuetest"
)

// An account API token given "*" (every account no other credential
// names) works for its account: its check must ask the account endpoint
// ("whichever answers", SPEC §6) with an account it serves, and not leave
// the credential refused for ever, so its account's event is revoked.
func TestWildcardAccountTokenWorks(t *testing.T) {
	const accA, tokA = "acct0a0a", "tokenOfAccountA0123456789"
	dir := t.TempDir()
	files := map[string]string{
		"a.token":          tokA,
		"credentials.yaml": "credentials:\n  - name: cred-a\n    token_file: a.token\n    accounts: [\"*\"]\n",
	}
	for n, v := range files {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	api := cloudflaretest.NewServer(cloudflaretest.WithAccountToken("cred-a", tokA, "", accA))
	t.Cleanup(api.Close)
	ns := queuetest.Server(t)
	env := maps.Clone(hFastEnv)
	maps.Copy(env, map[string]string{
		"REVOKER_NATS_URL": ns.ClientURL(), "CLOUDFLARE_BASE_URL": api.URL,
		"REVOKER_CREDENTIALS_FILE": filepath.Join(dir, "credentials.yaml"),
		"REVOKER_MAX_DELIVER":      "50", "REVOKER_RETRY_MAX_ELAPSED": "5s",
	})
	nc, js := queuetest.Connect(t, ns)
	s := &stack{t: t, ns: ns, api: api, env: env, nc: nc, js: js}
	s.ensure()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = js.Publish(ctx, "revoke.urgent", []byte(`{"account_id":"`+accA+`","key_id":"keya0"}`), jetstream.WithMsgID("a0"))
	}()
	s.startWorker()
	queuetest.Eventually(t, 20*time.Second, "account A's key revoked with its account token", func() bool {
		return api.Deleted(accA, "keya0")
	})
}
