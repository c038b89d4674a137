package queue_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
	"github.com/revoker/revoker/worker"
)

// TestJournalSharesWrites: first calls announced while a journal write is
// under way share the next one, one message per sequence range, and each
// announcement returns only once its message is stored.
func TestJournalSharesWrites(t *testing.T) {
	ctx, js, l := boundLedger(t)
	l.Replica = "replica-a"
	release := queue.HoldJournal(l)
	// 40 first calls in one range of 64 sequences, 10 in the next.
	const first, second = 40, 10
	var wg sync.WaitGroup
	errs := make(chan error, first+second)
	for i := range first + second {
		seq := uint64(1 + i) // 1..40 share a range
		if i >= first {
			seq = uint64(64 + i) // 104..113: the next range
		}
		wg.Go(func() {
			errs <- l.Announce(ctx, worker.Ref{Stream: "REVOCATIONS", Seq: seq, Account: "acct", Key: "k", Stored: time.Unix(0, int64(seq))})
		})
	}
	queuetest.Eventually(t, 10*time.Second, "every announcement waiting", func() bool { return queue.Pending(l) == first+second })
	s, err := js.Stream(ctx, "KV_"+queue.LedgerBucket)
	if err != nil {
		t.Fatal(err)
	}
	if n := journalMsgs(t, ctx, s); n != 0 {
		t.Fatalf("%d journal messages before the write; the announcements must wait for it", n)
	}
	release()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := journalMsgs(t, ctx, s); n != 2 {
		t.Fatalf("%d journal messages for %d first calls in two ranges; want one per range", n, first+second)
	}
	m, err := s.GetLastMsgForSubject(ctx, "$KV."+queue.LedgerBucket+".calls.REVOCATIONS.0.*")
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Replica string `json:"replica"`
		Calls   []struct {
			Seq     uint64 `json:"seq"`
			Account string `json:"account"`
			Key     string `json:"key"`
			Count   int    `json:"count"`
		} `json:"calls"`
	}
	if err := json.Unmarshal(m.Data, &body); err != nil {
		t.Fatal(err)
	}
	if body.Replica != "replica-a" || len(body.Calls) != first || body.Calls[0].Account != "acct" || body.Calls[0].Key != "k" || body.Calls[0].Count != 1 {
		t.Fatalf("journal message %s; want the replica and the %d calls of the first range, each naming its event", m.Data, first)
	}
}

func journalMsgs(t *testing.T, ctx context.Context, s jetstream.Stream) uint64 {
	t.Helper()
	info, err := s.Info(ctx, jetstream.WithSubjectFilter("$KV."+queue.LedgerBucket+".calls.>"))
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n
}

// TestJournalCountsInTheLedger: Load counts the journal's first calls of
// the event, and of no other event (another key at the sequence, the same
// request stored again); an entry written later counts the ones it knew
// of once, and those announced after it on top.
func TestJournalCountsInTheLedger(t *testing.T) {
	ctx, _, l := boundLedger(t)
	stored := time.Date(2026, 12, 5, 10, 0, 0, 123456789, time.UTC)
	ref := worker.Ref{Stream: "REVOCATIONS", Seq: 70, Account: "acct", Key: "k1", Stored: stored}
	for _, r := range []worker.Ref{
		ref, ref, // two deliveries, each knowing of no call before
		{Stream: "REVOCATIONS", Seq: 70, Account: "acct", Key: "k2", Stored: stored},
		{Stream: "REVOCATIONS", Seq: 70, Account: "acct", Key: "k1", Stored: stored.Add(time.Hour)},
		{Stream: "OTHER", Seq: 70, Account: "acct", Key: "k1", Stored: stored},
		{Stream: "REVOCATIONS", Seq: 71, Account: "acct", Key: "k1", Stored: stored},
	} {
		if err := l.Announce(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	e, err := l.Load(ctx, ref)
	if err != nil || e.Calls != 2 || e.Journaled != 2 {
		t.Fatalf("Load: %+v, %v; want the event's two first calls", e, err)
	}
	// A third call, through the entry, by a delivery that knew of both.
	if _, err := l.Update(ctx, ref, func(e *worker.Entry) error {
		e.Calls, e.Journaled = 3, 2
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if e, err := l.Load(ctx, ref); err != nil || e.Calls != 3 {
		t.Fatalf("Load after the entry: %+v, %v; want 3 calls", e, err)
	}
	// A first call that delivery did not know of, announced after it.
	if err := l.Announce(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if e, err := l.Load(ctx, ref); err != nil || e.Calls != 4 || e.Journaled != 3 {
		t.Fatalf("Load after one more first call: %+v, %v; want 4 calls, 3 of them journaled", e, err)
	}
}

// TestLedgerUpdateDecidesOnTheStoredEntry: a change that refuses the guess
// of no entry (a first write's) is decided on the entry as stored, the
// journal's calls included: a first call stored ahead and then not made
// can be taken back, and the entry then counts none.
func TestLedgerUpdateDecidesOnTheStoredEntry(t *testing.T) {
	ctx, _, l := boundLedger(t)
	ref := worker.Ref{Stream: "REVOCATIONS", Seq: 90, Account: "acct", Key: "k1"}
	if err := l.Announce(ctx, ref); err != nil {
		t.Fatal(err)
	}
	takeBack := func(e *worker.Entry) error {
		if e.Calls != 1 {
			return errors.New("not the entry the call was counted in")
		}
		e.Calls--
		return nil
	}
	if e, err := l.Update(ctx, ref, takeBack); err != nil || e.Calls != 0 {
		t.Fatalf("Update: %+v, %v; want the journaled call taken back", e, err)
	}
	if e, err := l.Load(ctx, ref); err != nil || e.Calls != 0 {
		t.Fatalf("Load: %+v, %v; want no call", e, err)
	}
	// Refused on the stored entry too: nothing stored, that entry returned.
	if e, err := l.Update(ctx, ref, takeBack); err == nil || e.Calls != 0 || e.Journaled != 1 {
		t.Fatalf("Update refused: %+v, %v; want the stored entry and the change's error", e, err)
	}
}
