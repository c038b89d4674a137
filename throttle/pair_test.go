package throttle_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/revoker/revoker/throttle"
)

// TestPairNeverBunches: calls that take a budget's rate slot and then wait
// for a busy shared gate start at most the budget's rate in any second:
// a slot that went by while the call waited is not used late.
func TestPairNeverBunches(t *testing.T) {
	const rate, calls = 20, 60
	budget := throttle.New(throttle.Config{Priorities: 1, Concurrency: 8, Rate: rate})
	t.Cleanup(budget.Close)
	shared := throttle.New(throttle.Config{Priorities: 1, Concurrency: 1})
	t.Cleanup(shared.Close)

	var (
		mu     sync.Mutex
		starts []time.Time
		wg     sync.WaitGroup
	)
	for range 4 {
		wg.Go(func() {
			for {
				pm, err := throttle.AcquirePair(context.Background(), budget, shared, 0)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				done := len(starts) >= calls
				if !done {
					starts = append(starts, time.Now())
				}
				n := len(starts)
				mu.Unlock()
				// One call holds the only shared slot for a while (the
				// call's duration, not a synchronisation), so the others'
				// budget slots go by as they wait for it.
				if n == calls/3 {
					time.Sleep(300 * time.Millisecond)
				}
				pm.Release()
				if done {
					return
				}
			}
		})
	}
	wg.Wait()
	for i := range starts {
		for j := i + rate; j < len(starts); j++ {
			if d := starts[j].Sub(starts[i]); d < time.Second {
				t.Fatalf("calls %d to %d started within %v: more than %d in a second", i, j, d, rate)
			}
			break
		}
	}
}
