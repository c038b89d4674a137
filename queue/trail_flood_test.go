package queue_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/worker"
)

// floodKey stores n records on acct01/keyS's subject as the worker writes
// them for invalid events that name the key: SPEC §5a files an invalid
// event under its valid ids, and no API call, rate or allowed-accounts
// check stands before them, so anyone who may publish events adds one per
// event.
func floodKey(t *testing.T, s *stack, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	at := time.Now().UTC().Format(time.RFC3339Nano)
	for i := range n {
		rec := event.Record{EventID: fmt.Sprintf("flood-%d", i), AccountID: "acct01", KeyID: "keyS", Outcome: event.DeadLettered,
			Reason: event.InvalidEvent, Stream: s.cfg.Stream, Subject: s.cfg.LowestPriority(), Sequence: uint64(1000000 + i),
			PublishedAt: at, CompletedAt: at, Worker: "w"}
		if _, err := s.js.PublishMsgAsync(queue.OutcomeMsg(s.cfg.OutcomeSubject, rec)); err != nil {
			t.Fatal(err)
		}
		if i%2000 == 1999 || i == n-1 {
			select {
			case <-s.js.PublishAsyncComplete():
			case <-ctx.Done():
				t.Fatal("flood not stored")
			}
		}
	}
}

// TestRecordAfterAFloodOfOlderRecords: a key's subject holds 50,000
// records of earlier invalid events. An event for the key is then
// revoked: its record must be stored (SPEC §5a: the event is acked only
// after), and readers must find it. The writer and the readers read the
// key's subject one message at a time from its first, and timed out
// before reaching the end: the event was given back for ever. They now
// start at the records stored since the event, less the servers' clock
// margin (set to a millisecond here: one server, one clock).
func TestRecordAfterAFloodOfOlderRecords(t *testing.T) {
	defer queue.SetRecordClockMargin(time.Millisecond)()
	s, _ := ensuredStack(t)
	c := dialClient(t, s)
	floodKey(t, s, 50000)
	p, _ := trailPublished(t, s, c)
	recs := &queue.Records{JS: s.js, Log: zap.NewNop(), OutcomeStream: s.cfg.OutcomeStream, OutcomePrefix: s.cfg.OutcomeSubject,
		Timeout: 2 * time.Second}
	rec := event.Record{EventID: p.EventID, AccountID: "acct01", KeyID: "keyS", Outcome: event.Revoked, Status: 200, CFRay: "ray-1",
		Attempts: 1, Subject: p.Subject, Sequence: p.Sequence, Stream: p.Stream,
		PublishedAt: p.StoredAt.UTC().Format(time.RFC3339Nano), CompletedAt: time.Now().UTC().Format(time.RFC3339Nano), Worker: "w"}
	got, err := recs.Outcome(context.Background(), rec)
	if err != nil {
		t.Fatalf("the revoked record of acct01/keyS could not be stored behind 50,000 older records of the key: %v", err)
	}
	if got.Outcome != event.Revoked {
		t.Fatalf("stored %+v, want revoked", got)
	}
	// Stored again, it is found, not written twice.
	if again, err := recs.Outcome(context.Background(), rec); err != nil || again != got {
		t.Fatalf("the record written again: %+v, %v; want the first, %+v", again, err, got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	found, ok, err := c.Recorded(ctx, p)
	if err != nil || !ok || found.Outcome != event.Revoked || found.CFRay != "ray-1" {
		t.Fatalf("Recorded = %+v, %v, %v; want the revoked record", found, ok, err)
	}
	if prior, ok, err := recs.Prior(ctx, worker.Ref{Stream: p.Stream, Seq: p.Sequence, Account: p.AccountID, Key: p.KeyID, Stored: p.StoredAt}); err != nil || !ok || prior.CFRay != "ray-1" {
		t.Fatalf("Prior = %+v, %v, %v; want the revoked record", prior, ok, err)
	}
}
