package e2e

import (
	"testing"
	"time"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/queue/queuetest"
)

// takeoverAckWait is the ack wait of this test, the value the Kubernetes
// example ships (docs/cluster.md says why).
const takeoverAckWait = 10 * time.Second

// A replica killed (SIGKILL) while it holds urgent events between retries
// loses none of them: once its deliveries' ack wait runs out, JetStream
// hands them to the other replica, which revokes them. SPEC §9 bounds this
// by REVOKER_ACK_WAIT; the test allows 3 s more for the redelivery and the
// call.
func TestTakeoverAfterReplicaKilled(t *testing.T) {
	skipShort(t)
	c := queuetest.Cluster(t, 3)
	api := cloudflaretest.NewServer(cloudflaretest.WithToken(token))
	t.Cleanup(api.Close)
	env := []string{
		"REVOKER_ACK_WAIT=" + takeoverAckWait.String(),
		"REVOKER_RATE_LIMIT=0",
		"REVOKER_IP_RATE_LIMIT=0",
		// The first four calls of each key fail; the holder dies once every
		// key has had three, so each still has a failure ahead of it.
		"REVOKER_RETRY_INITIAL=1s",
		"REVOKER_RETRY_MAX_INTERVAL=5s",
		"REVOKER_RETRY_MAX_ELAPSED=2m", // no give-back: the events stay held
	}
	a := startWorker(t, "worker-a", c.URLs(), api, env...)
	b := startWorker(t, "worker-b", c.URLs(), api, env...)
	a.waitReady(30 * time.Second)
	b.waitReady(30 * time.Second)

	const failures = 4
	ks := keys("take", 6)
	for _, k := range ks {
		api.Script(k, repeat(503, failures)...)
	}
	newPublisher(t, c.URLs()).publishAll("revoke.urgent", ks)

	waitUntil(t, 60*time.Second, "every key in retry", func() bool {
		calls := map[string]int{}
		for _, q := range api.Requests() {
			calls[q.KeyID]++
		}
		for _, k := range ks {
			if calls[k] < failures-1 {
				return false
			}
		}
		return true
	})
	holder, survivor := a, b
	if b.metric("revoker_inflight_events") > a.metric("revoker_inflight_events") {
		holder, survivor = b, a
	}
	held := holder.metric("revoker_inflight_events")
	if held < 1 {
		t.Fatalf("neither worker holds an event (a %v, b %v)", a.metric("revoker_inflight_events"), b.metric("revoker_inflight_events"))
	}
	if n := deletedCount(api, ks); n != 0 {
		t.Fatalf("%d keys revoked before the kill: the scripted failures did not hold them", n)
	}
	killed := time.Now()
	holder.kill()
	t.Logf("killed %s holding %v of %d urgent events", holder.name, held, len(ks))

	// The ack wait, one more 503, two backoff intervals and a loaded
	// machine's slack; still far short of events never delivered again.
	waitAllDeleted(t, api, ks, takeoverAckWait+10*time.Second)
	t.Logf("every key revoked %v after the kill (ack wait %v)", time.Since(killed).Round(time.Millisecond), takeoverAckWait)
	// The API's confirmation comes first; the count follows once each
	// event's outcome record is stored and the event acked.
	waitUntil(t, 10*time.Second, survivor.name+" counting all the events revoked (its own and the killed worker's)", func() bool {
		return survivor.metric("revoker_events_processed_total", `outcome="revoked"`) == float64(len(ks))
	})
	survivor.waitReady(10 * time.Second)
}

func repeat(status, n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = status
	}
	return out
}
