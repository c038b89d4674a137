package main

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestRefusedCredentialsRecheckLeavesTheOthersTheirPlaces: cred-a
// is refused (its token disabled); its principal is then past its rate
// limit, so its checks are answered 429 with Retry-After: 300, which holds
// cred-a's budget for 5 minutes (SPEC §4, §9). cred-a's events, retried
// like unauthorized, each check the credential again before their next
// call: that check waits for cred-a's hold. SPEC §6: a refused credential
// makes only its own accounts wait, never the others; §9: an incident in
// one account never waits behind another account's hold beyond what the
// shared concurrency and address limit impose. Account B's urgent event
// must still be revoked.
func TestRefusedCredentialsRecheckLeavesTheOthersTheirPlaces(t *testing.T) {
	const accA, accB, tokA, tokB = "acct0a0a", "acct0b0b", "tokenOfAccountA0123456789", "tokenOfAccountB0123456789"
	var refusedA atomic.Int64
	api := cloudflaretest.NewServer(cloudflaretest.WithAccountToken("cred-a", tokA, "", accA),
		cloudflaretest.WithAccountToken("cred-b", tokB, "", accB),
		cloudflaretest.WithResponder(func(r cloudflaretest.Request) (int, http.Header, string, bool) {
			if r.Credential != "cred-a" || r.Method != http.MethodDelete {
				return 0, nil, "", false
			}
			// cred-a's token was revoked meanwhile, and its principal's
			// budget is spent for 5 minutes.
			refusedA.Add(1)
			return http.StatusForbidden, http.Header{"Ratelimit": {`"default";r=0;t=300`}},
				`{"success":false,"errors":[{"code":10000,"message":"Authentication error"}],"messages":[],"result":null}`, true
		}))
	t.Cleanup(api.Close)
	s := credentialsStack(t, api, map[string]string{
		"a.token": tokA, "b.token": tokB,
		"credentials.yaml": "credentials:\n" +
			"  - name: cred-a\n    token_file: a.token\n    accounts: [" + accA + "]\n" +
			"  - name: cred-b\n    token_file: b.token\n    accounts: [" + accB + "]\n",
	}, map[string]string{
		// Two call slots: one for cred-a's calls, one for cred-b's.
		"REVOKER_CONCURRENCY": "2", "REVOKER_RETRY_MAX_INTERVAL": "10ms", "REVOKER_RETRY_MAX_ELAPSED": "60s",
	})
	js := s.js
	s.startWorker()
	publish := func(acct, key string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		body := []byte(`{"account_id":"` + acct + `","key_id":"` + key + `"}`)
		if _, err := js.Publish(ctx, "revoke.urgent", body, jetstream.WithMsgID(acct+":"+key)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 8 {
		publish(accA, fmt.Sprintf("keya%d", i))
	}
	queuetest.Eventually(t, 15*time.Second, "cred-a refused by a DELETE that says its budget is spent", func() bool {
		return refusedA.Load() >= 1
	})
	queuetest.Eventually(t, 10*time.Second, "A's events taken", func() bool {
		c, err := js.Consumer(context.Background(), s.cfg().Stream, s.cfg().Topology().Durable("revoke.urgent"))
		if err != nil {
			return false
		}
		info, err := c.Info(context.Background())
		return err == nil && info.NumAckPending >= 4
	})
	publish(accB, "keyb0")
	queuetest.Eventually(t, 20*time.Second, "account B's urgent event revoked while cred-a's accounts wait", func() bool {
		return api.Deleted(accB, "keyb0")
	})
}
