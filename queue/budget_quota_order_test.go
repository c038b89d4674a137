package queue_test

import (
	"testing"
	"time"

	"github.com/revoker/revoker/queue/queuetest"
	"github.com/revoker/revoker/throttle"
)

// TestBudgetFollowsTheLastQuotaHeard: the entry spaces calls by a stated
// quota of 1/s; an answer then states 4/s (the configured rate: no quota
// to keep) and, before that is written, the next answer states 1/s again.
// The last word is 1/s: calls stay a second apart, here and at every
// sharer (SPEC §6, §9). A quota equal to the entry's must not leave the
// one heard before it pending, to be written over the last word.
func TestBudgetFollowsTheLastQuotaHeard(t *testing.T) {
	srv := queuetest.Server(t)
	const rate = 4
	b := bareBudget(t, srv.ClientURL(), rate)
	other := bareBudget(t, srv.ClientURL(), rate)
	quota := throttle.QuotaInterval(1)

	b.Follow(1)
	reserveNow(t, b, 0) // the quota is written with the reservation
	queuetest.Eventually(t, 10*time.Second, "the quota in the entry", func() bool {
		return b.Spacing() >= quota && other.Spacing() >= quota
	})

	b.Follow(rate) // an answer states the configured rate...
	b.Follow(1)    // ...and the next one 1/s again
	if got := b.Spacing(); got < quota {
		t.Errorf("after the API last stated 1/s, the budget spaces calls %v apart, want %v", got, quota)
	}
	s1 := reserveNow(t, b, 0)
	s2 := reserveNow(t, b, 0)
	if gap := s2.Sub(s1); gap < quota-10*time.Millisecond {
		t.Errorf("after the API last stated 1/s, two calls reserved %v apart, want at least %v", gap.Round(time.Millisecond), quota)
	}
	queuetest.Eventually(t, 10*time.Second, "the other replica to see what was written", func() bool {
		return other.Stats().Watched > 0 && b.Stats().Reserved >= 3
	})
	if got := other.Spacing(); got < quota {
		t.Errorf("another replica spaces calls %v apart after the API last stated 1/s, want %v", got, quota)
	}
}
