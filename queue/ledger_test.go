package queue_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap/zaptest"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
	"github.com/revoker/revoker/worker"
)

// TestLedgerEntriesNameTheirEvent: an entry is believed only for its
// account, key and storing time (SPEC §4, "The proof", point 5); an entry
// removed by hand leaves a marker that a later call writes over rather
// than stalling the event forever.
func TestLedgerEntriesNameTheirEvent(t *testing.T) {
	ctx, js, l := boundLedger(t)
	stored := time.Date(2026, 12, 5, 10, 0, 0, 123456789, time.UTC)
	ref := worker.Ref{Stream: "REVOCATIONS", Seq: 1, Account: "acct", Key: "k1", Stored: stored}
	confirm := func(e *worker.Entry) error {
		e.Calls++
		e.Confirmed = &worker.Call{Status: 200, CFRay: "ray-1"}
		return nil
	}
	if _, err := l.Update(ctx, ref, confirm); err != nil {
		t.Fatal(err)
	}
	for name, other := range map[string]worker.Ref{
		"another key":                    {Stream: "REVOCATIONS", Seq: 1, Account: "acct", Key: "k2", Stored: stored},
		"the same request, stored again": {Stream: "REVOCATIONS", Seq: 1, Account: "acct", Key: "k1", Stored: stored.Add(time.Hour)},
	} {
		if e, err := l.Load(ctx, other); err != nil || e.Confirmed != nil || e.Calls != 0 {
			t.Fatalf("%s at the same sequence inherits %+v (err %v)", name, e, err)
		}
	}
	if e, err := l.Load(ctx, ref); err != nil || e.Confirmed == nil || e.Calls != 1 {
		t.Fatalf("the event's own entry reads %+v (err %v)", e, err)
	}

	kv, err := js.KeyValue(ctx, queue.LedgerBucket)
	if err != nil {
		t.Fatal(err)
	}
	// Under the event's key, and where older versions kept it.
	for _, key := range []string{"REVOCATIONS.1.acct.k1." + strconv.FormatInt(stored.UnixNano(), 10), "REVOCATIONS.1"} {
		if err := kv.Delete(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	e, err := l.Update(ctx, ref, func(e *worker.Entry) error { e.Calls++; return nil })
	if err != nil || e.Calls != 1 || e.Confirmed != nil {
		t.Fatalf("after the entry was deleted by hand: %+v, %v; want a fresh entry with one call", e, err)
	}
}

// boundLedger is a ledger bound on a server of its own, and a context for
// the test's requests.
func boundLedger(t *testing.T) (context.Context, jetstream.JetStream, *queue.Ledger) {
	t.Helper()
	ns := queuetest.Server(t)
	_, js := queuetest.Connect(t, ns)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	l, err := queue.BindLedger(ctx, js, config.Default().Topology(), zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return ctx, js, l
}

// TestLedgerClampsWhatItReads: a kept answer or confirmation no worker
// could have written (a status outside HTTP's, a CF-Ray past its bound)
// is dropped when read, and a credential no worker could have named too (SPEC §4, "The proof", point 8).
func TestLedgerClampsWhatItReads(t *testing.T) {
	ctx, _, l := boundLedger(t)
	ref := worker.Ref{Stream: "REVOCATIONS", Seq: 2, Account: "acct", Key: "k1"}
	if _, err := l.Update(ctx, ref, func(e *worker.Entry) error {
		e.Calls = 1
		e.Last = &worker.Call{Status: 403, CFRay: "ray-1"}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if e, err := l.Load(ctx, ref); err != nil || e.Last == nil || e.Last.Status != 403 {
		t.Fatalf("a kept 403 reads %+v (err %v)", e.Last, err)
	}
	// A ray as a record keeps it: 127 characters of any kind and "…".
	longRay := strings.Repeat("é", 127) + "…"
	if _, err := l.Update(ctx, ref, func(e *worker.Entry) error {
		e.Confirmed = &worker.Call{Status: 200, CFRay: longRay}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if e, err := l.Load(ctx, ref); err != nil || e.Confirmed == nil || e.Confirmed.CFRay != longRay {
		t.Fatalf("a confirmation with a ray of 128 characters (%d bytes) reads %+v (err %v)", len(longRay), e.Confirmed, err)
	}
	// The credential a confirmation names is a credential's name, or
	// none: the record would carry it (SPEC §5a).
	for cred, want := range map[string]string{"cred-a": "cred-a", "Cred A\n": "", strings.Repeat("a", 33): ""} {
		if _, err := l.Update(ctx, ref, func(e *worker.Entry) error {
			e.Confirmed = &worker.Call{Status: 200, CFRay: "ray-2", Credential: cred}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if e, err := l.Load(ctx, ref); err != nil || e.Confirmed == nil || e.Confirmed.Credential != want {
			t.Fatalf("a confirmation naming credential %q reads %+v (err %v); want credential %q", cred, e.Confirmed, err, want)
		}
	}
	for _, bad := range []worker.Call{{Status: 99}, {Status: 600}, {Status: 503, CFRay: string(make([]byte, 4096))}} {
		if _, err := l.Update(ctx, ref, func(e *worker.Entry) error { e.Last = &bad; return nil }); err != nil {
			t.Fatal(err)
		}
		if e, err := l.Load(ctx, ref); err != nil || e.Last != nil {
			t.Fatalf("a kept answer of status %d, CF-Ray of %d bytes, reads %+v (err %v); want none", bad.Status, len(bad.CFRay), e.Last, err)
		}
	}
}

// TestLedgerKeepsAnInvalidEventsDeadLetter: the mark an invalid event's
// dead letter leaves is read back for that event only, and no other
// reason is believed from the bucket.
func TestLedgerKeepsAnInvalidEventsDeadLetter(t *testing.T) {
	ctx, _, l := boundLedger(t)
	stored := time.Date(2026, 12, 6, 8, 0, 0, 0, time.UTC)
	ref := worker.Ref{Stream: "REVOCATIONS", Seq: 3, Account: event.NoKey, Key: event.NoKey, Stored: stored}
	if _, err := l.Update(ctx, ref, func(e *worker.Entry) error { e.DeadLettered = event.InvalidEvent; return nil }); err != nil {
		t.Fatal(err)
	}
	if e, err := l.Load(ctx, ref); err != nil || e.DeadLettered != event.InvalidEvent {
		t.Fatalf("the mark reads %q (err %v)", e.DeadLettered, err)
	}
	later := ref
	later.Stored = stored.Add(time.Hour) // the stream made again: another event
	if e, err := l.Load(ctx, later); err != nil || e.DeadLettered != "" {
		t.Fatalf("another event at the sequence reads the mark %q (err %v)", e.DeadLettered, err)
	}
	unknown := ref
	unknown.Stored = time.Time{} // no storing time: nothing tells the event apart
	if e, err := l.Load(ctx, unknown); err != nil || e.DeadLettered != "" {
		t.Fatalf("an event with no storing time reads the mark %q (err %v)", e.DeadLettered, err)
	}
	// What no worker writes is not believed: a call for an event that is
	// never called for, another reason, a mark on a real key's entry.
	if _, err := l.Update(ctx, ref, func(e *worker.Entry) error {
		e.DeadLettered, e.Calls, e.Confirmed = event.APIRejected, 2, &worker.Call{Status: 200, CFRay: "forged"}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if e, err := l.Load(ctx, ref); err != nil || e.DeadLettered != "" || e.Calls != 0 || e.Confirmed != nil {
		t.Fatalf("an invalid event's entry reads %+v (err %v); want nothing but a mark", e, err)
	}
	real := worker.Ref{Stream: "REVOCATIONS", Seq: 4, Account: "acct", Key: "k1", Stored: stored}
	if _, err := l.Update(ctx, real, func(e *worker.Entry) error { e.DeadLettered = event.InvalidEvent; return nil }); err != nil {
		t.Fatal(err)
	}
	if e, err := l.Load(ctx, real); err != nil || e.DeadLettered != "" {
		t.Fatalf("a valid event's entry reads the mark %q (err %v)", e.DeadLettered, err)
	}
}

// TestLedgerInvalidMarkLeavesTheValidEntry: an invalid event's mark at the
// sequence of a valid event's entry (a stream made again while the invalid
// event was still in hand) is kept beside it, never over it.
func TestLedgerInvalidMarkLeavesTheValidEntry(t *testing.T) {
	ctx, _, l := boundLedger(t)
	stored := time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)
	valid := worker.Ref{Stream: "REVOCATIONS", Seq: 5, Account: "acct", Key: "k1", Stored: stored.Add(time.Minute)}
	confirmed := &worker.Call{Status: 200, CFRay: "ray-1", At: stored}
	if _, err := l.Update(ctx, valid, func(e *worker.Entry) error { e.Calls, e.Answered, e.Confirmed = 1, 1, confirmed; return nil }); err != nil {
		t.Fatal(err)
	}
	invalid := worker.Ref{Stream: "REVOCATIONS", Seq: 5, Account: event.NoKey, Key: event.NoKey, Stored: stored}
	if _, err := l.Update(ctx, invalid, func(e *worker.Entry) error { e.DeadLettered = event.InvalidEvent; return nil }); err != nil {
		t.Fatal(err)
	}
	if e, err := l.Load(ctx, valid); err != nil || e.Confirmed == nil || e.Confirmed.CFRay != "ray-1" {
		t.Fatalf("the valid event's entry reads %+v (err %v); its confirmation must stay", e, err)
	}
	if e, err := l.Load(ctx, invalid); err != nil || e.DeadLettered != event.InvalidEvent {
		t.Fatalf("the invalid event's mark reads %q (err %v)", e.DeadLettered, err)
	}
}

// TestLedgerUpdateSeesTheJournal: with no entry yet and two first calls in
// the journal (this delivery's and another's), a write-ahead that knows of
// one is refused: the change decides on the entry as the ledger counts it,
// the journal's calls included, never on a guess that there is none.
func TestLedgerUpdateSeesTheJournal(t *testing.T) {
	ctx, _, l := boundLedger(t)
	ref := worker.Ref{Stream: "REVOCATIONS", Seq: 5, Account: "acct", Key: "k1"}
	for range 2 {
		if err := l.Announce(ctx, ref); err != nil {
			t.Fatal(err)
		}
	}
	const seen = 1
	var saw []int
	moved := errors.New("moved")
	e, err := l.Update(ctx, ref, func(e *worker.Entry) error {
		saw = append(saw, e.Calls)
		if e.Calls > seen {
			return moved
		}
		e.Calls = seen + 1
		return nil
	})
	if !errors.Is(err, moved) || e.Calls != 2 || len(saw) != 1 || saw[0] != 2 {
		t.Fatalf("the change saw %v calls, Update returned %+v, %v; want it to see both journaled calls and refuse", saw, e, err)
	}
}
