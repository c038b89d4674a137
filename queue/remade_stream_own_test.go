package queue_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
)

// batchPublishOne publishes ev under id through a batch (the event's
// storing time is not known to the publisher: publish --from-file).
func batchPublishOne(t *testing.T, ctx context.Context, c *queue.Client, subject, id string, ev event.Event) queue.Published {
	t.Helper()
	body, _ := json.Marshal(ev)
	var events []queue.Published
	b := c.NewBatch(subject, func(p queue.Published, err error) {
		if err != nil {
			t.Errorf("batch publish: %v", err)
			return
		}
		events = append(events, p)
	})
	b.Add(ctx, id, ev, body)
	b.Wait(ctx)
	if len(events) != 1 || !events[0].StoredAt.IsZero() || events[0].StoredAfter.IsZero() {
		t.Fatalf("published %+v; want one event whose storing time is unknown, and its stream's making known", events)
	}
	return events[0]
}

// TestOwnRecordAfterStreamMadeAgain: an event is published in a
// batch (its storing time unknown), revoked and recorded; the work stream
// is then deleted and made again (REVOKER_CREATE_STREAMS, or by hand).
// The event's own, true record must still answer publish --wait and
// revoker.status: it is that very event's record (same id, account, key,
// stream, sequence), merely stored before the new stream was made: the
// publisher knows when the stream that stored it was made.
func TestOwnRecordAfterStreamMadeAgain(t *testing.T) {
	s, ctx := ensuredStack(t)
	c := dialClient(t, s)
	p := batchPublishOne(t, ctx, c, s.cfg.LowestPriority(), "ev-own", event.Event{AccountID: "acct01", KeyID: "keyO"})
	storeRecordOf(t, ctx, s, p, event.Revoked, "", 200, "ray-own")
	if rec, ok, err := c.Recorded(ctx, p); err != nil || !ok || rec.EventID != "ev-own" {
		t.Fatalf("before the stream is made again: %+v %v %v", rec, ok, err)
	}

	// The work stream is deleted and made again.
	if err := s.js.DeleteStream(ctx, s.cfg.Stream); err != nil {
		t.Fatal(err)
	}
	if err := queue.Ensure(ctx, s.js, s.cfg.Topology(), zap.NewNop()); err != nil {
		t.Fatal(err)
	}

	rec, ok, err := c.Recorded(ctx, p)
	if err != nil || !ok {
		t.Fatalf("the event's own revoked record (event %s, %s/%s, sequence %d) is no longer believed once the work stream was made again: found=%v err=%v rec=%+v",
			p.EventID, p.AccountID, p.KeyID, p.Sequence, ok, err, rec)
	}
}

// TestRecordWithinServerClockSkewOfStreamCreation: on a cluster the
// stream's creation time is the meta leader's clock, an event's storing
// time the stream leader's. With the stream leader's clock 1 ms behind, an
// event stored at once after the stream was made carries a published_at
// just before its stream's Created (simulated here by the record's
// published_at): its own record is then never believed by a reader that
// does not know its storing time (publish --from-file --wait times out).
func TestRecordWithinServerClockSkewOfStreamCreation(t *testing.T) {
	s, ctx := ensuredStack(t)
	c := dialClient(t, s)
	p := batchPublishOne(t, ctx, c, s.cfg.LowestPriority(), "ev-skew", event.Event{AccountID: "acct01", KeyID: "keyK"})
	ws, err := s.js.Stream(ctx, s.cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	created := ws.CachedInfo().Created
	recs := recordsOf(s)
	rec := event.Record{EventID: p.EventID, AccountID: p.AccountID, KeyID: p.KeyID, Outcome: event.Revoked, Status: 200, CFRay: "ray-skew",
		Stream: p.Stream, Subject: p.Subject, Sequence: p.Sequence, Attempts: 1,
		PublishedAt: created.Add(-time.Millisecond).UTC().Format(time.RFC3339Nano), CompletedAt: time.Now().UTC().Format(time.RFC3339Nano)}
	if _, err := recs.Outcome(ctx, rec); err != nil {
		t.Fatal(err)
	}
	got, ok, err := c.Recorded(ctx, p)
	if err != nil || !ok {
		t.Fatalf("the event's own revoked record, published_at 1 ms before the stream's Created (servers' clocks 1 ms apart), is not believed: found=%v err=%v %+v", ok, err, got)
	}
}
