package queue

import (
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
