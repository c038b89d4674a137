package queue_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestBatchWaitIgnoresAnOlderStreamsRecord: the work stream was made
// again (its sequences start over) and the trail holds a revoked record of
// an older event for the same key at the sequence the new event gets. A
// batch publish (`publish --from-file --wait`) never learns when its events
// were stored: the waiter must still answer the new event's own record
// (dead_lettered), not the older event's revoked one.
func TestBatchWaitIgnoresAnOlderStreamsRecord(t *testing.T) {
	s, ctx := ensuredStack(t)
	olderStreamsRecord(t, s, event.Record{EventID: "old", AccountID: "acct01", KeyID: "keyS", Outcome: event.Revoked, Status: 200, CFRay: "old-ray",
		Stream: s.cfg.Stream, Subject: s.cfg.LowestPriority(), Sequence: 1, Attempts: 1})
	c := dialClient(t, s)
	w, err := c.Watch("", "")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	ev := event.Event{AccountID: "acct01", KeyID: "keyS"}
	body, _ := json.Marshal(ev)
	var events []queue.Published
	b := c.NewBatch(s.cfg.LowestPriority(), func(p queue.Published, err error) {
		if err != nil {
			t.Errorf("batch publish: %v", err)
			return
		}
		events = append(events, p)
	})
	b.Add(ctx, "new-event", ev, body)
	b.Wait(ctx)
	if len(events) != 1 || events[0].Sequence != 1 {
		t.Fatalf("published %+v; want one event at sequence 1", events)
	}
	p := events[0]

	// The worker's own record of the new event: dead-lettered.
	if got := storeRecordOf(t, ctx, s, p, event.DeadLettered, event.Unauthorized, 403, ""); got.EventID != "new-event" {
		t.Fatalf("the worker's record of the new event: %+v", got)
	}

	want := map[uint64]queue.Published{p.Sequence: p}
	var got *event.Record
	actx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.Await(actx, want, time.Now().Add(10*time.Second), func(_ queue.Published, rec event.Record) { got = &rec }); err != nil {
		t.Fatal(err)
	}
	if got == nil {
		t.Fatal("no outcome within the wait")
	}
	if got.EventID != "new-event" || got.Outcome != event.DeadLettered {
		t.Fatalf("publish --from-file --wait answered %s (event %s, cf_ray %s, published_at %s) for the new event, which was %s: the older event's record at a reused sequence",
			got.Outcome, got.EventID, got.CFRay, got.PublishedAt, event.DeadLettered)
	}
}

// TestDuplicateNotTakenForOwnThroughAnOlderStreamsRecord: the work
// stream was made again (sequences start over); the trail holds a record
// of an older event for key K at sequence 1. Within the new stream's
// duplicate window, id X is used for an event of key L, stored at sequence
// 1 and done (gone from the work queue). Publishing K's revocation under X
// is dropped by JetStream as a duplicate; the publisher finds the event
// stored under X done, and must not take the older event's record on K's
// subject, at sequence 1, for proof that it was K's: nothing was stored
// for K.
func TestDuplicateNotTakenForOwnThroughAnOlderStreamsRecord(t *testing.T) {
	s, ctx := ensuredStack(t)
	subject := s.cfg.LowestPriority()
	olderStreamsRecord(t, s, event.Record{EventID: "old", AccountID: "acct01", KeyID: "keyK", Outcome: event.DeadLettered, Reason: event.Unauthorized,
		Status: 403, Stream: s.cfg.Stream, Subject: subject, Sequence: 1, Attempts: 3})
	c := dialClient(t, s)

	// Key L's event under id X, at sequence 1, then done.
	evL := event.Event{AccountID: "acct01", KeyID: "keyL"}
	bodyL, _ := json.Marshal(evL)
	pl, err := c.Publish(ctx, subject, "X", evL, bodyL)
	if err != nil || pl.Sequence != 1 {
		t.Fatalf("key L's event: %+v, %v", pl, err)
	}
	ws, err := s.js.Stream(ctx, s.cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	// Done: a worker's delivery acks it, and the work queue drops it.
	cons, err := ws.Consumer(ctx, s.cfg.Topology().Durable(subject))
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	queuetest.Eventually(t, 5*time.Second, "L's event to leave the work stream", func() bool {
		_, err := ws.GetMsg(ctx, 1)
		return errors.Is(err, jetstream.ErrMsgNotFound)
	})

	evK := event.Event{AccountID: "acct01", KeyID: "keyK"}
	bodyK, _ := json.Marshal(evK)
	p, err := c.Publish(ctx, subject, "X", evK, bodyK)
	if err == nil {
		t.Fatalf("K's revocation under X reported published (%+v), though the stream holds L's event under X and nothing was stored for K", p)
	}
	if !errors.Is(err, queue.ErrIDTaken) && !errors.Is(err, queue.ErrIDUnverified) {
		t.Fatalf("err %v; want ErrIDTaken or ErrIDUnverified", err)
	}
}

// olderStreamsRecord stores old, a record of an event stored an hour ago
// (published_at), as one of a work stream since deleted and made again
// would be.
func olderStreamsRecord(t *testing.T, s *stack, old event.Record) {
	t.Helper()
	old.PublishedAt = time.Now().Add(-time.Hour).UTC().Format(time.RFC3339Nano)
	if _, err := recordsOf(s).Outcome(context.Background(), old); err != nil {
		t.Fatal(err)
	}
}

// recordsOf is a writer of s's outcome records, as the worker's.
func recordsOf(s *stack) *queue.Records {
	return &queue.Records{JS: s.js, Log: zap.NewNop(), OutcomeStream: s.cfg.OutcomeStream, OutcomePrefix: s.cfg.OutcomeSubject, Timeout: 5 * time.Second}
}

// dialClient is a publishing client of s, closed when the test ends.
func dialClient(t *testing.T, s *stack) *queue.Client {
	t.Helper()
	c, err := queue.Dial(s.cfg.Connection(), s.cfg.Topology(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// ensuredStack is a stack with revoker's streams made, and a context for
// the test.
func ensuredStack(t *testing.T) (*stack, context.Context) {
	t.Helper()
	s := newStack(t, nil)
	ctx := dlqTCtx(t)
	if err := queue.Ensure(ctx, s.js, s.cfg.Topology(), zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	return s, ctx
}
