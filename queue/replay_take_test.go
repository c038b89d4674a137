package queue_test

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
)

// TestDisplacedReplayRunAgainStoresNoSecondCopy: a publisher holds
// replay:1 (a decoy), so the replay goes out under a fresh id. The record
// stays (only the worker taking the replay removes it), so an operator
// running the replay again while that republish still waits behind a
// backlog finds the record and republishes it: waiting() looks only under
// replay:1, whose note was forgotten. The event is stored twice.
func TestDisplacedReplayRunAgainStoresNoSecondCopy(t *testing.T) {
	js, cfg := dlqTSetup(t)
	const body = `{"account_id":"a","key_id":"k"}`
	dlqTWrite(t, js, cfg, event.DeadLetter{Reason: "api_rejected", EventID: "orig-1", Stream: cfg.Stream,
		Subject: "revoke.urgent", Sequence: 9, FailedAt: time.Now()}, body)
	rec, err := queue.GetDeadLetter(dlqTCtx(t), js, cfg.DLQStream, 1)
	if err != nil {
		t.Fatal(err)
	}
	dlqTPlant(t, js, "revoke.urgent", queue.ReplayMsgID(1), `{"account_id":"a","key_id":"decoy"}`, "orig-1")

	first, err := replayer(t, js, cfg).Republish(dlqTCtx(t), rec)
	if err != nil || first.Displaced == "" {
		t.Fatalf("first run %+v %v", first, err)
	}
	before := dlqTMsgs(t, js, cfg.Stream)
	if n := dlqTMsgs(t, js, cfg.DLQStream); n != 1 {
		t.Fatalf("%d records", n)
	}
	again, err := replayer(t, js, cfg).Republish(dlqTCtx(t), rec)
	if err != nil {
		t.Fatal(err)
	}
	copies := 0
	for _, m := range dlqTStored(t, js, cfg.Stream) {
		if string(m.Data) == body && m.Header.Get(queue.HeaderReplayOf) == "orig-1" {
			copies++
		}
	}
	if n := dlqTMsgs(t, js, cfg.Stream); n != before || copies != 1 {
		t.Fatalf("second run %+v (first %+v): work stream holds %d (was %d), %d copies of the replay", again, first, n, before, copies)
	}
}

// TestTakeLeavesARecordCutShort: the replayer refuses a record cut
// short (Revoker-Body-Truncated), as putting its start back and removing
// it would lose the only copy of the rest. The operator, who writes the
// replays bucket and may publish events, notes a "replay" of it and
// publishes the cut body: the worker's Take removes the record, since its
// body, subject and event id match. Nothing of the whole event is left.
func TestTakeLeavesARecordCutShort(t *testing.T) {
	js, cfg := dlqTSetup(t)
	ctx := dlqTCtx(t)
	body := `{"account_id":"a","key_id":"k","reason":"` + strings.Repeat("x", 30<<10) + `"}`
	m := queue.DeadLetterMsg(cfg.DLQSubject, event.DeadLetter{Reason: "api_rejected", EventID: "e", Stream: cfg.Stream,
		Subject: "revoke.urgent", Sequence: 9, FailedAt: time.Now()}, []byte(body), 20<<10)
	if m.Header.Get(queue.HeaderBodyTruncated) == "" {
		t.Fatal("the record was not cut: nothing tested")
	}
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	rec, err := queue.GetDeadLetter(ctx, js, cfg.DLQStream, 1)
	if err != nil {
		t.Fatal(err)
	}

	// As the operator: note, publish.
	replays := dlqTReplays(t, js, cfg)
	if err := replays.Note(ctx, "op:1", rec.EventID, rec.Body, rec.Sequence); err != nil {
		t.Fatal(err)
	}
	seq := dlqTPlant(t, js, rec.SourceSubject, "op:1", string(rec.Body), rec.EventID)

	// As the worker taking that delivery.
	ok, err := replays.Take(ctx, "op:1", rec.EventID, rec.Body, seq, rec.SourceSubject, "")
	t.Logf("Take: verified %v, %v", ok, err)
	if n := dlqTMsgs(t, js, cfg.DLQStream); n != 1 {
		t.Fatalf("the truncated record (the only copy of the whole event) was removed: %d left", n)
	}
}

// TestTakeOfAnInterruptedReplayReadOtherwise: a replay is interrupted
// after its note and before its publish is stored (here the work stream
// does not answer on the subject; a killed run does the same). The note
// names dead letter 1 with no work sequence. A publisher (who knows the
// body and id of its own event, and can guess replay:1) publishes the body
// under replay:1 with a Content-Type that makes the worker read a
// CloudEvent for another key. The worker's Take verifies it and removes
// dead letter 1, whose event is never put back.
func TestTakeOfAnInterruptedReplayReadOtherwise(t *testing.T) {
	js, cfg := dlqTSetup(t)
	ctx := dlqTCtx(t)
	const body = `{"account_id":"a","key_id":"plainkey","specversion":"1.0","id":"c1","source":"s","type":"t","data":{"account_id":"a","key_id":"cekey"}}`
	dlqTWrite(t, js, cfg, event.DeadLetter{Reason: "api_rejected", EventID: "orig-1", Stream: cfg.Stream,
		Subject: "revoke.urgent", Sequence: 9, FailedAt: time.Now()}, body)
	rec, err := queue.GetDeadLetter(ctx, js, cfg.DLQStream, 1)
	if err != nil {
		t.Fatal(err)
	}

	// The replay interrupted: the work stream does not take revoke.urgent
	// for a moment.
	work := queue.WorkStream(cfg.Topology())
	narrowed := work
	narrowed.Subjects = []string{"revoke.scheduled"}
	if _, err := js.UpdateStream(ctx, narrowed); err != nil {
		t.Fatal(err)
	}
	if _, err := replayer(t, js, cfg).Republish(ctx, rec); err == nil {
		t.Fatal("the republish did not fail: nothing tested")
	}
	if _, err := js.UpdateStream(ctx, work); err != nil {
		t.Fatal(err)
	}

	// The publisher.
	pm := nats.NewMsg("revoke.urgent")
	pm.Data = []byte(body)
	pm.Header.Set(jetstream.MsgIDHeader, queue.ReplayMsgID(1))
	pm.Header.Set(queue.HeaderReplayOf, "orig-1")
	pm.Header.Set("Content-Type", "application/cloudevents+json")
	ack, err := js.PublishMsg(ctx, pm)
	if err != nil {
		t.Fatal(err)
	}
	asPlain, _ := event.DecodeMessage(rec.ContentType, rec.Body)
	asDelivered, _ := event.DecodeMessage(pm.Header.Get("Content-Type"), pm.Data)
	t.Logf("the record's event: key %s; the delivery read by the worker: key %s", asPlain.KeyID, asDelivered.KeyID)

	// The worker taking the publisher's message.
	replays := dlqTReplays(t, js, cfg)
	ok, err := replays.Take(ctx, pm.Header.Get(jetstream.MsgIDHeader), pm.Header.Get(queue.HeaderReplayOf), pm.Data, ack.Sequence, pm.Subject, pm.Header.Get("Content-Type"))
	t.Logf("Take: verified %v, %v", ok, err)
	if n := dlqTMsgs(t, js, cfg.DLQStream); n != 1 {
		t.Fatalf("dead letter 1 (key %s, never put back) removed by a publisher's message (key %s): %d left", asPlain.KeyID, asDelivered.KeyID, n)
	}
}

// TestReplayTakenButNotRemovedIsNotStoredAgain: a worker took a replay
// and recorded it, but could not remove its dead letter (the dead-letter
// stream did not answer). The operator, seeing the record still there,
// runs the replay again after the work stream's duplicate window: the run
// finds the replay taken, says so, and stores nothing (the event was put
// back once; a second copy would revoke it twice).
func TestReplayTakenButNotRemovedIsNotStoredAgain(t *testing.T) {
	js, cfg := dlqTSetup(t)
	ctx := dlqTCtx(t)
	shortDuplicateWindow(t, js, cfg)
	rec, first := replayedOrig1(t, js, cfg, `{"account_id":"a","key_id":"k"}`)
	// The worker's record of the replay, then its ack; no removal.
	recs := &queue.Records{JS: js, Log: zap.NewNop(), OutcomeStream: cfg.OutcomeStream, OutcomePrefix: cfg.OutcomeSubject, Timeout: 5 * time.Second}
	if _, err := recs.Outcome(ctx, event.Record{EventID: first.MsgID, AccountID: "a", KeyID: "k", Outcome: event.Revoked,
		Status: 200, Stream: cfg.Stream, Subject: rec.SourceSubject, Sequence: first.WorkSequence, Attempts: 1, ReplayOf: "orig-1"}); err != nil {
		t.Fatal(err)
	}
	consume(t, js, cfg.Stream, first.WorkSequence)
	pastDuplicateWindow(t, js)
	before := dlqTMsgs(t, js, cfg.Stream)

	again, err := replayer(t, js, cfg).Republish(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Taken || !again.Duplicate || again.WorkSequence != first.WorkSequence {
		t.Fatalf("second run %+v; want the replay at %d known as taken", again, first.WorkSequence)
	}
	if n := dlqTMsgs(t, js, cfg.Stream); n != before {
		t.Fatalf("the work stream holds %d, was %d: the replay was stored again", n, before)
	}
}
