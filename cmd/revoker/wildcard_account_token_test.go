package main

import (
	"context"
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
	api := cloudflaretest.NewServer(cloudflaretest.WithAccountToken("cred-a", tokA, "", accA))
	t.Cleanup(api.Close)
	s := credentialsStack(t, api, map[string]string{
		"a.token":          tokA,
		"credentials.yaml": "credentials:\n  - name: cred-a\n    token_file: a.token\n    accounts: [\"*\"]\n",
	}, map[string]string{"REVOKER_MAX_DELIVER": "50", "REVOKER_RETRY_MAX_ELAPSED": "5s"})
	js := s.js
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
