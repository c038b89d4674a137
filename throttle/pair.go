package throttle

import (
	"context"
	"errors"
	"time"
)

// PairTolerance is how long after its rate slot was handed out a call may
// start: what the spacing leaves to spare in any one-second window
// (WindowSlack, 20 ms), less the SlotGrace a slot may already be late by
// when it is handed out, less a margin for the way to the API.
const PairTolerance = 5 * time.Millisecond

// Pair is leave from two gates at once: a rate budget's and the shared
// one (the calls in flight). Release both.
type Pair struct{ budget, shared *Permit }

// Late reports whether either permit is (Permit.Late).
func (p Pair) Late() bool {
	return p.budget.Late() || p.shared != nil && p.shared.Late()
}

// Release gives both back.
func (p Pair) Release() {
	if p.shared != nil {
		p.shared.Release()
	}
	p.budget.Release()
}

// AcquirePair waits for leave from budget, then from shared, at priority
// p. The budget gate bounds only the rate (its Concurrency Unbounded): the
// calls in flight are the shared gate's to bound. A budget that bounded
// them too would let a call hold the budget's permit while it waits for a
// shared slot held by a call that waits for that permit. The budget is passed first so that a call never waits for its rate
// while holding a shared slot another budget's call could use. A rate slot
// is spent the moment it is handed out, so one that went by while the call
// waited for the shared gate is not used late (calls started late would
// bunch in a second): it is given up, spent, and the call, keeping the
// shared slot it waited its turn for, takes the budget's next slot; but
// not through a hold of the budget, nor while the budget's slots go to
// calls of a higher priority: then it gives the shared slot back and
// starts over. So a call keeps its place among every budget's waiters,
// holds a shared slot without calling only while it is its budget's next
// call (one interval, or a few where other replicas take the budget's
// slots first), never while a call that needs it holds the permit it
// waits for, and is late (Late) only if its caller waits before calling.
func AcquirePair(ctx context.Context, budget, shared *Gate, p int) (Pair, error) {
	return acquirePair(ctx, budget, shared, p, false, nil)
}

// AcquirePairAside is AcquirePair that calls aside before it waits for its
// budget's next slot (a rate slot ahead, a hold of the budget), and what
// aside returned once that wait is over: a wait of the caller's own budget,
// during which the caller's place may go to the calls of other budgets.
// The wait for the shared gate, which every budget's calls share, is not
// one.
func AcquirePairAside(ctx context.Context, budget, shared *Gate, p int, aside Aside) (Pair, error) {
	return acquirePair(ctx, budget, shared, p, false, aside)
}

// ReacquirePair is AcquirePair for a call that held a pair and lost it
// (Late): it waits first in line at priority p at both gates, so the call
// keeps its place.
func ReacquirePair(ctx context.Context, budget, shared *Gate, p int) (Pair, error) {
	return acquirePair(ctx, budget, shared, p, true, nil)
}

// ReacquirePairAside is ReacquirePair with AcquirePairAside's aside.
func ReacquirePairAside(ctx context.Context, budget, shared *Gate, p int, aside Aside) (Pair, error) {
	return acquirePair(ctx, budget, shared, p, true, aside)
}

// pairStep bounds how long a call holding a shared slot waits at its
// budget before it looks up (acquirePair).
const pairStep = 100 * time.Millisecond

func acquirePair(ctx context.Context, budget, shared *Gate, p int, first bool, aside Aside) (Pair, error) {
	var s *Permit
	for {
		bctx, cancel := ctx, context.CancelFunc(func() {})
		if s != nil {
			// Holding a shared slot, it looks up from its wait at the
			// budget once every one of the budget's intervals (pairStep
			// at most), and when a call queues for a shared slot: it
			// keeps the slot only while it is the budget's next call, not
			// through a hold of either gate, nor while a call of a higher
			// priority waits for the budget's slots or for a shared one,
			// here or on another replica (SPEC §6: the shared slots go to
			// waiting events in priority order, whatever their budget).
			bctx, cancel = context.WithTimeout(ctx, min(budget.pairWait(), pairStep))
			queued := shared.queuedSignal()
			go func(cancel context.CancelFunc) {
				select {
				case <-queued:
					cancel()
				case <-bctx.Done():
				}
			}(cancel)
		}
		// Set aside only while it holds no shared slot: one it holds is
		// not a wait of its own budget's alone.
		wait := aside
		if s != nil {
			wait = nil
		}
		b, err := budget.acquire(bctx, p, first, wait)
		cancel()
		if err != nil {
			if s != nil && ctx.Err() == nil && bctx.Err() != nil && !errors.Is(err, ErrClosed) {
				if !budget.yields(p) && !shared.yields(p) {
					continue // it keeps the shared slot and its place
				}
				// The shared slot goes back, and the call starts over, at
				// the budget first, first in line.
				s.Release()
				s = nil
				continue
			}
			if s != nil {
				s.Release()
			}
			return Pair{}, err
		}
		if s == nil {
			// Served as they come, not by their events' order (InOrder):
			// each holds a rate slot of its budget already, spent when it
			// was handed out, which a later event going first would let
			// go by.
			if s, err = shared.acquire(InOrder(ctx, 0), p, first, nil); err != nil {
				b.Release()
				return Pair{}, err
			}
		}
		if !b.Late() {
			return Pair{budget: b, shared: s}, nil
		}
		b.Release()
		first = true // its slot went by: it waits for the next first in line
	}
}
