package main

import (
	"context"
	"testing"
	"time"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
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
