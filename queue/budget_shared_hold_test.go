package queue_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/queue/queuetest"
	"github.com/revoker/revoker/routing"
)

// TestNothingLeftHoldsEveryReplicaOfABudgetWithoutARate: two replicas
// share a budget with no rate of its own (rate: 0, no address limit). One
// hears an answer whose Ratelimit header says nothing is left, resetting
// in 1 s: a hold the API asks for (SPEC §4), which holds every replica
// sharing the credential (§9), however short, even where no rate spaces
// the calls. The other replica is held, and gets no permit before the
// reset.
func TestNothingLeftHoldsEveryReplicaOfABudgetWithoutARate(t *testing.T) {
	a, b, ctx := reservedPair(t)

	const reset = time.Second // no longer than throttle.SlowHold: once taken as pacing
	heardAt := time.Now()
	routing.Heed(a.gate, &cloudflare.Response{Status: http.StatusOK,
		RateLimit: cloudflare.RateLimit{Known: true, Remaining: 0, Reset: reset}}, time.Second)
	until := heardAt.Add(reset)
	// The estimates of the server's clock may differ by a fraction of a
	// millisecond here.
	const margin = 20 * time.Millisecond
	// What b knows of the budget's hold, kept once the watch brought it,
	// whether or not the hold is over by then.
	queuetest.Eventually(t, 10*time.Second, "b knowing a's hold", func() bool {
		end, _ := b.budget.Held()
		return !end.Before(until.Add(-margin))
	})
	if time.Now().Before(until.Add(-100 * time.Millisecond)) {
		pm, err := b.gate.Acquire(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		got := time.Now()
		pm.Release()
		if got.Before(until.Add(-margin)) {
			t.Errorf("replica b got a permit %v before the hold a heard ends (Ratelimit: nothing left, reset %v)",
				until.Sub(got).Round(time.Millisecond), reset)
		}
	}
}
