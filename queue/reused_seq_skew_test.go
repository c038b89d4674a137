package queue_test

import (
	"errors"
	"testing"
	"time"

	"github.com/revoker/revoker/worker"
)

// TestNewStreamsEventStampedBehindAnOlderOne: the work stream (R1,
// its node lost) is made again on another server whose clock is 5 s behind
// the first's. The older stream's event at sequence 1 was called for (its
// entry stamped, by the old leader, at T); the new stream's event at
// sequence 1, stored 2 s later in real time, is stamped T-3s by the new
// leader. Its delivery must be able to read and write its own entry: the
// entry at the sequence is the OLDER event's. A ledger refusing it as
// taken by a newer event would hold it off for good (the entry stays 7
// days): no call, no record, no dead letter.
func TestNewStreamsEventStampedBehindAnOlderOne(t *testing.T) {
	ctx, _, l := boundLedger(t)
	t0 := time.Now().UTC().Truncate(time.Millisecond)
	older := worker.Ref{Stream: "REVOCATIONS", Seq: 1, Account: "acct", Key: "kold", Stored: t0}
	if _, err := l.Update(ctx, older, func(e *worker.Entry) error { e.Calls++; return nil }); err != nil {
		t.Fatal(err)
	}
	newer := worker.Ref{Stream: "REVOCATIONS", Seq: 1, Account: "acct", Key: "knew", Stored: t0.Add(-3 * time.Second)}
	if _, err := l.Load(ctx, newer); err != nil {
		t.Errorf("Load of the new stream's event: %v (ErrEntryTaken %v)", err, errors.Is(err, worker.ErrEntryTaken))
	}
	if _, err := l.Update(ctx, newer, func(e *worker.Entry) error { e.Calls++; return nil }); err != nil {
		t.Errorf("write-ahead of the new stream's event's first call: %v (ErrEntryTaken %v)", err, errors.Is(err, worker.ErrEntryTaken))
	}
}
