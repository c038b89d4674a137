package throttle_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/revoker/revoker/throttle"
)

// acquireAsync queues a waiter and reports on ch when it is granted.
func acquireAsync(t *testing.T, g *throttle.Gate, p int, name string, ch chan<- string) {
	t.Helper()
	go func() {
		pm, err := g.Acquire(context.Background(), p)
		if err != nil {
			ch <- "error: " + err.Error()
			return
		}
		ch <- name
		pm.Release()
	}()
}

func TestGateServesHigherPriorityFirst(t *testing.T) {
	g := throttle.New(throttle.Config{Priorities: 2, Concurrency: 1})
	defer g.Close()
	held, err := g.Acquire(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 3)
	// Low-priority waiters queue first; the urgent one arrives last.
	acquireAsync(t, g, 1, "low1", got)
	waitQueued(t, g, 1, 1)
	acquireAsync(t, g, 1, "low2", got)
	waitQueued(t, g, 1, 2)
	acquireAsync(t, g, 0, "urgent", got)
	waitQueued(t, g, 0, 1)
	held.Release()
	// Concurrency 1 serialises the grants, so the order is observable.
	want := []string{"urgent", "low1", "low2"}
	for i, w := range want {
		if g := <-got; g != w {
			t.Fatalf("permit %d went to %s, want %s", i, g, w)
		}
	}
}

func TestGatePendingHigherLevelHoldsLowerOnes(t *testing.T) {
	g := throttle.New(throttle.Config{Priorities: 2, Concurrency: 4})
	defer g.Close()
	g.SetPending(0, true)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := g.Acquire(ctx, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("low priority got a permit while urgent work was pending: %v", err)
	}
	g.SetPending(0, false)
	pm, err := g.Acquire(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	pm.Release()
}

func TestGateConcurrency(t *testing.T) {
	g := throttle.New(throttle.Config{Priorities: 1, Concurrency: 3})
	defer g.Close()
	var held []*throttle.Permit
	for range 3 {
		pm, err := g.Acquire(context.Background(), 0)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, pm)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := g.Acquire(ctx, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a fourth permit was granted with concurrency 3: %v", err)
	}
	held[0].Release()
	held[0].Release() // a second release must not free a second slot
	pm, err := g.Acquire(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if _, err := g.Acquire(ctx2, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatal("double Release freed two slots")
	}
	pm.Release()
}

func TestGateRateSpacesPermits(t *testing.T) {
	const rate = 20.0
	g := throttle.New(throttle.Config{Priorities: 1, Concurrency: 10, Rate: rate})
	defer g.Close()
	var times []time.Time
	for range 6 {
		pm, err := g.Acquire(context.Background(), 0)
		if err != nil {
			t.Fatal(err)
		}
		times = append(times, time.Now())
		pm.Release()
	}
	// Burst 1: permits follow the limiter's schedule, one interval apart,
	// so N a second is never N at once. A late wake-up may bring one permit
	// nearer the next, never two together, and never ahead of schedule.
	interval := time.Duration(float64(time.Second) / rate)
	// The first may be seen late, by up to half an interval on a loaded
	// runner.
	if span := times[len(times)-1].Sub(times[0]); span < time.Duration(len(times)-1)*interval-interval/2 {
		t.Errorf("%d permits in %v, want at least %v", len(times), span, time.Duration(len(times)-1)*interval)
	}
	for i := 1; i < len(times); i++ {
		if d := times[i].Sub(times[i-1]); d < interval/2 {
			t.Errorf("permits %d and %d only %v apart", i-1, i, d)
		}
	}
}

func TestGatePauseHoldsEveryPermit(t *testing.T) {
	var mu sync.Mutex
	var states []bool
	g := throttle.New(throttle.Config{Priorities: 2, Concurrency: 4, OnPause: func(p bool) {
		mu.Lock()
		states = append(states, p)
		mu.Unlock()
	}})
	defer g.Close()
	const pause = 300 * time.Millisecond
	start := time.Now()
	g.Pause(pause)
	g.Pause(10 * time.Millisecond) // a shorter pause never cuts a longer one
	pm, err := g.Acquire(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	pm.Release()
	if d := time.Since(start); d < pause {
		t.Fatalf("permit granted after %v, inside a %v pause", d, pause)
	}
	waitFor(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(states) == 2
	})
	if !states[0] || states[1] {
		t.Fatalf("OnPause calls = %v, want [true false]", states)
	}
}

func TestGateCancelAndClose(t *testing.T) {
	g := throttle.New(throttle.Config{Priorities: 1, Concurrency: 1})
	held, _ := g.Acquire(context.Background(), 0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := g.Acquire(ctx, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Acquire = %v", err)
	}
	done := make(chan error)
	go func() {
		_, err := g.Acquire(context.Background(), 0)
		done <- err
	}()
	waitQueued(t, g, 0, 1)
	g.Close()
	if err := <-done; !errors.Is(err, throttle.ErrClosed) {
		t.Fatalf("Acquire after Close = %v, want ErrClosed", err)
	}
	held.Release()
}

func waitQueued(t *testing.T, g *throttle.Gate, p, n int) {
	t.Helper()
	waitFor(t, func() bool { return g.Queued(p) >= n })
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestReacquiredFirstInLine: permits asked again for calls that lost
// theirs go ahead of the waiters already queued at their priority, in
// the order they came back.
func TestReacquiredFirstInLine(t *testing.T) {
	g := throttle.New(throttle.Config{Priorities: 1, Concurrency: 1})
	t.Cleanup(g.Close)
	held, err := g.Acquire(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 3)
	queue := func(name string, again bool, want int) {
		go func() {
			acquire := g.Acquire
			if again {
				acquire = g.Reacquire
			}
			pm, err := acquire(context.Background(), 0)
			if err != nil {
				t.Error(err)
				return
			}
			order <- name
			pm.Release()
		}()
		for deadline := time.Now().Add(10 * time.Second); g.Queued(0) < want; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s never queued", name)
			}
		}
	}
	queue("new", false, 1)
	queue("back first", true, 2)
	queue("back second", true, 3)
	held.Release()
	for _, want := range []string{"back first", "back second", "new"} {
		if got := <-order; got != want {
			t.Fatalf("served %q, want %q", got, want)
		}
	}
}

// TestWaitersServedInTheirEventsOrder: events of one priority that came
// to the gate in another order than they were stored are served as
// stored (InOrder); a call asked again stays first, and an acquire with
// no order keeps its place behind those before it.
func TestWaitersServedInTheirEventsOrder(t *testing.T) {
	g := throttle.New(throttle.Config{Priorities: 1, Concurrency: 1})
	t.Cleanup(g.Close)
	held, err := g.Acquire(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 6)
	n := 0
	queue := func(name string, seq uint64, again bool) {
		n++
		go func() {
			acquire := g.Acquire
			if again {
				acquire = g.Reacquire
			}
			ctx := context.Background()
			if seq != 0 {
				ctx = throttle.InOrder(ctx, seq)
			}
			pm, err := acquire(ctx, 0)
			if err != nil {
				t.Error(err)
				return
			}
			order <- name
			pm.Release()
		}()
		waitQueued(t, g, 0, n)
	}
	queue("seq 9", 9, false)
	queue("no order", 0, false)
	queue("seq 7", 7, false)
	queue("seq 5", 5, false)
	queue("seq 6", 6, false)
	queue("back", 0, true)
	held.Release()
	for _, want := range []string{"back", "seq 9", "no order", "seq 5", "seq 6", "seq 7"} {
		if got := <-order; got != want {
			t.Fatalf("served %q, want %q", got, want)
		}
	}
}

// TestGateFollowLowersTheRate: after Follow with a quota below the gate's
// rate, every later permit keeps the quota's spacing, not only the next
// one; a quota above the rate leaves the rate as it is; and no quota,
// however small, spaces permits further than MaxPause.
func TestGateFollowLowersTheRate(t *testing.T) {
	g := throttle.New(throttle.Config{Priorities: 1, Concurrency: 10, Rate: 50})
	defer g.Close()
	acquire := func() time.Time {
		pm, err := g.Acquire(context.Background(), 0)
		if err != nil {
			t.Fatal(err)
		}
		pm.Release()
		return time.Now()
	}
	acquire()
	if !g.Follow(4) {
		t.Fatal("Follow on a gate with a rate reported nothing to follow with")
	}
	times := []time.Time{acquire(), acquire(), acquire(), acquire()}
	want := throttle.Interval(4)
	// On the limiter's schedule: a permit seen late may come nearer the
	// next, never two together, never the whole run ahead of it. The first
	// may be seen late by half an interval on a loaded machine (CI saw
	// 764 ms for 765 once); followed only once, the run would take 295 ms.
	if span := times[len(times)-1].Sub(times[0]); span < time.Duration(len(times)-1)*want-want/2 {
		t.Errorf("%d permits in %v after a quota of 4/s, want at least %v", len(times), span, time.Duration(len(times)-1)*want)
	}
	for i := 1; i < len(times); i++ {
		if d := times[i].Sub(times[i-1]); d < want/2 {
			t.Errorf("permits %d and %d %v apart after a quota of 4/s", i-1, i, d)
		}
	}

	g.Follow(1000) // above the rate: the rate stands
	acquire()
	start := time.Now()
	for range 9 {
		acquire()
	}
	if d := time.Since(start); d >= 9*want {
		t.Errorf("nine permits took %v after a quota above the rate of 50/s: still spaced at the quota of 4/s", d)
	}

	g2 := throttle.New(throttle.Config{Priorities: 1, Concurrency: 1})
	defer g2.Close()
	if g2.Follow(1) {
		t.Error("Follow on a gate without a rate reported a rate to lower")
	}
	for _, q := range []float64{1e-300, 1.0 / 3600, 5e-324} {
		if d := throttle.QuotaInterval(q); d != throttle.MaxPause {
			t.Errorf("QuotaInterval(%g) = %v, want the cap %v", q, d, throttle.MaxPause)
		}
	}
}
