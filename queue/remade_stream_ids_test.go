package queue_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
)

// storeRecordOf stores a worker-shaped record of p's event (read from the
// work stream while it is there), with outcome and reason, and returns
// the record the trail believes for the event.
func storeRecordOf(t *testing.T, ctx context.Context, s *stack, p queue.Published, outcome event.Outcome, reason event.Reason, status int, ray string) event.Record {
	t.Helper()
	ws, err := s.js.Stream(ctx, s.cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := ws.GetMsg(ctx, p.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	rec := event.Record{EventID: p.EventID, AccountID: p.AccountID, KeyID: p.KeyID, Outcome: outcome, Reason: reason, Status: status, CFRay: ray,
		Stream: p.Stream, Subject: p.Subject, Sequence: p.Sequence, Attempts: 5,
		PublishedAt: stored.Time.UTC().Format(time.RFC3339Nano), CompletedAt: time.Now().UTC().Format(time.RFC3339Nano)}
	believed, err := recordsOf(s).Outcome(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	return believed
}

// TestOlderStreamsRecordAnswersNoNewEvent: an event of key K, stored
// at sequence 1 and dead-lettered (unauthorized); the work stream is made
// again within the minute; the key is published again (publish --from-file
// --wait), stored at sequence 1 of the new stream and not handled yet.
// Its reader must not answer the older event's record.
func TestOlderStreamsRecordAnswersNoNewEvent(t *testing.T) {
	s, ctx := ensuredStack(t)
	c := dialClient(t, s)
	old := batchPublishOne(t, ctx, c, s.cfg.LowestPriority(), "ev-old", event.Event{AccountID: "acct01", KeyID: "keyK"})
	storeRecordOf(t, ctx, s, old, event.DeadLettered, "unauthorized", 403, "ray-old")

	if err := s.js.DeleteStream(ctx, s.cfg.Stream); err != nil {
		t.Fatal(err)
	}
	if err := queue.Ensure(ctx, s.js, s.cfg.Topology(), zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	fresh := batchPublishOne(t, ctx, c, s.cfg.LowestPriority(), "ev-new", event.Event{AccountID: "acct01", KeyID: "keyK"})
	if fresh.Sequence != old.Sequence {
		t.Fatalf("sequences %d, %d", old.Sequence, fresh.Sequence)
	}
	rec, ok, err := c.Recorded(ctx, fresh)
	if err != nil {
		t.Fatal(err)
	}
	if ok {
		t.Fatalf("event %s (stored in the stream made again, not handled yet) is answered by the older stream's record of event %s: %s %s status %d cf_ray %s attempts %d",
			fresh.EventID, rec.EventID, rec.Outcome, rec.Reason, rec.Status, rec.CFRay, rec.Attempts)
	}
}

// TestLostEventNotAnsweredByANewStreamsRecord: an event published in a
// batch is lost with its stream (deleted and made again before any
// worker took it); another event of the same key is stored at the same
// sequence of the new stream and recorded. The first event's reader
// (StoredAfter the old stream's making) must not take that record for its
// own: its event was never handled.
func TestLostEventNotAnsweredByANewStreamsRecord(t *testing.T) {
	s, ctx := ensuredStack(t)
	c := dialClient(t, s)
	lost := batchPublishOne(t, ctx, c, s.cfg.LowestPriority(), "ev-lost", event.Event{AccountID: "acct01", KeyID: "keyL"})
	if err := s.js.DeleteStream(ctx, s.cfg.Stream); err != nil {
		t.Fatal(err)
	}
	if err := queue.Ensure(ctx, s.js, s.cfg.Topology(), zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	other := batchPublishOne(t, ctx, c, s.cfg.LowestPriority(), "ev-other", event.Event{AccountID: "acct01", KeyID: "keyL"})
	storeRecordOf(t, ctx, s, other, event.DeadLettered, "api_rejected", 400, "ray-other")
	rec, ok, err := c.Recorded(ctx, lost)
	if err != nil {
		t.Fatal(err)
	}
	if ok {
		t.Fatalf("event %s, lost with its stream, is answered by event %s's record of the stream made again: %s %s cf_ray %s",
			lost.EventID, rec.EventID, rec.Outcome, rec.Reason, rec.CFRay)
	}
}

// TestBatchDuplicateOfAnotherKey: publish --from-file of an event
// whose id another key's event holds within the duplicate window. Publish
// (one event) refuses it with ErrIDTaken ("NOT published"); a batch must
// too, or key B's revocation looks stored.
func TestBatchDuplicateOfAnotherKey(t *testing.T) {
	s, ctx := ensuredStack(t)
	c := dialClient(t, s)
	batchPublishOne(t, ctx, c, s.cfg.LowestPriority(), "ev-x", event.Event{AccountID: "acct01", KeyID: "keyA"})
	evB := event.Event{AccountID: "acct01", KeyID: "keyB"}
	body := []byte(`{"account_id":"acct01","key_id":"keyB"}`)
	if _, err := c.Publish(ctx, s.cfg.LowestPriority(), "ev-x", evB, body); err == nil {
		t.Fatal("single publish of keyB under ev-x: no error")
	} else {
		t.Logf("single publish: %v", err)
	}
	var got []queue.Published
	var errs []error
	b := c.NewBatch(s.cfg.LowestPriority(), func(p queue.Published, err error) { got = append(got, p); errs = append(errs, err) })
	b.Add(ctx, "ev-x", evB, body)
	b.Wait(ctx)
	if len(errs) == 1 && errs[0] == nil {
		t.Fatalf("batch publish of keyB under ev-x: no error, %+v: reported published (a duplicate), while the stored event is keyA's", got[0])
	}
}
