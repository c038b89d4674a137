package queue_test

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
)

// TestPublishWithAnIDTaken: publishing under an id that names another
// key's event in the duplicate window is refused (nothing was stored for
// this key); publishing the same event again is an ordinary duplicate.
func TestPublishWithAnIDTaken(t *testing.T) {
	s := newStack(t, nil)
	if err := queue.Ensure(dlqTCtx(t), s.js, s.cfg.Topology(), zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	c, err := queue.Dial(s.cfg.Connection(), s.cfg.Topology(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pub := func(key string) (queue.Published, error) {
		ev := event.Event{AccountID: "acct01", KeyID: key}
		body, _ := json.Marshal(ev)
		return c.Publish(dlqTCtx(t), s.cfg.LowestPriority(), "X", ev, body)
	}
	if _, err := pub("keyA"); err != nil {
		t.Fatal(err)
	}
	if p, err := pub("keyA"); err != nil || !p.Duplicate {
		t.Fatalf("same event again: %+v, %v", p, err)
	}
	if _, err := pub("keyB"); !errors.Is(err, queue.ErrIDTaken) {
		t.Fatalf("another key under a taken id: %v, want ErrIDTaken", err)
	}

	// The same body stored first as a CloudEvent (planted under an id a
	// caller will use) is not the same event: the worker reads it as an
	// envelope, dead-letters it as invalid, and calls for no key.
	ev := event.Event{AccountID: "acct01", KeyID: "keyC"}
	body, _ := json.Marshal(ev)
	planted := nats.NewMsg(s.cfg.LowestPriority())
	planted.Data = body
	planted.Header.Set(jetstream.MsgIDHeader, "Y")
	planted.Header.Set("Content-Type", event.CloudEventsContentType)
	if _, err := s.js.PublishMsg(dlqTCtx(t), planted); err != nil {
		t.Fatal(err)
	}
	if p, err := c.Publish(dlqTCtx(t), s.cfg.LowestPriority(), "Y", ev, body); !errors.Is(err, queue.ErrIDTaken) {
		t.Fatalf("the same body stored as a CloudEvent under the id: %+v, %v; want ErrIDTaken", p, err)
	}
	// The worker reads headers in any letter case: so does the check.
	lower := nats.NewMsg(s.cfg.LowestPriority())
	lower.Data = body
	lower.Header.Set(jetstream.MsgIDHeader, "Z")
	lower.Header["content-type"] = []string{event.CloudEventsContentType}
	if _, err := s.js.PublishMsg(dlqTCtx(t), lower); err != nil {
		t.Fatal(err)
	}
	if p, err := c.Publish(dlqTCtx(t), s.cfg.LowestPriority(), "Z", ev, body); !errors.Is(err, queue.ErrIDTaken) {
		t.Fatalf("the same body stored as a CloudEvent under the id, its content-type in lower case: %+v, %v; want ErrIDTaken", p, err)
	}
}

// TestPublishedEventIgnoresAnOlderStreamsRecord: the work stream was made
// again, so its sequences start over, and the trail holds the record of
// an older event for the same key at the sequence the new one gets. The
// publisher knows when its event was stored, and does not take that
// record for the new event's outcome (SPEC §4, "The proof", point 5).
func TestPublishedEventIgnoresAnOlderStreamsRecord(t *testing.T) {
	s := newStack(t, nil)
	if err := queue.Ensure(dlqTCtx(t), s.js, s.cfg.Topology(), zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	recs := recordsOf(s)
	old := event.Record{EventID: "old", AccountID: "acct01", KeyID: "keyS", Outcome: event.DeadLettered, Reason: event.Unauthorized,
		Stream: s.cfg.Stream, Sequence: 1, PublishedAt: time.Now().Add(-time.Hour).UTC().Format(time.RFC3339Nano)}
	if _, err := recs.Outcome(dlqTCtx(t), old); err != nil {
		t.Fatal(err)
	}
	c, err := queue.Dial(s.cfg.Connection(), s.cfg.Topology(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ev := event.Event{AccountID: "acct01", KeyID: "keyS"}
	body, _ := json.Marshal(ev)
	p, err := c.Publish(dlqTCtx(t), s.cfg.LowestPriority(), "new", ev, body)
	if err != nil {
		t.Fatal(err)
	}
	if p.Sequence != 1 || p.StoredAt.IsZero() {
		t.Fatalf("published %+v; want sequence 1 and the time it was stored", p)
	}
	if rec, found, err := c.Recorded(dlqTCtx(t), p); err != nil || found {
		t.Fatalf("the new event's outcome is %+v (found %v, %v): the older event's record", rec, found, err)
	}
}
