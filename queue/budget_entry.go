package queue

import (
	"maps"
	"time"

	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/untrusted"
)

// budgetState is the shared entry of one credential. Every time in it is
// the NATS server's (see serverClock), and none is believed beyond what a
// replica could have written at the entry's own server time (clampState).
type budgetState struct {
	// Next is the earliest start of the next call of any replica.
	Next time.Time `json:"next,omitzero"`
	// Hold stops every call until then; Cause says why.
	Hold  time.Time `json:"hold,omitzero"`
	Cause string    `json:"cause,omitempty"`
	// Claims are, per replica, the highest priority with work waiting.
	Claims map[string]budgetClaim `json:"claims,omitempty"`
	// Spacing is the interval between calls that the API's stated quota
	// asks for, where it is longer than the configured rate's, as the
	// replica that heard it last wrote it; 0 for none.
	Spacing time.Duration `json:"spacing,omitempty"`
}

// budgetClaim is one replica's claim of a priority. Its freshness is the
// server's time of the write that renewed it: the replica renewing a claim
// leaves At out (only the server knows when it stores the entry), readers
// take the entry's own time for it, and whoever writes the entry next
// carries At explicitly. So a claim lapses claimTTL after the server stored
// it, whatever the clock of the replica that made it.
type budgetClaim struct {
	P  int       `json:"p"`
	At time.Time `json:"at,omitzero"`
	// Until is the renewer's own estimate of the lapse, in server time,
	// kept for replicas of earlier versions that read only this; here it
	// can only shorten a claim.
	Until time.Time `json:"until,omitzero"`
}

// lapse is when the claim stops counting, in server time.
func (c budgetClaim) lapse() time.Time {
	end := c.At.Add(claimTTL)
	if !c.Until.IsZero() && c.Until.Before(end) {
		end = c.Until
	}
	return end
}

// maxCauseLen bounds a hold's cause as read: it ends up in logs.
const maxCauseLen = 200

// clampSlack: a replica's estimate of the server's time, which it writes,
// may run a little ahead of the server's stamp of its write. A value beyond
// its bound by no more than this is bounded all the same, but not reported.
const clampSlack = time.Second

// clampState bounds what st, stored by the server at created, may say to
// what a replica could have written then (SPEC §4 "The proof", point 8),
// and so that nothing read holds calls for longer than throttle.MaxPause
// (SPEC §9): a hold at most that cap ahead, a next slot at most that cap
// or one interval of the budget's own rate (and a reservation's lead)
// ahead, whichever is longer, a spacing of at most that cap, claims
// renewed no later than the entry was stored.
// It fills in the At of claims renewed by this very write. It returns the
// bounded state, a copy, and the names of the fields found out of range
// (beyond clampSlack).
func clampState(st budgetState, created time.Time, interval time.Duration) (budgetState, []string) {
	var out []string
	// bound caps *t at limit, and reports whether it was far beyond.
	bound := func(t *time.Time, limit time.Time) bool {
		if !t.After(limit) {
			return false
		}
		far := t.Sub(limit) > clampSlack
		*t = limit
		return far
	}
	if bound(&st.Hold, created.Add(throttle.MaxPause)) {
		out = append(out, "hold")
	}
	if bound(&st.Next, created.Add(max(throttle.MaxPause, interval+budgetLead))) {
		out = append(out, "next")
	}
	if st.Spacing < 0 || st.Spacing > throttle.MaxPause {
		st.Spacing = min(max(st.Spacing, 0), throttle.MaxPause)
		out = append(out, "spacing")
	}
	if c := untrusted.Line(st.Cause, maxCauseLen); c != st.Cause {
		st.Cause = c
		out = append(out, "cause")
	}
	if len(st.Claims) == 0 {
		st.Claims = nil
		return st, out
	}
	claims := make(map[string]budgetClaim, len(st.Claims))
	bad := false
	for o, c := range st.Claims {
		if c.At.IsZero() {
			c.At = created // renewed by this write
		}
		if bound(&c.At, created) {
			bad = true
		}
		if bound(&c.Until, created.Add(claimTTL)) {
			bad = true
		}
		if c.P < 0 {
			c.P, bad = 0, true
		}
		claims[o] = c
	}
	if bad {
		out = append(out, "claims")
	}
	st.Claims = claims
	return st, out
}

// liveClaims is a copy of cs without the claims lapsed at now.
func liveClaims(cs map[string]budgetClaim, now time.Time) map[string]budgetClaim {
	live := make(map[string]budgetClaim, len(cs)+1)
	for o, c := range cs {
		if now.Before(c.lapse()) {
			live[o] = c
		}
	}
	return live
}

// withClaimsAt is st with the claims renewed by its own write (At left
// out) stamped at, for a copy of an entry whose server time is not known
// yet; st itself is not changed.
func withClaimsAt(st budgetState, at time.Time) budgetState {
	st.Claims = maps.Clone(st.Claims)
	for o, c := range st.Claims {
		if c.At.IsZero() {
			c.At = at
			st.Claims[o] = c
		}
	}
	return st
}
