package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestReplayGoesOnlyToWorkSubjects: a dead-letter record is data anyone
// able to write the dead-letter subject controls. One naming a JetStream
// API subject must not make the operator's replay purge the work stream or
// delete the audit trail: it is reported and left in place.
func TestReplayGoesOnlyToWorkSubjects(t *testing.T) {
	s := hStack(t, nil)
	s.ensure()
	cfg := s.cfg()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Something in the work stream for a purge to destroy.
	s.run("publish", "--account", "acc1", "--key", "waiting").want(t, exitOK)
	for i, subject := range []string{
		"$JS.API.STREAM.PURGE." + cfg.Stream,
		"$JS.API.STREAM.DELETE." + cfg.OutcomeStream,
		"$JS.API.CONSUMER.DELETE." + cfg.Stream + "." + cfg.Topology().Durable(cfg.LowestPriority()),
	} {
		m := queue.DeadLetterMsg(cfg.DLQSubject, event.DeadLetter{Reason: event.APIRejected, EventID: "planted",
			Stream: cfg.Stream, Subject: subject, Sequence: uint64(100 + i), FailedAt: time.Now()}, []byte(`{}`), 0)
		if _, err := s.js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}

	r := s.run("dlq", "replay", "--all")
	r.want(t, exitFailed, "is not a work subject", "left in place")
	if n := s.msgs(cfg.DLQStream); n != 3 {
		t.Fatalf("%d dead letters left, want the 3 refused ones", n)
	}
	if n := s.msgs(cfg.Stream); n != 1 {
		t.Fatalf("the work stream holds %d events, want 1: it was purged", n)
	}
	if _, err := s.js.Stream(ctx, cfg.OutcomeStream); err != nil {
		t.Fatalf("the outcome stream: %v", err)
	}
	if _, err := s.js.Consumer(ctx, cfg.Stream, cfg.Topology().Durable(cfg.LowestPriority())); err != nil {
		t.Fatalf("the lane's consumer: %v", err)
	}
	s.run("dlq", "list").want(t, exitOK, "$JS.API.STREAM.PURGE."+cfg.Stream)
}

// TestReplayCannotBeSuppressed: a publisher sends an event under the id
// the next replay will take (replay:<dead-letter sequence>), claiming to
// replay the dead letter's event. The worker consumes it; the operator's
// replay, reported a duplicate, must still put the dead letter's event
// back, and the record goes only once the worker takes the real replay. So too where the outcome
// stream is not the default one: the replay looks for a record of the
// consumed message in the stream configured.
func TestReplayCannotBeSuppressed(t *testing.T) {
	for _, env := range []map[string]string{nil, {"REVOKER_OUTCOME_STREAM": "AUDIT_TRAIL"}} {
		t.Run(fmt.Sprint(env), func(t *testing.T) { replayNotSuppressed(t, env) })
	}
}

func replayNotSuppressed(t *testing.T, env map[string]string) {
	s := hStack(t, env)
	s.startWorker()
	hDeadLetter(t, s, "sup1")
	cfg := s.cfg()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rec, err := queue.GetDeadLetter(ctx, s.js, cfg.DLQStream, 1)
	if err != nil {
		t.Fatal(err)
	}

	m := nats.NewMsg(rec.SourceSubject)
	m.Data = []byte(`{"account_id":"acct","key_id":"decoy1"}`)
	m.Header.Set(jetstream.MsgIDHeader, queue.ReplayMsgID(rec.Sequence))
	m.Header.Set(queue.HeaderReplayOf, rec.EventID)
	if _, err := s.js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	queuetest.Eventually(t, 10*time.Second, "the planted event consumed", func() bool {
		return s.api.Deleted("acct", "decoy1") && s.msgs(cfg.Stream) == 0
	})

	s.run("dlq", "replay", "--all").want(t, exitOK, "replayed 1:", "key sup1",
		"another message already took its id "+queue.ReplayMsgID(rec.Sequence))
	queuetest.Eventually(t, 10*time.Second, "the dead letter's key revoked", func() bool { return s.okDeletes("sup1") == 1 })
	// The decoy, taken before any replay was noted, removed nothing; the
	// worker taking the real replay removes the record.
	queuetest.Eventually(t, 10*time.Second, "the worker removing the replayed record", func() bool { return s.msgs(cfg.DLQStream) == 0 })

	// The decoy claimed to replay the dead letter; only the real replay's
	// record says so.
	queuetest.Eventually(t, 10*time.Second, "the replay's record", func() bool { return len(s.outcomes("sup1")) == 2 })
	for _, o := range s.outcomes("decoy1") {
		if o.ReplayOf != "" {
			t.Fatalf("the decoy's record claims to replay %q", o.ReplayOf)
		}
	}
	if o := s.outcomes("sup1")[1]; o.Outcome != event.Revoked || o.ReplayOf != rec.EventID {
		t.Fatalf("the replay's record %+v; want revoked, replay_of %q", o, rec.EventID)
	}
}
