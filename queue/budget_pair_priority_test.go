package queue_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
	"github.com/revoker/revoker/throttle"
)

// TestSharedSlotGoesToUrgentFirst: with a credentials file, every
// call passes its budget's gate, then the shared gate (the calls in
// flight), each on a budget kept in JetStream, as routing wires them. A
// scheduled call of a slow budget (0.2 a second) whose rate slot went by
// while it waited for the shared slot keeps that shared slot while it
// waits for its budget's next slot, 5 s away, but not while an urgent
// call of another budget (rate 4, slot free) waits for a shared slot: it
// gives it back. SPEC §6: "the shared call slots and the address limit go
// to waiting events in priority order, whatever their budget"; §3: an
// urgent event's first call starts no later than the calls in flight, the
// urgent events ahead of it, and one rate-limit interval.
func TestSharedSlotGoesToUrgentFirst(t *testing.T) {
	srv := queuetest.Server(t)
	_, js := queuetest.Connect(t, srv)
	mk := func(id string, rate float64, conc int) *throttle.Gate {
		b, err := queue.NewBudget(js, queue.BudgetConfig{ID: func() string { return id }, Rate: rate, Create: true, Log: zaptest.NewLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		g := throttle.New(throttle.Config{Priorities: 2, Concurrency: conc, Rate: rate, Budget: b})
		t.Cleanup(func() { g.Close(); b.Close() })
		return g
	}
	shared := mk("address", 0, 1) // REVOKER_CONCURRENCY=1
	slow := mk("budget:slow", 0.2, throttle.Unbounded)
	fast := mk("budget:fast", 4, throttle.Unbounded)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// A scheduled call of the slow budget in flight.
	x1, err := throttle.AcquirePair(ctx, slow, shared, 1)
	if err != nil {
		t.Fatal(err)
	}
	// The next one waits for the slow budget's next slot, then for the
	// shared slot x1 holds.
	x2 := make(chan time.Time, 1)
	go func() {
		p, err := throttle.AcquirePair(ctx, slow, shared, 1)
		if err != nil {
			return
		}
		x2 <- time.Now()
		p.Release()
	}()
	queuetest.Eventually(t, 20*time.Second, "x2 waiting at the shared gate", func() bool { return shared.Queued(1) == 1 })
	// x1's call goes on a little longer (a call takes tens of ms): x2's
	// rate slot goes by meanwhile.
	seen := time.Now()
	queuetest.Eventually(t, 5*time.Second, "x1's call done", func() bool { return time.Since(seen) > 60*time.Millisecond })
	x1.Release()
	queuetest.Eventually(t, 5*time.Second, "x2 holding the shared slot", func() bool { return shared.Queued(1) == 0 })

	// An urgent event of the fast budget.
	urgentAt := time.Now()
	u, err := throttle.AcquirePair(ctx, fast, shared, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := time.Now()
	u.Release()
	select {
	case at := <-x2:
		t.Errorf("the urgent call got the shared slot %v after it asked, %v after the scheduled call of another budget that held it idle",
			got.Sub(urgentAt).Round(time.Millisecond), got.Sub(at).Round(time.Millisecond))
	default:
		t.Logf("urgent call served %v after it asked, before the scheduled one", got.Sub(urgentAt).Round(time.Millisecond))
	}
}
