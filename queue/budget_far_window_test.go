package queue_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestFarReplicaKeepsTheWindow: a replica 50 ms each way from the
// NATS server and one next to it share one budget at rate 4, both with a
// scheduled backlog. SPEC §6: at most 4 calls start in any one-second
// window, whatever the number of replicas; §9: replicas with a slower path
// are in scope. The far replica's estimate of the server's clock may be
// off by half its round trip, so it starts each call up to that much
// after its slot (notBefore): had the next slot stayed one interval after
// the slot, the next sharer's call could come I-50ms after it, and five
// calls within 4*I-50ms = 970 ms. The next slot is spaced by the clock's
// spread as well.
func TestFarReplicaKeepsTheWindow(t *testing.T) {
	if testing.Short() {
		t.Skip("a 15 s backlog through a slow path")
	}
	const rate = 4
	srv := queuetest.Server(t)
	api := cloudflaretest.NewServer()
	t.Cleanup(api.Close)
	path := newSlowPath(t, srv.ClientURL()[len("nats://"):], 50*time.Millisecond)
	far := newBReplicaClock(t, path.URL(), 1, api, "f", rate, 2, nil)
	near := newBReplica(t, srv, api, "a", rate, 2)
	far.work(1, 2, keysOf("f", 1000))
	near.work(1, 2, keysOf("a", 1000))
	queuetest.Eventually(t, 40*time.Second, "60 calls", func() bool { return api.Count() >= 60 })
	t.Logf("near %d calls, far %d", near.calls.Load(), far.calls.Load())
	reqs := api.Requests()
	slices.SortFunc(reqs, func(a, b cloudflaretest.Request) int { return a.At.Compare(b.At) })
	farFirst := 0
	for i := rate; i < len(reqs); i++ {
		if reqs[i].At.Sub(reqs[i-rate].At) < time.Second && strings.HasPrefix(reqs[i-rate].KeyID, "f") && strings.HasPrefix(reqs[i].KeyID, "a") {
			farFirst++
		}
	}
	t.Logf("%d windows of 5 calls in under a second open with a far call and close with a near one", farFirst)
	checkWindow(t, reqs, rate)
}
