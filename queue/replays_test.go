package queue_test

import (
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap/zaptest"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// dlqTReplays binds the replays bucket as the worker does.
func dlqTReplays(t *testing.T, js jetstream.JetStream, cfg config.Config) *queue.Replays {
	t.Helper()
	r, err := queue.BindReplays(dlqTCtx(t), js, cfg.Topology(), zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestVerifyBelievesOnlyNotedReplays: Revoker-Replay-Of is a header anyone
// who may publish events can set. Only a replay the replayer noted passes.
func TestVerifyBelievesOnlyNotedReplays(t *testing.T) {
	js, cfg := dlqTSetup(t)
	ctx := dlqTCtx(t)
	dlqTWrite(t, js, cfg, event.DeadLetter{Reason: "api_rejected", EventID: "orig-1", Stream: cfg.Stream,
		Subject: "revoke.urgent", Sequence: 4, FailedAt: time.Now()}, `{"account_id":"a","key_id":"k"}`)
	rec, err := queue.GetDeadLetter(ctx, js, cfg.DLQStream, 1)
	if err != nil {
		t.Fatal(err)
	}
	res, err := replayer(t, js, cfg).Republish(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	// Forgeries: the publisher's own id, and the id a future replay
	// will take, each claiming to replay a real event.
	forged := []uint64{
		dlqTPlant(t, js, "revoke.urgent", "ev-forged", `{"account_id":"a","key_id":"x"}`, "orig-1"),
		dlqTPlant(t, js, "revoke.urgent", queue.ReplayMsgID(2), `{"account_id":"a","key_id":"y"}`, "orig-1"),
	}

	replays := dlqTReplays(t, js, cfg)
	work, err := js.Stream(ctx, cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	// What the worker sees of a delivery: its headers.
	verify := func(seq uint64) bool {
		t.Helper()
		m, err := work.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		id, claim := m.Header.Get(jetstream.MsgIDHeader), m.Header.Get(queue.HeaderReplayOf)
		ok, err := replays.Verify(ctx, id, claim)
		if err != nil {
			t.Fatal(err)
		}
		withBody, err := replays.VerifyBody(ctx, id, claim, m.Data, seq)
		if err != nil {
			t.Fatal(err)
		}
		if ok != withBody {
			t.Fatalf("message %d: Verify %v, VerifyBody %v", seq, ok, withBody)
		}
		return ok
	}
	if !verify(res.WorkSequence) {
		t.Fatal("the operator's replay is not verified")
	}
	for _, seq := range forged {
		if verify(seq) {
			t.Fatalf("the publisher's message %d verified as a replay", seq)
		}
	}
	if ok, err := replays.Verify(ctx, res.MsgID, "another-event"); err != nil || ok {
		t.Fatalf("a real replay's id verified another claim: %v %v", ok, err)
	}
	for _, args := range [][2]string{{"", "orig-1"}, {res.MsgID, ""}} {
		if ok, err := replays.Verify(ctx, args[0], args[1]); err != nil || ok {
			t.Fatalf("Verify(%q, %q) = %v %v", args[0], args[1], ok, err)
		}
	}
	if _, err := (&queue.Replays{}).Verify(ctx, res.MsgID, "orig-1"); err == nil {
		t.Fatal("an unbound bucket verified nothing, without an error")
	}
}

// TestVerifyBodyRefusesReusedReplayID: once the work stream's duplicate
// window has passed, anyone may publish under a real replay's id again,
// claiming the same event. The body tells that message from the replay.
func TestVerifyBodyRefusesReusedReplayID(t *testing.T) {
	js, cfg := dlqTSetup(t)
	ctx := dlqTCtx(t)
	work := queue.WorkStream(cfg.Topology())
	work.Duplicates = 100 * time.Millisecond // the shortest the server takes
	if _, err := js.UpdateStream(ctx, work); err != nil {
		t.Fatal(err)
	}
	body := `{"account_id":"a","key_id":"k"}`
	_, res := replayedOrig1(t, js, cfg, body)
	// Once the duplicate window has passed, anyone may publish under the
	// replay's id again: another body, or the replayed body itself.
	republish := func(body string) uint64 {
		t.Helper()
		decoy := nats.NewMsg("revoke.urgent")
		decoy.Data = []byte(body)
		decoy.Header.Set(jetstream.MsgIDHeader, res.MsgID)
		decoy.Header.Set(queue.HeaderReplayOf, "orig-1")
		var seq uint64
		queuetest.Eventually(t, 5*time.Second, "a decoy stored under the replay's id", func() bool {
			ack, err := js.PublishMsg(ctx, decoy)
			seq = ack.Sequence
			return err == nil && !ack.Duplicate
		})
		return seq
	}
	other := `{"account_id":"a","key_id":"decoy"}`
	otherSeq := republish(other)
	sameSeq := republish(body)

	replays := dlqTReplays(t, js, cfg)
	if ok, err := replays.VerifyBody(ctx, res.MsgID, "orig-1", []byte(other), otherSeq); err != nil || ok {
		t.Fatalf("the decoy verified as the replay: %v %v", ok, err)
	}
	if ok, err := replays.VerifyBody(ctx, res.MsgID, "orig-1", []byte(body), sameSeq); err != nil || ok {
		t.Fatalf("the replayed body published again at %d verified as the replay at %d: %v %v", sameSeq, res.WorkSequence, ok, err)
	}
	if ok, err := replays.VerifyBody(ctx, res.MsgID, "orig-1", []byte(body), res.WorkSequence); err != nil || !ok {
		t.Fatalf("the replay itself not verified: %v %v", ok, err)
	}
}

// TestEnsureMakesReplaysBucket: the worker's setup creates the bucket as it
// creates the streams, and without REVOKER_CREATE_STREAMS reports it
// missing; the replayer never creates it.
func TestEnsureMakesReplaysBucket(t *testing.T) {
	js := setupJS(t)
	ctx := dlqTCtx(t)
	cfg := config.Default()
	top := cfg.Topology()

	top.Create = false
	for _, sc := range []jetstream.StreamConfig{queue.WorkStream(top), queue.DLQStream(top), queue.OutcomeStream(top)} {
		if _, err := js.CreateStream(ctx, sc); err != nil {
			t.Fatal(err)
		}
	}
	if err := queue.Ensure(ctx, js, top, zaptest.NewLogger(t)); !errors.Is(err, queue.ErrMissing) {
		t.Fatalf("missing bucket, told not to create: %v", err)
	}
	if _, err := queue.NewReplayer(ctx, js, top); !errors.Is(err, queue.ErrMissing) {
		t.Fatalf("replayer without the bucket: %v", err)
	}
	if _, err := js.KeyValue(ctx, queue.ReplaysBucket); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("created although told not to: %v", err)
	}

	top.Create = true
	if err := queue.Ensure(ctx, js, top, zaptest.NewLogger(t)); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, queue.ReplaysBucket)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.TTL() != 7*24*time.Hour || st.History() != 1 || st.BackingStore() != "JetStream" {
		t.Fatalf("bucket status %+v", st)
	}
	if _, err := queue.NewReplayer(ctx, js, top); err != nil {
		t.Fatal(err)
	}
}

// TestTakeRemovesOnlyTheRecordItPutsBack: the worker removes a dead letter
// when it takes its replay (only the worker may remove records, SPEC §5).
// A message that only claims to be a replay removes nothing, nor does a
// replay whose note names a record it does not put back (another body,
// subject or event); the true replay removes its record, and taking it
// again is no error.
func TestTakeRemovesOnlyTheRecordItPutsBack(t *testing.T) {
	js, cfg := dlqTSetup(t)
	ctx := dlqTCtx(t)
	const body = `{"account_id":"a","key_id":"k"}`
	_, res := replayedOrig1(t, js, cfg, body)
	replays := dlqTReplays(t, js, cfg)
	kept := func(what string) {
		t.Helper()
		if n := dlqTMsgs(t, js, cfg.DLQStream); n != 1 {
			t.Fatalf("%s: %d dead letters left, want the record kept", what, n)
		}
	}

	// A publisher's message claiming to replay the event.
	if ok, err := replays.Take(ctx, "ev-forged", "orig-1", []byte(body), 99, "revoke.urgent", ""); err != nil || ok {
		t.Fatalf("a claim no replay noted: verified %v, %v", ok, err)
	}
	kept("a forged claim")
	// Replays noted for dead letter 1 that do not put it back.
	for i, other := range []struct{ id, claim, body, subject string }{
		{"replay:x1", "orig-1", `{"account_id":"a","key_id":"other"}`, "revoke.urgent"},
		{"replay:x2", "orig-1", body, "revoke.scheduled"},
		{"replay:x3", "orig-2", body, "revoke.urgent"},
	} {
		if err := replays.Note(ctx, other.id, other.claim, []byte(other.body), 1); err != nil {
			t.Fatal(err)
		}
		if ok, err := replays.Take(ctx, other.id, other.claim, []byte(other.body), uint64(50+i), other.subject, ""); err != nil || !ok {
			t.Fatalf("noted replay %s: verified %v, %v", other.id, ok, err)
		}
		kept("a replay of another event, body or subject")
	}

	for range 2 {
		if ok, err := replays.Take(ctx, res.MsgID, "orig-1", []byte(body), res.WorkSequence, "revoke.urgent", ""); err != nil || !ok {
			t.Fatalf("the replay: verified %v, %v", ok, err)
		}
		if n := dlqTMsgs(t, js, cfg.DLQStream); n != 0 {
			t.Fatalf("%d dead letters left once the worker took the replay", n)
		}
	}
}

// TestReplayRunAgainWhileItsRepublishWaits: an operator runs a replay
// again while its first republish still waits for a worker (behind a
// backlog), after the work stream's duplicate window: the record is still
// there, as only the worker taking the replay removes it. The run finds
// the waiting republish and stores no second copy.
func TestReplayRunAgainWhileItsRepublishWaits(t *testing.T) {
	js, cfg := dlqTSetup(t)
	ctx := dlqTCtx(t)
	shortDuplicateWindow(t, js, cfg)
	rec, first := replayedOrig1(t, js, cfg, `{"account_id":"a","key_id":"k"}`)
	pastDuplicateWindow(t, js)
	before := dlqTMsgs(t, js, cfg.Stream)

	again, err := replayer(t, js, cfg).Republish(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Duplicate || again.WorkSequence != first.WorkSequence {
		t.Fatalf("second run %+v; want the waiting republish at %d", again, first.WorkSequence)
	}
	if n := dlqTMsgs(t, js, cfg.Stream); n != before {
		t.Fatalf("work stream holds %d, was %d: the replay was stored twice", n, before)
	}
}

// replayedOrig1 writes dead letter 1 (event orig-1 with body, from
// revoke.urgent) and replays it.
func replayedOrig1(t *testing.T, js jetstream.JetStream, cfg config.Config, body string) (queue.DeadLetterRecord, queue.ReplayResult) {
	t.Helper()
	dlqTWrite(t, js, cfg, event.DeadLetter{Reason: "api_rejected", EventID: "orig-1", Stream: cfg.Stream,
		Subject: "revoke.urgent", Sequence: 4, FailedAt: time.Now()}, body)
	rec, err := queue.GetDeadLetter(dlqTCtx(t), js, cfg.DLQStream, 1)
	if err != nil {
		t.Fatal(err)
	}
	res, err := replayer(t, js, cfg).Republish(dlqTCtx(t), rec)
	if err != nil || res.Duplicate || res.MsgID != queue.ReplayMsgID(1) {
		t.Fatalf("replay %+v %v", res, err)
	}
	return rec, res
}

// shortDuplicateWindow makes the work stream's duplicate window the
// shortest the server takes.
func shortDuplicateWindow(t *testing.T, js jetstream.JetStream, cfg config.Config) {
	t.Helper()
	work := queue.WorkStream(cfg.Topology())
	work.Duplicates = 100 * time.Millisecond
	if _, err := js.UpdateStream(dlqTCtx(t), work); err != nil {
		t.Fatal(err)
	}
}

// pastDuplicateWindow waits until the work stream has forgotten the ids
// it stored so far: a probe stored now is, later, stored anew under its
// id. The probe stays in the stream.
func pastDuplicateWindow(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	ctx := dlqTCtx(t)
	probe := nats.NewMsg("revoke.scheduled")
	probe.Data = []byte(`{"account_id":"a","key_id":"probe"}`)
	probe.Header.Set(jetstream.MsgIDHeader, "probe-"+rand.Text())
	if _, err := js.PublishMsg(ctx, probe); err != nil {
		t.Fatal(err)
	}
	queuetest.Eventually(t, 20*time.Second, "the work stream forgetting the ids", func() bool {
		ack, err := js.PublishMsg(ctx, probe)
		return err == nil && !ack.Duplicate
	})
}
