package main

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestRefusedCredentialsEventsLeaveTheOthersTheirPlaces: with a
// credentials file, a credential the API refuses makes only its own
// accounts wait (SPEC §6). Its events, retried like unauthorized, are set
// aside as events waiting for their own budget are, not counted among the
// lane's retries of the API's trouble, so more of them than the lane
// holds do not keep another account's urgent event from being fetched
// and revoked while they wait.
func TestRefusedCredentialsEventsLeaveTheOthersTheirPlaces(t *testing.T) {
	const accA, accB, tokA, tokB = "acct0a0a", "acct0b0b", "tokenOfAccountA0123456789", "tokenOfAccountB0123456789"
	api := cloudflaretest.NewServer(cloudflaretest.WithAccountToken("cred-a", tokA, "", accA),
		cloudflaretest.WithAccountToken("cred-b", tokB, "", accB))
	t.Cleanup(api.Close)
	api.SetTokenStatus("cred-a", "disabled")
	s := credentialsStack(t, api, map[string]string{
		"a.token": tokA, "b.token": tokB,
		"credentials.yaml": "credentials:\n" +
			"  - name: cred-a\n    token_file: a.token\n    accounts: [" + accA + "]\n" +
			"  - name: cred-b\n    token_file: b.token\n    accounts: [" + accB + "]\n",
	}, map[string]string{
		// One call slot: a lane holds two events. A's six wait a minute
		// each delivery, far past the deadline below.
		"REVOKER_CONCURRENCY": "1", "REVOKER_RETRY_MAX_INTERVAL": "1s", "REVOKER_RETRY_MAX_ELAPSED": "60s",
	})
	js := s.js
	s.startWorker() // ready: cred-b works
	publish := func(acct, key string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		body := []byte(`{"account_id":"` + acct + `","key_id":"` + key + `"}`)
		if _, err := js.Publish(ctx, "revoke.urgent", body, jetstream.WithMsgID(acct+":"+key)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 6 {
		publish(accA, fmt.Sprintf("keya%d", i))
	}
	queuetest.Eventually(t, 10*time.Second, "A's events taken, their credential refused", func() bool {
		c, err := js.Consumer(context.Background(), s.cfg().Stream, s.cfg().Topology().Durable("revoke.urgent"))
		if err != nil {
			return false
		}
		info, err := c.Info(context.Background())
		return err == nil && info.NumAckPending >= 2
	})
	publish(accB, "keyb0")
	queuetest.Eventually(t, 20*time.Second, "account B's urgent event revoked while A's wait", func() bool {
		return api.Deleted(accB, "keyb0")
	})
	for i := range 6 {
		if api.Deleted(accA, fmt.Sprintf("keya%d", i)) {
			t.Fatalf("a key of account A was deleted with its credential refused")
		}
	}
}

// credentialsStack is a stack whose worker reads REVOKER_CREDENTIALS_FILE:
// files (credentials.yaml and the token files it names) are written to a
// directory of their own, and extra is added to the environment.
func credentialsStack(t *testing.T, api *cloudflaretest.Server, files, extra map[string]string) *stack {
	t.Helper()
	dir := t.TempDir()
	for n, v := range files {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ns := queuetest.Server(t)
	env := maps.Clone(hFastEnv)
	maps.Copy(env, map[string]string{
		"REVOKER_NATS_URL": ns.ClientURL(), "CLOUDFLARE_BASE_URL": api.URL,
		"REVOKER_CREDENTIALS_FILE": filepath.Join(dir, "credentials.yaml"),
	})
	maps.Copy(env, extra)
	nc, js := queuetest.Connect(t, ns)
	return &stack{t: t, ns: ns, api: api, env: env, nc: nc, js: js}
}
