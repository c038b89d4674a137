package queue_test

import (
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/worker"
)

// TestEventsOfAReusedSequenceKeepTheirEntries: the work stream is deleted
// and made again; its new event at sequence 1 has calls and a confirmation
// in the ledger (the trail refused the record). A delivery of the old
// stream's event at sequence 1, still in hand on another replica, writes
// its own entry (a write-ahead, giveBack's answered count). Neither
// replaces the other's, whichever was stored first by whichever server's
// clock (the new event stored an hour after, 30 s after, or stamped 3 s
// before by a server whose clock is behind), for another key or for the
// same request published again.
func TestEventsOfAReusedSequenceKeepTheirEntries(t *testing.T) {
	for _, oldKey := range []string{"kold", "knew"} {
		for _, gap := range []time.Duration{time.Hour, 30 * time.Second, -3 * time.Second} {
			ctx, _, l := boundLedger(t)
			oldStored := time.Now().UTC().Add(-2 * time.Hour).Truncate(time.Millisecond)
			newRef := worker.Ref{Stream: "REVOCATIONS", Seq: 1, Account: "acct", Key: "knew", Stored: oldStored.Add(gap)}
			oldRef := worker.Ref{Stream: "REVOCATIONS", Seq: 1, Account: "acct", Key: oldKey, Stored: oldStored}
			if _, err := l.Update(ctx, newRef, func(e *worker.Entry) error {
				e.Calls, e.Answered = 2, 2
				e.Confirmed = &worker.Call{Status: 200, CFRay: "ray-new", At: time.Now()}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if _, err := l.Update(ctx, oldRef, func(e *worker.Entry) error {
				e.Calls = max(e.Calls, 1)
				e.Answered = min(e.Answered+1, e.Calls)
				e.Last = &worker.Call{Status: 503, At: time.Now()}
				return nil
			}); err != nil {
				t.Fatalf("%s, gap %s: the older event's write: %v", oldKey, gap, err)
			}
			if e, err := l.Load(ctx, newRef); err != nil || e.Confirmed == nil || e.Calls != 2 {
				t.Errorf("%s, gap %s: the newer event's entry after the older one's write: %+v, %v; want its confirmation and 2 calls kept", oldKey, gap, e, err)
			}
			if e, err := l.Load(ctx, oldRef); err != nil || e.Confirmed != nil || e.Calls != 1 || e.Last == nil {
				t.Errorf("%s, gap %s: the older event's entry: %+v, %v; want its own call and answer, no confirmation", oldKey, gap, e, err)
			}
		}
	}
}

// TestEntriesThroughARollingUpgrade: replicas of the version before
// entries were keyed by event keep an event's entry under its stream and
// sequence. What they keep counts for the event (and no other), before and
// after this version writes the event's own entry, which goes under that
// entry's own key and leaves theirs alone.
func TestEntriesThroughARollingUpgrade(t *testing.T) {
	ctx, js, l := boundLedger(t)
	kv, err := js.KeyValue(ctx, queue.LedgerBucket)
	if err != nil {
		t.Fatal(err)
	}
	stored := time.Now().UTC().Truncate(time.Millisecond)
	ref := worker.Ref{Stream: "REVOCATIONS", Seq: 4, Account: "acct", Key: "kup", Stored: stored}
	ownKey := "REVOCATIONS.4.acct.kup." + strconv.FormatInt(stored.UnixNano(), 10)
	olderWrites := func(e worker.Entry) {
		t.Helper()
		b, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(ctx, "REVOCATIONS.4", b); err != nil {
			t.Fatal(err)
		}
	}
	entryUnder := func(key string) worker.Entry {
		t.Helper()
		kve, err := kv.Get(ctx, key)
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		var e worker.Entry
		if err := json.Unmarshal(kve.Value(), &e); err != nil {
			t.Fatal(err)
		}
		return e
	}

	olderWrites(worker.Entry{Account: "acct", Key: "kup", Stored: stored, Calls: 1, Journaled: 1, Answered: 1, Last: &worker.Call{Status: 503, At: time.Now()}})
	if e, err := l.Load(ctx, ref); err != nil || e.Calls != 1 || e.Last == nil {
		t.Fatalf("the event's entry kept by an older replica: %+v, %v; want its call", e, err)
	}
	other := worker.Ref{Stream: "REVOCATIONS", Seq: 4, Account: "acct", Key: "kother", Stored: stored.Add(time.Minute)}
	if e, err := l.Load(ctx, other); err != nil || e.Calls != 0 || e.Last != nil {
		t.Fatalf("another event at the sequence: %+v, %v; want nothing of the older replica's entry", e, err)
	}

	if _, err := l.Update(ctx, ref, func(e *worker.Entry) error { e.Calls++; return nil }); err != nil {
		t.Fatal(err)
	}
	if e := entryUnder(ownKey); e.Calls != 2 {
		t.Fatalf("under the event's own key after a write: %+v; want 2 calls", e)
	}
	if e := entryUnder("REVOCATIONS.4"); e.Calls != 1 {
		t.Fatalf("under the older key after a write: %+v; want what the older replica kept, untouched", e)
	}

	// An older replica then keeps a confirmation where it reads.
	olderWrites(worker.Entry{Account: "acct", Key: "kup", Stored: stored, Calls: 3, Journaled: 1, Answered: 3,
		Confirmed: &worker.Call{Status: 200, CFRay: "ray-older-replica", At: time.Now()}})
	if e, err := l.Load(ctx, ref); err != nil || e.Confirmed == nil || e.Confirmed.CFRay != "ray-older-replica" || e.Calls != 3 {
		t.Fatalf("after an older replica's confirmation: %+v, %v; want it and its 3 calls", e, err)
	}
}

// TestUnrecordedOfAReusedSequence: two events at the same stream and
// sequence (the stream made again) both have a revoked record the trail
// refused: each is kept for the sweep, and the sweep records both (keyed
// by stream and sequence alone, the second would replace the first), two
// events of one key too.
func TestUnrecordedOfAReusedSequence(t *testing.T) {
	o := newOutcomeT(t)
	ctx := dlqTCtx(t)
	l, err := queue.BindLedger(ctx, o.js, o.cfg.Topology(), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	newer := o.record("knew", 1, event.Revoked, time.Now())
	older := o.record("kold", 1, event.Revoked, time.Now().Add(-time.Hour))
	if err := l.Unrecorded(ctx, newer); err != nil {
		t.Fatal(err)
	}
	if err := l.Unrecorded(ctx, older); err != nil {
		t.Fatal(err)
	}
	// And the same request, stored again at a sequence of a stream made
	// again: two events of one key.
	for _, stored := range []time.Time{time.Now(), time.Now().Add(-time.Hour)} {
		if err := l.Unrecorded(ctx, o.record("ksame", 2, event.Revoked, stored)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.SweepUnrecorded(ctx, o.recs, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	if recs := o.onSubject("kold"); len(recs) != 1 {
		t.Errorf("kold: %d records, want 1", len(recs))
	}
	if recs := o.onSubject("knew"); len(recs) != 1 {
		t.Fatalf("knew: %d records after the sweep; its confirmation, kept for the sweep, is lost", len(recs))
	}
	if recs := o.onSubject("ksame"); len(recs) != 2 {
		t.Fatalf("ksame: %d records after the sweep; want one for each of its two events", len(recs))
	}
}
