package queue_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestSlowPacesEveryReplicaOfABudgetWithoutARate: two replicas share
// a budget with no rate of its own (rate 0, no address limit). One hears
// a Ratelimit header with little left (worker.pace: "with no limit of our
// own, always" Slow) or a stated quota (Gate.Quota on a gate without a
// rate: Slow): a pacing shorter than SlowHold, written to the shared entry
// by Budget.Defer ("moves the earliest start of any sharer's next call to
// until"). The other replica, once its watch has brought the entry, must
// not start a call before it.
func TestSlowPacesEveryReplicaOfABudgetWithoutARate(t *testing.T) {
	a, b, ctx := reservedPair(t)
	js, err := jetstream.New(b.nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, queue.BudgetBucket)
	if err != nil {
		t.Fatal(err)
	}

	until := time.Now().Add(900 * time.Millisecond) // under throttle.SlowHold: pacing, not a hold
	a.gate.Slow(until)
	// The deferral is in the shared entry.
	queuetest.Eventually(t, 10*time.Second, "a's deferral in the entry", func() bool {
		e, err := kv.Get(ctx, "token_0a1b2c3d")
		if err != nil {
			return false
		}
		var st struct {
			Next time.Time `json:"next"`
		}
		return json.Unmarshal(e.Value(), &st) == nil && !st.Next.Before(until.Add(-50*time.Millisecond))
	})
	// And in b's view of it: the watch brings it (a budget without a rate
	// writes nothing per call, so b learns of it only so).
	queuetest.Eventually(t, 10*time.Second, "b's view of the deferral", func() bool {
		return !b.budget.CachedNext().Before(until.Add(-50*time.Millisecond)) || time.Now().After(until)
	})
	const margin = 20 * time.Millisecond
	if time.Now().After(until.Add(-200 * time.Millisecond)) {
		t.Skip("machine too slow to tell")
	}
	pm, err := b.gate.Acquire(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := time.Now()
	pm.Release()
	if got.Before(until.Add(-margin)) {
		t.Errorf("replica b got a permit %v before the deferral a wrote to the shared entry (Budget.Defer, rate 0)",
			until.Sub(got).Round(time.Millisecond))
	}
}
