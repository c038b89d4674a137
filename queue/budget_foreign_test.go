package queue

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// entryAt is a key-value entry as the bucket's watch hands one over.
type entryAt struct {
	jetstream.KeyValueEntry
	key   string
	value []byte
	rev   uint64
}

func (e entryAt) Key() string                     { return e.key }
func (e entryAt) Value() []byte                   { return e.value }
func (e entryAt) Revision() uint64                { return e.rev }
func (e entryAt) Created() time.Time              { return time.Now() }
func (e entryAt) Operation() jetstream.KeyValueOp { return jetstream.KeyValuePut }

// TestForeignEntryBeforeOwnWriteKeepsTheHold: this replica writes a hold
// (revision 2); before the write is answered, the watch brings an entry
// after it (revision 3) that is no budget state, which stands on the state
// believed then, from revision 1, without the hold. Once the write is
// answered, that entry stands on the hold: the next reservation here
// writes the hold on, rather than over it.
func TestForeignEntryBeforeOwnWriteKeepsTheHold(t *testing.T) {
	const key = "token_f0e1a2b3"
	b := &Budget{cache: map[string]cachedState{}, log: zap.NewNop()}
	now := time.Now()
	b.wrote(key, budgetState{Next: now.Add(time.Second)}, 1, now)
	b.apply(entryAt{key: key, value: []byte(`{"stream":"REVOCATIONS","seq":1}`), rev: 3})
	hold := now.Add(5 * time.Minute)
	b.wrote(key, budgetState{Next: now.Add(time.Second), Hold: hold}, 2, now)
	c, _ := b.cached(key)
	if c.rev != 3 || !c.st.Hold.Equal(hold) {
		t.Fatalf("after the foreign entry and the answer to the hold's write: revision %d, hold %v; want revision 3 standing on the hold %v", c.rev, c.st.Hold, hold)
	}
}

// TestBudgetForgetsGoneClaimKeys: the watch brings, at start, the claim
// key of every replica that ever ran (each restart is a new replica, and
// its key stays in the bucket). Ended and lapsed ones are dropped from the
// cache at the next look, so that the look, made at every reservation,
// does not grow with them; live ones, and this replica's own, are kept.
func TestBudgetForgetsGoneClaimKeys(t *testing.T) {
	const key = "token_f0e1a2b3"
	b := &Budget{cache: map[string]cachedState{}, log: zap.NewNop(), owner: "self"}
	now := time.Now()
	claimAt := func(owner string, stored time.Time) cachedState {
		return cachedState{st: budgetState{Claims: map[string]budgetClaim{owner: {P: 0, At: stored}}}, created: stored}
	}
	b.cache[key] = cachedState{st: budgetState{Next: now}}
	for i := range 1000 {
		o := fmt.Sprintf("gone%d", i)
		b.cache[key+claimInfix+o] = claimAt(o, now.Add(-time.Hour))
	}
	b.cache[key+claimInfix+"ended"] = cachedState{} // a delete marker
	b.cache[key+claimInfix+"live"] = claimAt("live", now)
	b.cache["token_0ther000"+claimInfix+"other"] = claimAt("other", now.Add(-time.Hour))
	b.cache[key+claimInfix+"self"] = claimAt("self", now.Add(-time.Hour))

	if _, blocked := b.blockedUntil(key, b.cache[key].st, 1, now); !blocked {
		t.Error("a live claim of the urgent level did not block a scheduled call")
	}
	var kept []string
	for k := range b.cache {
		kept = append(kept, k)
	}
	slices.Sort(kept)
	want := []string{key, key + claimInfix + "live", key + claimInfix + "self"}
	if !slices.Equal(kept, want) {
		t.Errorf("cache holds %d keys after the look, want %v", len(kept), want)
	}
}
