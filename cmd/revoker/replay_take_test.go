package main

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// publishRaw publishes body on subject as any role allowed to publish
// events can, with the given headers.
func publishRaw(t *testing.T, s *stack, subject, body string, headers map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m := nats.NewMsg(subject)
	m.Data = []byte(body)
	for k, v := range headers {
		m.Header.Set(k, v)
	}
	if _, err := s.js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
}

// TestReplayOfARecordWithoutAnEventIDIsRemoved: an event whose
// Nats-Msg-Id is made only of characters untrusted.Line blanks out gets a
// dead letter with an empty Revoker-Event-Id. `dlq replay` republishes it
// with no note and no Revoker-Replay-Of, so the worker never calls Take:
// the record is never removed (and the operator no longer may remove it).
func TestReplayOfARecordWithoutAnEventIDIsRemoved(t *testing.T) {
	s := hStack(t, nil)
	s.startWorker()
	cfg := s.cfg()
	s.api.Script("blank1", 400)
	publishRaw(t, s, "revoke.urgent", `{"account_id":"acct","key_id":"blank1"}`,
		map[string]string{jetstream.MsgIDHeader: "\u202e"})
	queuetest.Eventually(t, 15*time.Second, "the event dead-lettered", func() bool { return s.msgs(cfg.DLQStream) == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rec, err := queue.GetDeadLetter(ctx, s.js, cfg.DLQStream, 1)
	if err != nil {
		t.Fatal(err)
	}
	if rec.EventID != "" {
		t.Fatalf("record event id %q: nothing tested", rec.EventID)
	}

	s.run("dlq", "replay", "--all").want(t, exitOK, "replayed 1:", "a worker removes the record when it takes the event")
	queuetest.Eventually(t, 15*time.Second, "the replay taken and recorded", func() bool {
		o := s.outcomes("blank1")
		return len(o) == 2 && o[1].Outcome == event.Revoked
	})
	if n := s.msgs(cfg.DLQStream); n != 0 {
		t.Errorf("the worker took the replay (revoked, recorded) but %d dead letter(s) remain: no role can remove it now", n)
	}
}

// TestForgedReplayOfAnotherEventRemovesNothing: the operator
// (the only role that writes revoker_replays, and one that may publish on
// the work subjects) notes a replay naming dead letter 1 and publishes the
// record's body, byte for byte, with a Content-Type that makes the worker
// read it as a CloudEvent: a different event (another key). Take compares
// only body, source subject and event id, so the worker removes dead
// letter 1, whose own event (key plainkey) is never put back.
func TestForgedReplayOfAnotherEventRemovesNothing(t *testing.T) {
	s := hStack(t, nil)
	s.startWorker()
	cfg := s.cfg()
	// Read plain: key plainkey. Read as a CloudEvent: key cekey.
	const body = `{"account_id":"acct","key_id":"plainkey","specversion":"1.0","id":"c1","source":"s","type":"t","data":{"account_id":"acct","key_id":"cekey"}}`
	s.api.Script("plainkey", 400)
	publishRaw(t, s, "revoke.urgent", body, map[string]string{jetstream.MsgIDHeader: "dual-1"})
	queuetest.Eventually(t, 15*time.Second, "the event dead-lettered", func() bool { return s.msgs(cfg.DLQStream) == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rec, err := queue.GetDeadLetter(ctx, s.js, cfg.DLQStream, 1)
	if err != nil || rec.EventID != "dual-1" || rec.ContentType != "" {
		t.Fatalf("record %+v %v", rec, err)
	}

	// As the operator: a note, then a publish.
	replays, err := queue.BindReplays(ctx, s.js, cfg.Topology(), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if err := replays.Note(ctx, "op-forged-1", rec.EventID, rec.Body, rec.Sequence); err != nil {
		t.Fatal(err)
	}
	publishRaw(t, s, rec.SourceSubject, body, map[string]string{
		jetstream.MsgIDHeader: "op-forged-1", queue.HeaderReplayOf: rec.EventID,
		"Content-Type": "application/cloudevents+json",
	})
	// Read as a CloudEvent it is cekey's revocation, or, since an
	// envelope may not carry account_id beside data (SPEC §14), an
	// invalid event dead-lettered in its turn: settled either way.
	queuetest.Eventually(t, 15*time.Second, "the forged replay taken and settled", func() bool {
		o := s.outcomes("cekey")
		return len(o) == 1 && o[0].Outcome == event.Revoked || s.msgs(cfg.DLQStream) == 2
	})
	if s.api.Deleted("acct", "plainkey") {
		t.Fatal("plainkey revoked: nothing tested")
	}
	if _, err := queue.GetDeadLetter(ctx, s.js, cfg.DLQStream, 1); err != nil {
		t.Fatalf("dead letter 1 (key plainkey, never revoked, never put back) is gone: %v", err)
	}
}
