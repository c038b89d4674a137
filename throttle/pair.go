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
// shared slot it waited its turn for, takes the budget's next slot, if
// that comes within one of the budget's intervals; if not (another call of
// the budget took it, or a hold came), it gives the shared slot back and
// starts over. So a call keeps its place among every budget's waiters,
// holds a shared slot for at most one of its budget's intervals without
// calling, never holds one while a call that needs it holds the permit it
// waits for, and is late (Late) only if its caller waits before calling.
func AcquirePair(ctx context.Context, budget, shared *Gate, p int) (Pair, error) {
	return acquirePair(ctx, budget, shared, p, false)
}

// ReacquirePair is AcquirePair for a call that held a pair and lost it
// (Late): it waits first in line at priority p at both gates, so the call
// keeps its place.
func ReacquirePair(ctx context.Context, budget, shared *Gate, p int) (Pair, error) {
	return acquirePair(ctx, budget, shared, p, true)
}

func acquirePair(ctx context.Context, budget, shared *Gate, p int, first bool) (Pair, error) {
	var s *Permit
	for {
		bctx, cancel := ctx, context.CancelFunc(func() {})
		if s != nil {
			// Holding a shared slot, it waits at the budget for one of the
			// budget's intervals at most: a call of the budget with a
			// higher priority may take the budget's next permit and then
			// wait for a shared slot, this one, while this call waits for
			// the permit that one holds. Past that, the shared slot goes
			// back and the call starts over, at the budget first.
			bctx, cancel = context.WithTimeout(ctx, budget.pairWait())
		}
		b, err := budget.acquire(bctx, p, first)
		cancel()
		if err != nil {
			if s != nil {
				s.Release()
				s = nil
			}
			if ctx.Err() == nil && bctx.Err() != nil && !errors.Is(err, ErrClosed) {
				continue // gave the shared slot up; first in line again at both
			}
			return Pair{}, err
		}
		if s == nil {
			if s, err = shared.acquire(ctx, p, first); err != nil {
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
