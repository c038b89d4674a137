package queue_test

// Readers of the trail believe only what a worker writes (SPEC §4, "The proof", point 8).

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
)

// trailPublished publishes one event for acct01/keyS and returns it, with
// the subject its records go to.
func trailPublished(t *testing.T, s *stack, c *queue.Client) (queue.Published, string) {
	t.Helper()
	ev := event.Event{AccountID: "acct01", KeyID: "keyS"}
	body, _ := json.Marshal(ev)
	p, err := c.Publish(dlqTCtx(t), s.cfg.LowestPriority(), "trail-ev", ev, body)
	if err != nil {
		t.Fatal(err)
	}
	if p.StoredAt.IsZero() {
		t.Fatalf("published %+v: want the time it was stored", p)
	}
	return p, queue.OutcomeSubject(s.cfg.OutcomeSubject, ev.AccountID, ev.KeyID)
}

// trailRaw stores body as it is on subject of the outcome stream.
func trailRaw(t *testing.T, s *stack, subject, body string) {
	t.Helper()
	m := nats.NewMsg(subject)
	m.Data = []byte(body)
	if _, err := s.js.PublishMsg(dlqTCtx(t), m); err != nil {
		t.Fatal(err)
	}
}

// trailRecordJSON is the body the worker would write for rec, as the
// first part of an object (no closing brace), so fields can be added after.
func trailRecordJSON(rec event.Record) string {
	b := rec.AppendJSON(nil)
	return string(b[:len(b)-1])
}

// TestTrailRecordNamingAnotherKeyByRepeatedField: a body on keyS's
// subject whose "key_id" names another key, and which repeats the field in
// another letter case ("KEY_ID": "keyS"). Read field by field, as any JSON
// tool or SIEM reads it (exact names, first or last value), it is a record
// of keyOther: SPEC §4 point 8, "a record counts only ... if it names that
// key; anything else there is reported, never believed". encoding/json
// folds case, so the readers take it for keyS's record and believe it.
func TestTrailRecordNamingAnotherKeyByRepeatedField(t *testing.T) {
	s, _ := ensuredStack(t)
	c := dialClient(t, s)
	var strays []queue.Stray
	c.Stray = func(st queue.Stray) { strays = append(strays, st) }
	p, subject := trailPublished(t, s, c)
	rec := event.Record{EventID: p.EventID, AccountID: "acct01", KeyID: "keyOther", Outcome: event.Revoked, Status: 200,
		CFRay: "ray", Attempts: 1, Subject: p.Subject, Sequence: p.Sequence, Stream: p.Stream,
		PublishedAt: p.StoredAt.UTC().Format(time.RFC3339Nano), CompletedAt: time.Now().UTC().Format(time.RFC3339Nano), Worker: "w"}
	trailRaw(t, s, subject, trailRecordJSON(rec)+`,"KEY_ID":"keyS"}`)

	got, found, err := c.Recorded(dlqTCtx(t), p)
	if err != nil {
		t.Fatal(err)
	}
	if found {
		t.Errorf("Recorded believed a body whose key_id is %q (repeated as KEY_ID) as the outcome of %s/%s: %+v",
			rec.KeyID, p.AccountID, p.KeyID, got)
	}
	recs, err := queue.KeyOutcomes(dlqTCtx(t), s.js, s.cfg.OutcomeStream, s.cfg.OutcomeSubject, "acct01", "keyS", c.Stray)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 0 || len(strays) == 0 {
		t.Errorf("KeyOutcomes (outcomes --key, GET /v1/keys) returned %d records and reported %d strays; want 0 records, the body reported", len(recs), len(strays))
	}
}

// TestTrailRepeatedOutcomeFieldIsNotBelieved: a body on the key's
// own subject that says "outcome":"dead_lettered" (reason unauthorized)
// and repeats the field, "outcome":"revoked". Which it says depends on
// the parser (first or last value wins): a record that says two things is
// not one the worker could have written and must be reported, never
// believed. Recorded believes "revoked", so `publish --wait` exits 0.
func TestTrailRepeatedOutcomeFieldIsNotBelieved(t *testing.T) {
	s, _ := ensuredStack(t)
	c := dialClient(t, s)
	p, subject := trailPublished(t, s, c)
	rec := event.Record{EventID: p.EventID, AccountID: "acct01", KeyID: "keyS", Outcome: event.DeadLettered, Reason: event.Unauthorized,
		Status: 403, Attempts: 10, Subject: p.Subject, Sequence: p.Sequence, Stream: p.Stream,
		PublishedAt: p.StoredAt.UTC().Format(time.RFC3339Nano), CompletedAt: time.Now().UTC().Format(time.RFC3339Nano), Worker: "w"}
	trailRaw(t, s, subject, trailRecordJSON(rec)+`,"outcome":"revoked"}`)

	got, found, err := c.Recorded(dlqTCtx(t), p)
	if err != nil {
		t.Fatal(err)
	}
	if found {
		t.Errorf("Recorded believed a record that repeats \"outcome\" (dead_lettered, then revoked): believed outcome %q (publish --wait exit %d)",
			got.Outcome, map[bool]int{true: 0, false: 1}[got.Outcome.Succeeded()])
	}
}

// TestTrailNonFinalOutcomeIsNotBelieved: the event's true record is
// not_found; a later message on the key's subject names the same event
// with an outcome that is no final outcome ("requeued", never written to
// the trail). The worker's own reader (Records.Prior) requires a final
// outcome; Recorded (publish --wait, GET /v1/revocations/{id},
// revoker.status) does not, and the later non-final record displaces the
// true one ("among equals the later").
func TestTrailNonFinalOutcomeIsNotBelieved(t *testing.T) {
	s, _ := ensuredStack(t)
	c := dialClient(t, s)
	p, _ := trailPublished(t, s, c)
	recs := recordsOf(s)
	base := event.Record{EventID: p.EventID, AccountID: "acct01", KeyID: "keyS", Status: 404, Attempts: 1,
		Subject: p.Subject, Sequence: p.Sequence, Stream: p.Stream,
		PublishedAt: p.StoredAt.UTC().Format(time.RFC3339Nano), CompletedAt: time.Now().UTC().Format(time.RFC3339Nano), Worker: "w"}
	nf := base
	nf.Outcome, nf.AbsenceCheckedAt = event.NotFound, time.Now().UTC().Format(time.RFC3339Nano)
	if _, err := recs.Outcome(dlqTCtx(t), nf); err != nil {
		t.Fatal(err)
	}
	odd := base
	odd.Outcome, odd.Status = event.Requeued, 0
	if _, err := s.js.PublishMsg(dlqTCtx(t), queue.OutcomeMsg(s.cfg.OutcomeSubject, odd)); err != nil {
		t.Fatal(err)
	}
	got, found, err := c.Recorded(dlqTCtx(t), p)
	if err != nil {
		t.Fatal(err)
	}
	if !found || !got.Outcome.Final() {
		t.Errorf("Recorded believed outcome %q (found %v); want the event's final record %q", got.Outcome, found, event.NotFound)
	}
}
