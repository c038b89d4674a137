package throttle_test

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
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

// TestPairNoDeadlockWithAHigherCallOfTheBudget: a scheduled call L of a
// budget holds a rate slot of the budget while it waits for the shared
// gate, busy with another budget's call; an urgent call U of the same
// budget queues at the budget. The shared slot frees after L's rate slot
// went by, so L keeps the shared slot and waits at the budget again, where
// U, first by priority, takes the next slot and waits for the shared slot
// L holds. Both calls get their permits: no call waits on a call that
// waits on it (SPEC §9: an incident waits only for the shared slots and
// the address limit). Then the same with four calls of each and four
// shared slots.
func TestPairNoDeadlockWithAHigherCallOfTheBudget(t *testing.T) {
	for _, n := range []int{1, 4} {
		budget := throttle.New(throttle.Config{Priorities: 2, Concurrency: throttle.Unbounded, Rate: 10 * float64(n)})
		shared := throttle.New(throttle.Config{Priorities: 2, Concurrency: n})
		var others []*throttle.Permit
		for range n { // another budget's calls in flight
			pm, err := shared.Acquire(context.Background(), 1)
			if err != nil {
				t.Fatal(err)
			}
			others = append(others, pm)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		done := make(chan error, 2*n)
		call := func(p int) {
			pm, err := throttle.AcquirePair(ctx, budget, shared, p)
			if err == nil {
				pm.Release()
			}
			done <- err
		}
		for range n {
			go call(1)
		}
		waitQueued(t, shared, 1, n) // the scheduled calls hold rate slots of the budget
		for range n {
			go call(0)
		}
		waitQueued(t, budget, 0, n)
		// The other calls take longer than the scheduled calls' rate slots
		// may wait.
		time.Sleep(100 * time.Millisecond)
		for _, o := range others {
			o.Release()
		}
		for i := range 2 * n {
			if err := <-done; err != nil {
				t.Errorf("n=%d: call %d got no permits: %v", n, i, err)
			}
		}
		cancel()
		budget.Close()
		shared.Close()
	}
}

// TestPairHoldsNoSharedSlotThroughABudgetsHold: a call whose rate slot
// went by while it waited for the shared slot waits for its budget's next
// slot holding the shared one for one of the budget's intervals at most.
// When the budget is held (a 429), it gives the shared slot back, so
// another budget's call is not held up by this budget's hold (SPEC §9: a
// 429 holds every credential of that principal, and only those).
func TestPairHoldsNoSharedSlotThroughABudgetsHold(t *testing.T) {
	budget := throttle.New(throttle.Config{Priorities: 2, Concurrency: throttle.Unbounded, Rate: 10})
	defer budget.Close()
	shared := throttle.New(throttle.Config{Priorities: 2, Concurrency: 1})
	defer shared.Close()
	other, err := shared.Acquire(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		pm, err := throttle.AcquirePair(ctx, budget, shared, 1)
		if err == nil {
			pm.Release()
		}
		done <- err
	}()
	waitQueued(t, shared, 1, 1) // its rate slot taken, it waits for the shared slot
	budget.Pause(3 * time.Second)
	time.Sleep(150 * time.Millisecond) // the other call, longer than a rate slot may wait
	other.Release()
	// Another budget's call: the shared slot is free again long before the
	// hold ends.
	pm, err := shared.Acquire(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if left := budget.PausedFor(); left < time.Second {
		t.Errorf("another budget's call got the shared slot with %v of the hold left: it was held through the hold", left)
	}
	pm.Release()
	cancel()
	<-done
}

// TestPairYieldsToHigherCallsOfItsBudget: a scheduled call of a budget
// holds the only shared slot, its rate slot having gone by while it waited
// for it; urgent calls of the same budget keep coming, each taking the
// budget's next slot and waiting for a shared slot. The scheduled call
// gives its shared slot up rather than wait out the urgent calls, so calls
// go on starting (SPEC §3, §9).
func TestPairYieldsToHigherCallsOfItsBudget(t *testing.T) {
	budget := throttle.New(throttle.Config{Priorities: 2, Concurrency: throttle.Unbounded, Rate: 10})
	defer budget.Close()
	shared := throttle.New(throttle.Config{Priorities: 2, Concurrency: 1})
	defer shared.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	other, err := shared.Acquire(ctx, 0) // another budget's call in flight
	if err != nil {
		t.Fatal(err)
	}
	var started atomic.Int64
	var wg sync.WaitGroup
	call := func(p int) {
		pr, err := throttle.AcquirePair(ctx, budget, shared, p)
		if err != nil {
			return
		}
		started.Add(1)
		time.Sleep(5 * time.Millisecond) // the call
		pr.Release()
	}
	wg.Go(func() { call(1) })
	waitQueued(t, shared, 1, 1)       // the scheduled call holds a rate slot, waits for the shared slot
	time.Sleep(60 * time.Millisecond) // the other call, longer than the rate slot may wait
	other.Release()
	for range 40 { // urgent calls of the budget, 20 a second for 2 s
		wg.Go(func() { call(0) })
		time.Sleep(50 * time.Millisecond) // the urgent calls' pace
	}
	n := started.Load()
	wg.Wait()
	if n < 5 {
		t.Errorf("%d calls started in the 2 s the urgent calls came (budget at 10/s): the scheduled call kept the only shared slot", n)
	}
}

// TestPairYieldsToAnotherReplicasClaim: replica 2 has urgent work for
// budget X and claims it; on replica 1 a scheduled call of X holds the
// only shared slot, its X slot having gone by while it waited for it. It
// gives the slot up, so an urgent call of another budget on replica 1 does
// not wait behind X's backlog on replica 2 (SPEC §9).
func TestPairYieldsToAnotherReplicasClaim(t *testing.T) {
	fb := newFakeBudget(100 * time.Millisecond)
	x1 := throttle.New(throttle.Config{Priorities: 2, Concurrency: throttle.Unbounded, Rate: 10, Budget: fb.view()})
	defer x1.Close()
	replica2 := fb.view()
	shared := throttle.New(throttle.Config{Priorities: 2, Concurrency: 1})
	defer shared.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	other, err := shared.Acquire(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		if pr, err := throttle.AcquirePair(ctx, x1, shared, 1); err == nil {
			pr.Release()
		}
	}()
	waitQueued(t, shared, 1, 1)
	replica2.Claim(0) // urgent work of X on replica 2, for the rest of the test
	time.Sleep(60 * time.Millisecond)
	other.Release()
	start := time.Now()
	y, err := shared.Acquire(ctx, 0) // an urgent call of budget Y on replica 1
	if err != nil {
		t.Fatal(err)
	}
	y.Release()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("an urgent call of another budget waited %v for the shared slot, held by a call of X waiting out X's backlog elsewhere", d.Round(time.Millisecond))
	}
	replica2.Claim(-1)
}

// TestPairAsideOnlyWhileItsBudgetHoldsItBack: AcquirePairAside sets its
// caller aside while the caller waits for its own budget (a hold), and
// takes it back once that wait is over; a permit at once, or a wait for
// the shared gate alone (every budget's), sets nothing aside.
func TestPairAsideOnlyWhileItsBudgetHoldsItBack(t *testing.T) {
	// No rate: only a hold makes a call wait for this budget.
	budget := throttle.New(throttle.Config{Priorities: 1, Concurrency: throttle.Unbounded})
	defer budget.Close()
	shared := throttle.New(throttle.Config{Priorities: 1, Concurrency: 1})
	defer shared.Close()
	var asides, backs atomic.Int32
	aside := func() func() {
		asides.Add(1)
		return func() { backs.Add(1) }
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	pm, err := throttle.AcquirePairAside(ctx, budget, shared, 0, aside)
	if err != nil {
		t.Fatal(err)
	}
	if asides.Load() != 0 {
		t.Fatalf("a pair granted at once set its caller aside %d times", asides.Load())
	}

	// The shared slot is held: the next pair waits for it, not for its budget.
	done := make(chan error, 1)
	go func() {
		pm, err := throttle.AcquirePairAside(ctx, budget, shared, 0, aside)
		if err == nil {
			pm.Release()
		}
		done <- err
	}()
	waitQueued(t, shared, 0, 1)
	pm.Release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if asides.Load() != 0 {
		t.Fatalf("a wait for the shared slot set its caller aside %d times", asides.Load())
	}

	// A hold of the budget: the caller is set aside while it lasts.
	budget.Pause(300 * time.Millisecond)
	go func() {
		pm, err := throttle.AcquirePairAside(ctx, budget, shared, 0, aside)
		if err == nil {
			pm.Release()
		}
		done <- err
	}()
	waitQueued(t, budget, 0, 1)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if asides.Load() != 1 || backs.Load() != 1 {
		t.Errorf("through its budget's hold the caller was set aside %d times and taken back %d; want once each", asides.Load(), backs.Load())
	}
}

// TestPairSharedSlotsGoInTheOrderTheBudgetGaveItsSlots: calls waiting for
// a shared slot each hold a rate slot of their budget already, spent the
// moment it was handed out. The shared gate serves them as they came, not
// by their events' order (InOrder): one sent back behind a later event
// would let its rate slot go by and spend another.
func TestPairSharedSlotsGoInTheOrderTheBudgetGaveItsSlots(t *testing.T) {
	budget := throttle.New(throttle.Config{Priorities: 1, Concurrency: throttle.Unbounded})
	t.Cleanup(budget.Close)
	shared := throttle.New(throttle.Config{Priorities: 1, Concurrency: 1})
	t.Cleanup(shared.Close)
	held, err := shared.Acquire(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	order := make(chan uint64, 2)
	for i, seq := range []uint64{9, 5} {
		go func() {
			pm, err := throttle.AcquirePair(throttle.InOrder(context.Background(), seq), budget, shared, 0)
			if err != nil {
				t.Error(err)
				return
			}
			order <- seq
			pm.Release()
		}()
		waitQueued(t, shared, 0, i+1)
	}
	held.Release()
	if first := <-order; first != 9 {
		t.Fatalf("the shared slot went first to the event at %d, which came to it second", first)
	}
	<-order
}
