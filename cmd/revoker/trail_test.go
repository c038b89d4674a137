package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// trailCtx is a context for one step of a trail test.
func trailCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// trailPublish stores one event as a publisher would, with a known body and
// id, and returns its sequence in the work stream.
func trailPublish(t *testing.T, s *stack, subject, id, body string) uint64 {
	t.Helper()
	m := nats.NewMsg(subject)
	m.Data = []byte(body)
	m.Header.Set(jetstream.MsgIDHeader, id)
	ack, err := s.js.PublishMsg(trailCtx(t), m)
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

// trailDeadLetters reads every record of the dead-letter stream.
func trailDeadLetters(t *testing.T, s *stack) []queue.DeadLetterRecord {
	t.Helper()
	recs, err := queue.ListDeadLetters(trailCtx(t), s.js, s.cfg().DLQStream, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// TestPlantedOutcomeDoesNotStandInForTheWorkers: a "revoked" record planted
// on the key's subject, under a Nats-Msg-Id a worker could use
// (outcome:REVOCATIONS:<seq>:revoked), before the event exists. The API rejects the event; the worker's true
// dead_lettered record must be in the trail, and a reader asking what
// became of the event must be told the true record, not the planted one.
func TestPlantedOutcomeDoesNotStandInForTheWorkers(t *testing.T) {
	s := hStack(t, nil)
	s.ensure()
	cfg := s.cfg()

	// The work stream is empty: the event will be sequence 1.
	forged := event.Record{EventID: "ev-1", AccountID: "acc1", KeyID: "k1", Outcome: event.Revoked,
		Status: 200, CFRay: "forged-ray", Attempts: 1, Subject: cfg.LowestPriority(), Sequence: 1, Stream: cfg.Stream}
	m := queue.OutcomeMsg(cfg.OutcomeSubject, forged)
	m.Header.Set(jetstream.MsgIDHeader, "outcome:REVOCATIONS:1:revoked")
	if _, err := s.js.PublishMsg(trailCtx(t), m); err != nil {
		t.Fatal(err)
	}

	s.api.Script("k1", 400)
	s.startWorker()
	publishedFrom := time.Now() // the server runs in this process, on this clock
	seq := trailPublish(t, s, cfg.LowestPriority(), "ev-1", `{"account_id":"acc1","key_id":"k1"}`)
	if seq != 1 {
		t.Fatalf("event stored at %d, the plant named 1", seq)
	}
	queuetest.Eventually(t, 20*time.Second, "the worker's record of k1", func() bool { return len(s.outcomes("k1")) >= 2 })

	recs := s.outcomes("k1")
	var truth []event.Record
	for _, r := range recs {
		if r.Outcome == event.DeadLettered {
			truth = append(truth, r)
		}
	}
	if len(recs) != 2 || len(truth) != 1 || truth[0].Reason != event.APIRejected || truth[0].Status != 400 ||
		truth[0].Sequence != 1 || truth[0].Stream != cfg.Stream || truth[0].CFRay == "forged-ray" {
		t.Fatalf("trail of k1: %+v", recs)
	}
	if s.okDeletes("k1") != 0 {
		t.Fatal("k1 was deleted, yet the API was scripted to refuse")
	}

	// The duplicate path of publish --wait asks Client.Recorded, knowing
	// when the event was stored: the event's outcome is the worker's
	// record, not the revoked one planted before the event existed.
	c, err := queue.Dial(cfg.Connection(), cfg.Topology(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	storedAt, err := time.Parse(time.RFC3339Nano, truth[0].PublishedAt)
	if err != nil || storedAt.Before(publishedFrom) {
		t.Fatalf("the worker's record says the event was stored at %q, before it was published (%v)", truth[0].PublishedAt, publishedFrom)
	}
	got, ok, err := c.Recorded(trailCtx(t), queue.Published{EventID: "ev-1", AccountID: "acc1", KeyID: "k1",
		Stream: cfg.Stream, Sequence: 1, Duplicate: true, StoredAt: storedAt})
	if err != nil || !ok {
		t.Fatalf("Recorded: ok %v, err %v", ok, err)
	}
	if got.Outcome != event.DeadLettered || got.Status != 400 {
		t.Fatalf("Recorded believes %+v, the worker recorded %+v", got, truth[0])
	}

	// outcomes --key shows the worker's record (and, being the trail,
	// the planted one beside it).
	r := s.run("outcomes", "--key", "k1", "--json")
	r.want(t, exitOK)
	var shown []event.Record
	for _, l := range hLines(r.stdout) {
		var o event.Record
		if err := json.Unmarshal([]byte(l), &o); err != nil {
			t.Fatalf("outcomes --json line %q: %v", l, err)
		}
		shown = append(shown, o)
	}
	if len(shown) != 2 || shown[1].Outcome != event.DeadLettered || shown[1].Status != 400 {
		t.Fatalf("outcomes --key k1 shows %+v", shown)
	}
}

// TestPlantedDeadLetterDoesNotStandInForTheWorkers: a dead-letter record
// planted under dlq:REVOCATIONS:<seq> before the event exists is not taken
// as the worker's: the worker's own record is written under a new id, and
// replaying it would put the event back where it came from.
func TestPlantedDeadLetterDoesNotStandInForTheWorkers(t *testing.T) {
	const body = `{"account_id":"acc1","key_id":"k2"}`
	for _, tc := range []struct {
		name  string
		plant event.DeadLetter
	}{
		{"another reason", event.DeadLetter{Reason: event.InvalidEvent, Detail: "planted", EventID: "ev-2", Subject: "revoke.scheduled"}},
		// Everything a publisher of the event knows, but the source
		// subject: replayed, it would land on the urgent subject.
		{"another source subject", event.DeadLetter{Reason: event.APIRejected, Detail: "planted", Status: 400, Called: true, Attempts: 1,
			EventID: "ev-2", Subject: "revoke.urgent"}},
		// Everything, but a Content-Type the event did not carry: replayed,
		// it would come back as a CloudEvent, and be invalid.
		{"another Content-Type", event.DeadLetter{Reason: event.APIRejected, Detail: "planted", Status: 400, Called: true, Attempts: 1,
			EventID: "ev-2", Subject: "revoke.scheduled", ContentType: event.CloudEventsContentType}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := hStack(t, nil)
			s.ensure()
			cfg := s.cfg()
			tc.plant.Stream, tc.plant.Sequence, tc.plant.FailedAt = cfg.Stream, 1, time.Now()
			m := queue.DeadLetterMsg(cfg.DLQSubject, tc.plant, []byte(body), 0)
			if id := m.Header.Get(jetstream.MsgIDHeader); id != "dlq:REVOCATIONS:1" {
				t.Fatalf("planted under %q, not the worker's id", id)
			}
			if _, err := s.js.PublishMsg(trailCtx(t), m); err != nil {
				t.Fatal(err)
			}

			s.api.Script("k2", 400)
			s.startWorker()
			if seq := trailPublish(t, s, "revoke.scheduled", "ev-2", body); seq != 1 {
				t.Fatalf("event stored at %d, the plant named 1", seq)
			}
			queuetest.Eventually(t, 20*time.Second, "the worker's outcome record of k2", func() bool { return len(s.outcomes("k2")) == 1 })

			dls := trailDeadLetters(t, s)
			var real []queue.DeadLetterRecord
			for _, d := range dls {
				if d.Detail != "planted" {
					real = append(real, d)
				}
			}
			if len(dls) != 2 || len(real) != 1 {
				t.Fatalf("dead letters %+v: want the planted one and the worker's", dls)
			}
			d := real[0]
			if d.Reason != string(event.APIRejected) || d.Status != "400" || d.SourceSubject != "revoke.scheduled" ||
				d.SourceSequence != 1 || d.EventID != "ev-2" || string(d.Body) != body {
				t.Fatalf("the worker's dead letter: %+v", d)
			}
			// Its id is not the planted one's.
			s2, err := s.js.Stream(trailCtx(t), cfg.DLQStream)
			if err != nil {
				t.Fatal(err)
			}
			raw, err := s2.GetMsg(trailCtx(t), d.Sequence)
			if err != nil {
				t.Fatal(err)
			}
			if id := raw.Header.Get(jetstream.MsgIDHeader); !strings.HasPrefix(id, "dlq:REVOCATIONS:1:") {
				t.Fatalf("the worker's record is stored under %q", id)
			}
			if o := s.outcomes("k2")[0]; o.Outcome != event.DeadLettered || o.Reason != event.APIRejected {
				t.Fatalf("outcome %+v", o)
			}
		})
	}
}

// TestPublishWaitWithReusedID: key A published with --id X and revoked;
// key B published with the same id within the duplicate window is dropped
// by the work stream. --wait must not report A's revocation as B's, nor
// believe a record on B's subject that names another stream or sequence.
func TestPublishWaitWithReusedID(t *testing.T) {
	s := hStack(t, nil)
	s.startWorker()
	cfg := s.cfg()

	r := s.run("publish", "--account", "acc1", "--key", "keyA", "--id", "X", "--wait", "--json")
	r.want(t, exitOK)
	var pubA published
	if err := json.Unmarshal([]byte(hLines(r.stdout)[0]), &pubA); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(r.stdout, `"outcome":"revoked"`) || !strings.Contains(r.stdout, `"key_id":"keyA"`) {
		t.Fatalf("publish A:\n%s", r.stdout)
	}

	// Records on B's subject that name B but not B's (absent) event: a
	// wrong stream, and a sequence that is not the one the duplicate
	// answer names.
	forge := func(stream string, seq uint64) {
		t.Helper()
		m := queue.OutcomeMsg(cfg.OutcomeSubject, event.Record{EventID: "X", AccountID: "acc1", KeyID: "keyB",
			Outcome: event.Revoked, Status: 200, CFRay: "forged", Attempts: 1, Subject: cfg.LowestPriority(), Stream: stream, Sequence: seq})
		m.Header.Set(jetstream.MsgIDHeader, nats.NewInbox()) // a fresh id each time: stored, never a duplicate
		if _, err := s.js.PublishMsg(trailCtx(t), m); err != nil {
			t.Fatal(err)
		}
	}
	forge("OTHER", pubA.Sequence)
	forge(cfg.Stream, pubA.Sequence+7)

	// While B waits, more forgeries arrive live on B's subject.
	done := make(chan hResult, 1)
	go func() {
		done <- s.run("publish", "--account", "acc1", "--key", "keyB", "--id", "X", "--wait", "--timeout", "2s")
	}()
	var rb hResult
	for waiting := true; waiting; {
		select {
		case rb = <-done:
			waiting = false
		case <-time.After(50 * time.Millisecond): // the pace of the forgeries, not a synchronisation
			forge("OTHER", pubA.Sequence)
			forge(cfg.Stream, pubA.Sequence+1)
		}
	}
	t.Logf("publish B with A's id:\nstdout:\n%sstderr:\n%s", rb.stdout, rb.stderr)
	// The id names keyA's event, done and gone from the stream, and no
	// record on keyB's subject names that event: keyB was not published,
	// and the publisher is told so.
	rb.want(t, exitFailed, "keyB was NOT published", "use another id")
	if strings.Contains(rb.stdout, "revoked") {
		t.Fatalf("B was told of a revocation:\n%s\n%s", rb.stdout, rb.stderr)
	}
	if s.api.Deleted("acc1", "keyB") {
		t.Fatal("keyB deleted, yet its event was dropped as a duplicate")
	}
	if n := s.okDeletes("keyA"); n != 1 {
		t.Fatalf("keyA deleted %d times", n)
	}
}

// TestOutcomesShowsTheCorrection: a not_found record followed by the
// revoked record that supersedes it (a replica cut off from NATS heard its
// 200 late): the table says which one corrects the other, so a reader of
// `outcomes` believes the revoked one (SPEC §4, "The proof", point 3).
func TestOutcomesShowsTheCorrection(t *testing.T) {
	s := hStack(t, nil)
	s.ensure()
	cfg := s.cfg()
	recs := &queue.Records{JS: s.js, Log: zap.NewNop(), OutcomeStream: cfg.OutcomeStream, OutcomePrefix: cfg.OutcomeSubject, Timeout: 5 * time.Second}
	base := event.Record{EventID: "ev-s", AccountID: "acc1", KeyID: "kS", Stream: cfg.Stream, Sequence: 5,
		Subject: "revoke.urgent", PublishedAt: time.Now().UTC().Format(time.RFC3339Nano), Attempts: 1}
	notFound, revoked := base, base
	notFound.Outcome, notFound.Status, notFound.CFRay = event.NotFound, 404, "ray-404"
	revoked.Outcome, revoked.Status, revoked.CFRay = event.Revoked, 200, "ray-200"
	for _, rec := range []event.Record{notFound, revoked} {
		if _, err := recs.Outcome(trailCtx(t), rec); err != nil {
			t.Fatal(err)
		}
	}
	r := s.run("outcomes", "--key", "kS")
	r.want(t, exitOK)
	rows := hLines(r.stdout)
	if len(rows) != 3 || !strings.Contains(rows[1], "not_found") || !strings.Contains(rows[2], "revoked (supersedes record 1)") {
		t.Fatalf("outcomes --key kS:\n%s", r.stdout)
	}
}

// TestOutcomesReportsWhatIsNotARecordOfItsKey: a record naming another key,
// or a body that is no record, on a key's subject is not listed, and is
// said on standard error (SPEC §4, "The proof", point 8).
func TestOutcomesReportsWhatIsNotARecordOfItsKey(t *testing.T) {
	s := hStack(t, nil)
	s.ensure()
	cfg := s.cfg()
	subject := queue.OutcomeSubject(cfg.OutcomeSubject, "acc1", "kF")
	foreign := queue.OutcomeMsg(cfg.OutcomeSubject, event.Record{EventID: "ev-f", AccountID: "acc1", KeyID: "other",
		Outcome: event.Revoked, Stream: cfg.Stream, Sequence: 9})
	foreign.Subject = subject
	if _, err := s.js.PublishMsg(trailCtx(t), foreign); err != nil {
		t.Fatal(err)
	}
	if _, err := s.js.Publish(trailCtx(t), subject, []byte("not a record")); err != nil {
		t.Fatal(err)
	}
	r := s.run("outcomes", "--key", "kF", "--account", "acc1")
	r.want(t, exitOK)
	if strings.Contains(r.stdout, "revoked") {
		t.Fatalf("a record of another key was listed:\n%s", r.stdout)
	}
	if n := strings.Count(r.stderr, "is not an outcome record of that key: not believed"); n != 2 {
		t.Fatalf("stderr says %d messages are not believed, want 2:\n%s", n, r.stderr)
	}
}

// TestPublishWithTheIDOfAnInvalidEvent: an invalid event published raw
// with id X is dead-lettered, its record filed under its key. A valid
// event for that key published with X within the duplicate window is
// dropped by the work stream; the invalid event's record must not pass
// for its outcome: it was NOT published, and the publisher is told so.
func TestPublishWithTheIDOfAnInvalidEvent(t *testing.T) {
	s := hStack(t, nil)
	s.startWorker()
	cfg := s.cfg()
	m := nats.NewMsg(cfg.LowestPriority())
	m.Header.Set(jetstream.MsgIDHeader, "X")
	m.Data = []byte(`{"account_id":"acc1","key_id":"keyI","requested_at":"yesterday"}`)
	if _, err := s.js.PublishMsg(trailCtx(t), m); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(s.outcomes("keyI")) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the invalid event was not recorded within 20 s")
		}
		time.Sleep(20 * time.Millisecond) // polling a condition with a deadline
	}
	if o := s.outcomes("keyI")[0]; o.Reason != event.InvalidEvent || o.AccountID != "acc1" {
		t.Fatalf("record %+v, want invalid_event filed under acc1/keyI", o)
	}
	r := s.run("publish", "--account", "acc1", "--key", "keyI", "--id", "X")
	r.want(t, exitFailed, "keyI was NOT published", "use another id")
	if s.api.Deleted("acc1", "keyI") {
		t.Fatal("keyI deleted, yet no valid event of it was stored")
	}
}

// TestPublishUrgentWithAScheduledEventsID: an event planted under id X on
// the scheduled subject must not pass for an urgent one published with X,
// neither while it waits in the stream nor once it is done: the urgent
// one was NOT published, and its publisher is told so.
func TestPublishUrgentWithAScheduledEventsID(t *testing.T) {
	s := hStack(t, nil)
	s.ensure()
	s.run("publish", "--account", "acc1", "--key", "keyU", "--id", "X").want(t, exitOK)
	s.run("publish", "--account", "acc1", "--key", "keyU", "--id", "X", "--urgent").
		want(t, exitFailed, "keyU was NOT published to revoke.urgent", "use another id")

	s.startWorker()
	deadline := time.Now().Add(20 * time.Second)
	for len(s.outcomes("keyU")) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the scheduled event was not recorded within 20 s")
		}
		time.Sleep(20 * time.Millisecond) // polling a condition with a deadline
	}
	s.run("publish", "--account", "acc1", "--key", "keyU", "--id", "X", "--urgent").
		want(t, exitFailed, "keyU was NOT published to revoke.urgent", "use another id")
	// The same id and subject again is the same event: published.
	s.run("publish", "--account", "acc1", "--key", "keyU", "--id", "X").want(t, exitOK)
}
