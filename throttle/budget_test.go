package throttle_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/revoker/revoker/throttle"
)

// fakeBudget is an in-memory shared budget: each view is one replica.
type fakeBudget struct {
	mu       sync.Mutex
	interval time.Duration
	lead     time.Duration // how long before it is due a slot is reserved
	next     time.Time
	holdEnd  time.Time
	cause    string
	claims   map[*fakeView]int
	views    []*fakeView
	fail     bool        // behaviour switch: Reserve cannot reach the store
	slots    []time.Time // every slot handed out
	asked    int         // Reserve calls
	given    []time.Time // slots given back
}

const fakeLead = 5 * time.Millisecond

func newFakeBudget(interval time.Duration) *fakeBudget {
	return &fakeBudget{interval: interval, lead: fakeLead, claims: map[*fakeView]int{}}
}

func (b *fakeBudget) view() *fakeView {
	b.mu.Lock()
	defer b.mu.Unlock()
	v := &fakeView{b: b, ch: make(chan struct{}, 1)}
	b.views = append(b.views, v)
	return v
}

func (b *fakeBudget) setFail(f bool) {
	b.mu.Lock()
	b.fail = f
	b.mu.Unlock()
}

func (b *fakeBudget) reserved() []time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]time.Time(nil), b.slots...)
}

// notify tells every view but from; b.mu is held.
func (b *fakeBudget) notify(from *fakeView) {
	for _, v := range b.views {
		if v != from {
			select {
			case v.ch <- struct{}{}:
			default:
			}
		}
	}
}

type fakeView struct {
	b  *fakeBudget
	ch chan struct{}
}

var _ throttle.Budget = (*fakeView)(nil)

func (v *fakeView) Reserve(_ context.Context, p int) (time.Time, bool, error) {
	b := v.b
	b.mu.Lock()
	defer b.mu.Unlock()
	b.asked++
	if b.fail {
		return time.Time{}, false, errors.New("budget unreachable")
	}
	now := time.Now()
	if now.Before(b.holdEnd) {
		return b.holdEnd, false, nil
	}
	if !v.allows(p) {
		return now.Add(time.Second), false, nil // a claim change wakes us sooner
	}
	at := b.next
	if at.Before(now) {
		at = now
	}
	if at.After(now.Add(b.lead)) {
		return at.Add(-b.lead), false, nil
	}
	b.next = at.Add(b.interval)
	b.slots = append(b.slots, at)
	return at, true, nil
}

func (v *fakeView) Rebook(_ context.Context, slot time.Time) (time.Time, bool, error) {
	b := v.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fail || !b.next.Equal(slot.Add(b.interval)) {
		return time.Time{}, false, nil
	}
	now := time.Now()
	b.next = now.Add(b.interval)
	b.slots[len(b.slots)-1] = now
	return now, true, nil
}

func (v *fakeView) GiveBack(_ context.Context, slot time.Time) {
	b := v.b
	b.mu.Lock()
	defer b.mu.Unlock()
	b.given = append(b.given, slot)
	if b.next.Equal(slot.Add(b.interval)) {
		b.next = slot
		b.slots = b.slots[:len(b.slots)-1]
		b.notify(v)
	}
}

func (b *fakeBudget) givenBack() []time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]time.Time(nil), b.given...)
}

func (v *fakeView) allows(p int) bool {
	for o, c := range v.b.claims {
		if o != v && c >= 0 && c < p {
			return false
		}
	}
	return true
}

func (v *fakeView) Free(p int) bool {
	b := v.b
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.interval == 0 && !b.fail && !time.Now().Before(b.holdEnd) && v.allows(p)
}

func (v *fakeView) Allows(p int) bool {
	v.b.mu.Lock()
	defer v.b.mu.Unlock()
	return v.allows(p)
}

func (v *fakeView) Hold(until time.Time, cause string) {
	b := v.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if until.After(b.holdEnd) {
		b.holdEnd, b.cause = until, cause
		b.notify(v)
	}
}

func (v *fakeView) Defer(until time.Time) {
	b := v.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if until.After(b.next) {
		b.next = until
		b.notify(v)
	}
}

// Cap spaces every view's slots at least spacing apart: the fake has one
// interval.
func (v *fakeView) Cap(spacing time.Duration) {
	v.b.mu.Lock()
	v.b.interval = max(v.b.interval, spacing)
	v.b.mu.Unlock()
}

func (v *fakeView) Spacing() time.Duration {
	v.b.mu.Lock()
	defer v.b.mu.Unlock()
	return v.b.interval
}

// Follow changes the spacing of every view: the fake has one interval.
func (v *fakeView) Follow(r float64) {
	v.b.mu.Lock()
	v.b.interval = throttle.QuotaInterval(r)
	v.b.mu.Unlock()
}

func (v *fakeView) Held() (time.Time, string) {
	v.b.mu.Lock()
	defer v.b.mu.Unlock()
	return v.b.holdEnd, v.b.cause
}

func (v *fakeView) Claim(p int) {
	b := v.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if c, ok := b.claims[v]; !ok || c != p {
		b.claims[v] = p
		b.notify(v)
	}
}

func (v *fakeView) Changed() <-chan struct{} { return v.ch }

// TestSharedBudgetSpacesEveryReplicasPermits: three gates sharing one
// budget take turns; together they never start two calls less than an
// interval apart, and every permit used a reserved slot.
func TestSharedBudgetSpacesEveryReplicasPermits(t *testing.T) {
	const interval = 20 * time.Millisecond
	b := newFakeBudget(interval)
	var (
		mu     sync.Mutex
		starts []time.Time
		wg     sync.WaitGroup
	)
	for range 3 {
		g := throttle.New(throttle.Config{Priorities: 1, Concurrency: 4, Budget: b.view()})
		defer g.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				pm, err := g.Acquire(context.Background(), 0)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				starts = append(starts, time.Now())
				mu.Unlock()
				pm.Release()
			}
		}()
	}
	wg.Wait()
	slots := b.reserved()
	if len(starts) != 30 || len(slots) < 30 {
		t.Fatalf("%d permits from %d reserved slots, want 30 from at least 30", len(starts), len(slots))
	}
	for i := 1; i < len(slots); i++ {
		if d := slots[i].Sub(slots[i-1]); d < interval {
			t.Fatalf("slots %d and %d %v apart, want at least %v", i-1, i, d, interval)
		}
	}
	// A permit never starts before its slot: the first start is not
	// earlier than the first slot, and 30 starts span at least 29 intervals.
	first, last := starts[0], starts[0]
	for _, s := range starts {
		first, last = minTime(first, s), maxTime(last, s)
	}
	// (The first start may be seen late, by up to half an interval on a
	// loaded runner.)
	if first.Before(slots[0]) || last.Sub(first) < 29*interval-interval/2 {
		t.Fatalf("30 permits span %v, want at least %v", last.Sub(first), 29*interval)
	}
}

// TestSharedHoldStopsOtherReplicas: a pause asked for on one gate holds
// the other, which shows it through OnPause and grants nothing meanwhile.
func TestSharedHoldStopsOtherReplicas(t *testing.T) {
	b := newFakeBudget(time.Millisecond)
	a := throttle.New(throttle.Config{Priorities: 1, Concurrency: 1, Budget: b.view()})
	defer a.Close()
	var pausedB sync.Map
	other := throttle.New(throttle.Config{Priorities: 1, Concurrency: 1, Budget: b.view(),
		OnPause: func(p bool) { pausedB.Store(p, true) }})
	defer other.Close()

	const pause = 300 * time.Millisecond
	start := time.Now()
	a.Pause(pause)
	waitFor(t, func() bool { _, ok := pausedB.Load(true); return ok })
	if left := other.PausedFor(); left <= 0 || left > pause {
		t.Fatalf("other replica paused for %v, want (0, %v]", left, pause)
	}
	pm, err := other.Acquire(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	pm.Release()
	if d := time.Since(start); d < pause {
		t.Fatalf("other replica granted a permit %v into a %v pause", d, pause)
	}
	waitFor(t, func() bool { _, ok := pausedB.Load(false); return ok })
}

// TestSharedClaimHoldsLowerPriorityElsewhere: while one gate has urgent
// work waiting, the other grants no lower-priority permit, whether their
// budget has a rate or not.
func TestSharedClaimHoldsLowerPriorityElsewhere(t *testing.T) {
	for name, interval := range map[string]time.Duration{"rate": time.Millisecond, "no rate": 0} {
		t.Run(name, func(t *testing.T) {
			b := newFakeBudget(interval)
			a := throttle.New(throttle.Config{Priorities: 2, Concurrency: 1, Budget: b.view()})
			defer a.Close()
			other := throttle.New(throttle.Config{Priorities: 2, Concurrency: 1, Budget: b.view()})
			defer other.Close()

			held, err := a.Acquire(context.Background(), 1)
			if err != nil {
				t.Fatal(err)
			}
			got := make(chan string, 2)
			acquireAsync(t, a, 0, "urgent", got) // waits: a's only slot is held
			waitQueued(t, a, 0, 1)
			waitFor(t, func() bool { return !b.views[1].Allows(1) })

			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			if _, err := other.Acquire(ctx, 1); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("low priority got a permit while urgent work waited on another replica: %v", err)
			}
			go func() {
				pm, err := other.Acquire(context.Background(), 1)
				switch {
				case err != nil:
					got <- "error: " + err.Error()
				case a.Queued(0) > 0:
					got <- "low, while urgent work waited"
				default:
					got <- "low"
				}
				if pm != nil {
					pm.Release()
				}
			}()
			waitQueued(t, other, 1, 1)
			held.Release()
			first, second := <-got, <-got
			if interval == 0 && first == "low" {
				// Without a rate both may start at once; what counts is
				// that low started only once urgent no longer waited.
				first, second = second, first
			}
			if first != "urgent" || second != "low" {
				t.Fatalf("permits went to %q then %q, want urgent then low", first, second)
			}
		})
	}
}

// TestReservedSlotYieldsToHigherClaimElsewhere: a slot reserved for a
// scheduled call is checked again when it is due; if another replica has
// claimed a higher priority since, the scheduled call does not start and
// the slot is given back for the urgent work to take.
func TestReservedSlotYieldsToHigherClaimElsewhere(t *testing.T) {
	b := newFakeBudget(10 * time.Millisecond)
	b.lead = time.Second
	b.next = time.Now().Add(300 * time.Millisecond) // reserved well before it is due
	a := throttle.New(throttle.Config{Priorities: 2, Concurrency: 1, Budget: b.view()})
	defer a.Close()
	other := throttle.New(throttle.Config{Priorities: 2, Concurrency: 1, Budget: b.view()})
	defer other.Close()

	got := make(chan string, 1)
	acquireAsync(t, a, 1, "scheduled", got)
	waitFor(t, func() bool { return len(b.reserved()) == 1 })
	other.SetPending(0, true) // urgent work on its way at the other replica
	waitFor(t, func() bool { return !b.views[0].Allows(1) })

	waitFor(t, func() bool { return len(b.givenBack()) == 1 })
	slot := b.givenBack()[0]
	select {
	case s := <-got:
		t.Fatalf("%s permit granted on a slot reserved before a higher claim elsewhere", s)
	default:
	}
	b.mu.Lock()
	next := b.next
	b.mu.Unlock()
	if !next.Equal(slot) {
		t.Fatalf("next slot %v after the give-back, want the slot given back, %v", next, slot)
	}
	other.SetPending(0, false)
	if s := <-got; s != "scheduled" {
		t.Fatal(s)
	}
}

// TestLongSlowIsACappedHoldReportedOnce: a rate-limit header with nothing
// left for a day holds calls five minutes at most, shows as paused, and is
// reported once however often it is repeated.
func TestLongSlowIsACappedHoldReportedOnce(t *testing.T) {
	for _, shared := range []bool{false, true} {
		var budget throttle.Budget
		if shared {
			budget = newFakeBudget(time.Millisecond).view()
		}
		var (
			mu      sync.Mutex
			holds   []time.Duration
			causes  []string
			paused  bool
			g       *throttle.Gate
			queuedN = -1
		)
		g = throttle.New(throttle.Config{Priorities: 1, Concurrency: 1, Rate: 4, Budget: budget,
			OnPause: func(p bool) {
				n := g.Queued(0) // calls back into the gate: no lock may be held
				mu.Lock()
				paused, queuedN = p, n
				mu.Unlock()
			},
			OnHold: func(d time.Duration, cause string) {
				mu.Lock()
				holds, causes = append(holds, d), append(causes, cause)
				mu.Unlock()
			}})
		day := 24 * time.Hour
		g.Slow(time.Now().Add(day))
		waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return paused })
		g.Slow(time.Now().Add(day)) // the next answer says the same
		g.Pause(time.Second)        // and a 429 inside the hold
		if left := g.PausedFor(); left > throttle.MaxPause || left < throttle.MaxPause-time.Minute {
			t.Fatalf("shared=%v: held for %v, want about %v", shared, left, throttle.MaxPause)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		if _, err := g.Acquire(ctx, 0); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("shared=%v: permit granted inside the hold: %v", shared, err)
		}
		cancel()
		// Let the loop see the repeated asks before counting reports.
		waitFor(t, func() bool { return g.Queued(0) == 0 })
		g.Close()
		mu.Lock()
		if len(holds) != 1 || holds[0] > throttle.MaxPause || holds[0] < throttle.MaxPause-time.Minute {
			t.Fatalf("shared=%v: holds reported %v, want one of about %v", shared, holds, throttle.MaxPause)
		}
		if !strings.Contains(causes[0], "rate-limit header") || !strings.Contains(causes[0], "capped at 5m0s") {
			t.Fatalf("shared=%v: cause %q", shared, causes[0])
		}
		if queuedN < 0 {
			t.Fatalf("shared=%v: OnPause never ran", shared)
		}
		mu.Unlock()
	}
}

// TestShortSlowOnlyPaces: a delay within SlowHold is pacing, not a hold.
func TestShortSlowOnlyPaces(t *testing.T) {
	var holds int
	var mu sync.Mutex
	g := throttle.New(throttle.Config{Priorities: 1, Concurrency: 1,
		OnHold: func(time.Duration, string) { mu.Lock(); holds++; mu.Unlock() }})
	defer g.Close()
	const d = 200 * time.Millisecond
	start := time.Now()
	g.Slow(start.Add(d))
	pm, err := g.Acquire(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	pm.Release()
	if took := time.Since(start); took < d {
		t.Fatalf("permit after %v, want at least %v", took, d)
	}
	if g.PausedFor() != 0 {
		t.Fatal("a short slow-down shows as a hold")
	}
	mu.Lock()
	defer mu.Unlock()
	if holds != 0 {
		t.Fatalf("a short slow-down reported %d holds", holds)
	}
}

// TestBudgetUnreachableGrantsNothing: when the budget cannot be asked, the
// gate waits and asks again; it never grants without a reserved slot.
func TestBudgetUnreachableGrantsNothing(t *testing.T) {
	b := newFakeBudget(time.Millisecond)
	b.setFail(true)
	g := throttle.New(throttle.Config{Priorities: 1, Concurrency: 1, Budget: b.view()})
	defer g.Close()
	got := make(chan string, 1)
	acquireAsync(t, g, 0, "call", got)
	waitFor(t, func() bool { b.mu.Lock(); defer b.mu.Unlock(); return b.asked >= 3 })
	select {
	case s := <-got:
		t.Fatalf("permit granted while the budget was unreachable: %s", s)
	default:
	}
	b.setFail(false)
	if s := <-got; s != "call" {
		t.Fatal(s)
	}
	if n := len(b.reserved()); n != 1 {
		t.Fatalf("%d slots reserved, want 1", n)
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// TestUnlimitedBudgetGrantsAtOnce: a shared budget without a rate grants
// a permit without the gate's loop asking it for a slot, yet a hold
// elsewhere still holds permits back (and a claim: see
// TestSharedClaimHoldsLowerPriorityElsewhere).
func TestUnlimitedBudgetGrantsAtOnce(t *testing.T) {
	b := newFakeBudget(0)
	a := throttle.New(throttle.Config{Priorities: 2, Concurrency: 2, Budget: b.view()})
	defer a.Close()
	other := throttle.New(throttle.Config{Priorities: 2, Concurrency: 1, Budget: b.view()})
	defer other.Close()

	pm, err := a.Acquire(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	pm.Release()
	b.mu.Lock()
	asked := b.asked
	b.mu.Unlock()
	if asked != 0 {
		t.Fatalf("the budget was asked for %d slots; a budget without a rate has none to give", asked)
	}

	const pause = 200 * time.Millisecond
	start := time.Now()
	other.Pause(pause)
	if pm, err = a.Acquire(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	pm.Release()
	if d := time.Since(start); d < pause {
		t.Fatalf("a permit %v into another replica's %v hold", d, pause)
	}
}

// TestRatelessSharedPermitNeverLate: a gate that shares only its calls in
// flight (a budget without a rate, as the address gate of several
// credentials) hands out permits through its loop when another sharer's
// claim held it back; such a permit has no rate slot, so holding it is
// never late (Permit.Late), or a call would give up a good slot of its own
// budget for nothing.
func TestRatelessSharedPermitNeverLate(t *testing.T) {
	b := newFakeBudget(0)
	other := b.view()
	g := throttle.New(throttle.Config{Priorities: 2, Concurrency: 4, Budget: b.view()})
	t.Cleanup(g.Close)
	other.Claim(0) // urgent work elsewhere: this level-1 permit waits in the loop
	got := make(chan *throttle.Permit, 1)
	go func() {
		pm, err := g.Acquire(context.Background(), 1)
		if err != nil {
			t.Error(err)
		}
		got <- pm
	}()
	for deadline := time.Now().Add(10 * time.Second); g.Queued(1) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the permit never queued")
		}
	}
	other.Claim(-1)
	pm := <-got
	if pm == nil {
		t.FailNow()
	}
	defer pm.Release()
	time.Sleep(2 * throttle.StartTolerance) // the permit ages; nothing to wait for
	if pm.Late() {
		t.Error("a permit of a gate without a rate is late")
	}
}
