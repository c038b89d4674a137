package queue_test

import (
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/worker"
)

// TestOlderEventLeavesANewerEntry: the work stream is deleted and made
// again; its new event at sequence 1 (key knew) has its confirmation kept
// in the ledger (the trail refused the record). A delivery of the old
// stream's event at sequence 1 (key kold), still in hand on another
// replica, writes its entry (a write-ahead, or giveBack's answered count):
// the write must fail, and the new event's confirmation and calls stay.
func TestOlderEventLeavesANewerEntry(t *testing.T) {
	ctx, _, l := boundLedger(t)
	oldStored := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	newStored := oldStored.Add(time.Hour)
	newRef := worker.Ref{Stream: "REVOCATIONS", Seq: 1, Account: "acct", Key: "knew", Stored: newStored}
	oldRef := worker.Ref{Stream: "REVOCATIONS", Seq: 1, Account: "acct", Key: "kold", Stored: oldStored}
	if _, err := l.Update(ctx, newRef, func(e *worker.Entry) error {
		e.Calls, e.Answered = 2, 2
		e.Confirmed = &worker.Call{Status: 200, CFRay: "ray-new", At: time.Now()}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The old event's delivery gives back: its answered calls stored.
	if _, err := l.Update(ctx, oldRef, func(e *worker.Entry) error {
		e.Calls = max(e.Calls, 1)
		e.Answered = min(e.Answered+1, e.Calls)
		e.Last = &worker.Call{Status: 503, At: time.Now()}
		return nil
	}); err == nil {
		t.Error("the older event's write over the newer event's entry succeeded")
	}
	e, err := l.Load(ctx, newRef)
	if err != nil {
		t.Fatal(err)
	}
	if e.Confirmed == nil || e.Calls != 2 {
		t.Fatalf("the newer event's entry after a write for the older one: %+v; want its confirmation and 2 calls kept", e)
	}

	// An entry stored, it says, a day from now is none a worker wrote: it
	// holds no delivery off.
	planted := worker.Ref{Stream: "REVOCATIONS", Seq: 2, Account: "acct", Key: "kplant", Stored: time.Now().Add(24 * time.Hour)}
	mine := worker.Ref{Stream: "REVOCATIONS", Seq: 2, Account: "acct", Key: "kreal", Stored: time.Now()}
	if _, err := l.Update(ctx, planted, func(e *worker.Entry) error { e.Calls = 1; return nil }); err != nil {
		t.Fatal(err)
	}
	if e, err := l.Update(ctx, mine, func(e *worker.Entry) error { e.Calls = 1; return nil }); err != nil || e.Key != "kreal" {
		t.Fatalf("a delivery's write over an entry stored in the future: %+v, %v; want it written", e, err)
	}
}

// TestUnrecordedOfAReusedSequence: two events at the same stream and
// sequence (the stream made again) both have a revoked record the trail
// refused: each is kept for the sweep, and the sweep records both (keyed
// by stream and sequence alone, the second would replace the first).
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
	if _, err := l.SweepUnrecorded(ctx, o.recs, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	if recs := o.onSubject("kold"); len(recs) != 1 {
		t.Errorf("kold: %d records, want 1", len(recs))
	}
	if recs := o.onSubject("knew"); len(recs) != 1 {
		t.Fatalf("knew: %d records after the sweep; its confirmation, kept for the sweep, is lost", len(recs))
	}
}
