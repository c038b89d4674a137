package throttle

import (
	"context"
	"time"
)

// PairTolerance is how long after its rate slot a call may start: half of
// what a shared budget's spacing leaves to spare in any one-second window
// (queue.WindowSlack, 20 ms), so calls that start late by up to this much
// still never bunch in a second.
const PairTolerance = 10 * time.Millisecond

// Pair is leave from two gates at once: a rate budget's and the shared
// one (the calls in flight and the address limit). Release both.
type Pair struct{ budget, shared *Permit }

// Release gives both back.
func (p Pair) Release() {
	if p.shared != nil {
		p.shared.Release()
	}
	p.budget.Release()
}

// AcquirePair waits for leave from budget, then from shared, at priority
// p. The budget is passed first so that a call never waits for its rate
// while holding a shared slot another budget's call could use. A rate slot
// is spent the moment it is granted, so one that went by while the call
// waited for the shared gate cannot be used: calls started late would
// bunch in a second. The pair is then given back and taken again, and a
// call starts at most PairTolerance after its budget's slot (the slot
// given back is spent, unused: the rate is never exceeded, only not
// reached while the shared gate keeps calls waiting).
func AcquirePair(ctx context.Context, budget, shared *Gate, p int) (Pair, error) {
	now := budget.cfg.Clock
	for {
		b, err := budget.Acquire(ctx, p)
		if err != nil {
			return Pair{}, err
		}
		granted := now()
		s, err := shared.Acquire(ctx, p)
		if err != nil {
			b.Release()
			return Pair{}, err
		}
		if !budget.limited() || now().Sub(granted) <= PairTolerance {
			return Pair{budget: b, shared: s}, nil
		}
		s.Release()
		b.Release()
	}
}

// limited reports whether g spaces its permits: a rate of its own, or a
// shared budget's.
func (g *Gate) limited() bool { return g.cfg.Rate > 0 || g.budget != nil }
