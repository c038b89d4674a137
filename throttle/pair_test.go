package throttle_test

import (
	"context"
	"runtime"
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

// TestPairKeepsPriority: an urgent call of a slow budget (2/s) waiting for
// a shared slot held by another budget's scheduled calls gets the first
// shared slot that frees and keeps it for its own budget's next slot; it
// does not give it back to the scheduled calls each time its slot went by
// while it waited.
func TestPairKeepsPriority(t *testing.T) {
	slow := throttle.New(throttle.Config{Priorities: 2, Concurrency: 4, Rate: 2})
	t.Cleanup(slow.Close)
	fast := throttle.New(throttle.Config{Priorities: 2, Concurrency: 8, Rate: 200})
	t.Cleanup(fast.Close)
	shared := throttle.New(throttle.Config{Priorities: 2, Concurrency: 2})
	t.Cleanup(shared.Close)
	var (
		mu        sync.Mutex
		scheduled int
		wg        sync.WaitGroup
	)
	t.Cleanup(wg.Wait) // after cancel: cleanups run last first
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				pm, err := throttle.AcquirePair(ctx, fast, shared, 1)
				if err != nil {
					return
				}
				mu.Lock()
				scheduled++
				mu.Unlock()
				time.Sleep(130 * time.Millisecond) // the call's duration, not a synchronisation
				pm.Release()
			}
		})
	}
	// Let the scheduled calls fill the shared slots first.
	for {
		mu.Lock()
		n := scheduled
		mu.Unlock()
		if n >= 2 {
			break
		}
		runtime.Gosched()
	}
	mu.Lock()
	before := scheduled
	mu.Unlock()
	uctx, ucancel := context.WithTimeout(ctx, 10*time.Second)
	defer ucancel()
	pm, err := throttle.AcquirePair(uctx, slow, shared, 0)
	if err != nil {
		t.Fatalf("the urgent call never got its pair: %v", err)
	}
	mu.Lock()
	overtook := scheduled - before
	mu.Unlock()
	pm.Release()
	cancel()
	// While it waits, at most the calls in flight and those the other
	// shared slot serves in one of its budget's intervals (500 ms of 130 ms
	// calls) start: about 7. Giving the shared slot back each time its
	// budget slot had gone by let every scheduled call through, for ever.
	if overtook > 10 {
		t.Errorf("%d scheduled calls started while an urgent one waited", overtook)
	}
}
