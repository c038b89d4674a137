package queue_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// dlqTSetup starts an embedded JetStream server with revoker's streams
// (created as the worker creates them) and returns a client and the
// default configuration.
func dlqTSetup(t *testing.T) (jetstream.JetStream, config.Config) {
	t.Helper()
	_, _, js := queuetest.JetStream(t)
	cfg, err := config.Register(flag.NewFlagSet("t", flag.ContinueOnError), config.Streams).Load(func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	ctx := dlqTCtx(t)
	for _, sc := range []jetstream.StreamConfig{queue.WorkStream(cfg.Topology()), queue.DLQStream(cfg.Topology()), queue.OutcomeStream(cfg.Topology())} {
		if _, err := js.CreateStream(ctx, sc); err != nil {
			t.Fatal(err)
		}
	}
	return js, cfg
}

func dlqTCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// dlqTWrite writes a dead-letter record as the worker does.
func dlqTWrite(t *testing.T, js jetstream.JetStream, cfg config.Config, d event.DeadLetter, body string) {
	t.Helper()
	if _, err := js.PublishMsg(dlqTCtx(t), queue.DeadLetterMsg(cfg.DLQSubject, d, []byte(body), 0)); err != nil {
		t.Fatal(err)
	}
}

func replayer(t *testing.T, js jetstream.JetStream, cfg config.Config) *queue.Replayer {
	t.Helper()
	r, err := queue.NewReplayer(dlqTCtx(t), js, cfg.Topology())
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func dlqTMsgs(t *testing.T, js jetstream.JetStream, stream string) uint64 {
	t.Helper()
	s, err := js.Stream(dlqTCtx(t), stream)
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo().State.Msgs
}

func TestListDeadLettersReadsWithoutRemoving(t *testing.T) {
	js, cfg := dlqTSetup(t)
	failed := time.Date(2025, 3, 4, 5, 6, 7, 8, time.UTC)
	reasons := []string{"api_rejected", "invalid_event", "api_rejected", "retries_exhausted", "api_rejected"}
	for i, r := range reasons {
		seq := uint64(100 + i)
		dlqTWrite(t, js, cfg, event.DeadLetter{
			Reason: event.Reason(r), Detail: "detail " + r, Status: 400, Called: r != "invalid_event", Attempts: i,
			EventID: fmt.Sprintf("ev-%d", i), Stream: cfg.Stream, Subject: "revoke.urgent", Sequence: seq, FailedAt: failed,
		}, fmt.Sprintf(`{"account_id":"a","key_id":"k%d"}`, i))
	}
	s, err := js.Stream(dlqTCtx(t), cfg.DLQStream)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteMsg(dlqTCtx(t), 3); err != nil { // replayed earlier: a gap
		t.Fatal(err)
	}

	all, err := queue.ListDeadLetters(dlqTCtx(t), js, cfg.DLQStream, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for _, r := range all {
		seqs = append(seqs, r.Sequence)
	}
	if fmt.Sprint(seqs) != "[1 2 4 5]" {
		t.Fatalf("sequences %v", seqs)
	}
	r := all[0]
	if r.Reason != "api_rejected" || r.Detail != "detail api_rejected" || r.Status != "400" || r.Attempts != 0 ||
		r.EventID != "ev-0" || r.SourceSubject != "revoke.urgent" || r.SourceSequence != 100 ||
		!r.FailedAt.Equal(failed) || r.StoredAt.IsZero() || string(r.Body) != `{"account_id":"a","key_id":"k0"}` {
		t.Fatalf("record %+v", r)
	}
	if all[1].Status != "" || all[1].Reason != "invalid_event" {
		t.Fatalf("no call made, yet status %q", all[1].Status)
	}

	rejected, err := queue.ListDeadLetters(dlqTCtx(t), js, cfg.DLQStream,
		func(r queue.DeadLetterRecord) bool { return r.Reason == "api_rejected" }, 0)
	if err != nil || len(rejected) != 2 || rejected[0].Sequence != 1 || rejected[1].Sequence != 5 {
		t.Fatalf("filtered: %+v %v", rejected, err)
	}
	two, err := queue.ListDeadLetters(dlqTCtx(t), js, cfg.DLQStream, nil, 2)
	if err != nil || len(two) != 2 || two[1].Sequence != 2 {
		t.Fatalf("limited: %+v %v", two, err)
	}
	if n := dlqTMsgs(t, js, cfg.DLQStream); n != 4 {
		t.Fatalf("reading removed records: %d left", n)
	}
}

func TestListDeadLettersEmptyOrMissing(t *testing.T) {
	js, cfg := dlqTSetup(t)
	start := time.Now()
	recs, err := queue.ListDeadLetters(dlqTCtx(t), js, cfg.DLQStream, nil, 0)
	if err != nil || len(recs) != 0 {
		t.Fatalf("%+v %v", recs, err)
	}
	if _, err := queue.ListDeadLetters(dlqTCtx(t), js, "NO_SUCH_STREAM", nil, 0); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("missing stream: %v", err)
	}
	if _, err := queue.GetDeadLetter(dlqTCtx(t), js, cfg.DLQStream, 7); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("missing record: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("empty answers took %s", d)
	}
}

func TestReplayRepublishesThenRemovesAndCanRepeat(t *testing.T) {
	js, cfg := dlqTSetup(t)
	body := "{\"account_id\":\"a\",\"key_id\":\"k\"}  \n" // byte for byte, trailing space and all
	dlqTWrite(t, js, cfg, event.DeadLetter{Reason: "api_rejected", EventID: "orig-1", Stream: cfg.Stream,
		Subject: "revoke.scheduled", Sequence: 9, FailedAt: time.Now()}, body)
	rec, err := queue.GetDeadLetter(dlqTCtx(t), js, cfg.DLQStream, 1)
	if err != nil {
		t.Fatal(err)
	}

	res, err := replayer(t, js, cfg).Replay(dlqTCtx(t), rec)
	if err != nil {
		t.Fatal(err)
	}
	if res.Duplicate || !res.Removed || res.MsgID != "replay:1" || res.Subject != "revoke.scheduled" || res.EventID != "orig-1" {
		t.Fatalf("result %+v", res)
	}
	work, err := js.Stream(dlqTCtx(t), cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := work.GetMsg(dlqTCtx(t), res.WorkSequence)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.Data, []byte(body)) || m.Subject != "revoke.scheduled" ||
		m.Header.Get(jetstream.MsgIDHeader) != "replay:1" || m.Header.Get(queue.HeaderReplayOf) != "orig-1" {
		t.Fatalf("republished %q on %s with %v", m.Data, m.Subject, m.Header)
	}
	if n := dlqTMsgs(t, js, cfg.DLQStream); n != 0 {
		t.Fatalf("record not removed: %d left", n)
	}

	// Run again on the same record (an interrupted run read it before
	// it was removed): dropped as a duplicate, nothing new stored.
	again, err := replayer(t, js, cfg).Replay(dlqTCtx(t), rec)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Duplicate || !again.Removed || again.WorkSequence != res.WorkSequence {
		t.Fatalf("second replay %+v", again)
	}
	if n := dlqTMsgs(t, js, cfg.Stream); n != 1 {
		t.Fatalf("work stream holds %d, want 1", n)
	}
}

func TestReplayRefusesWhereItCannotGo(t *testing.T) {
	js, cfg := dlqTSetup(t)
	dlqTWrite(t, js, cfg, event.DeadLetter{Reason: "api_rejected", EventID: "e", Stream: cfg.Stream,
		Subject: "not.in.the.work.stream", Sequence: 1}, `{}`)
	rec, err := queue.GetDeadLetter(dlqTCtx(t), js, cfg.DLQStream, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := replayer(t, js, cfg).Replay(dlqTCtx(t), rec); err == nil {
		t.Fatal("replayed to a subject outside the work stream")
	}
	rec.SourceSubject = ""
	if _, err := replayer(t, js, cfg).Replay(dlqTCtx(t), rec); err == nil {
		t.Fatal("replayed a record without a source subject")
	}
	if n := dlqTMsgs(t, js, cfg.DLQStream); n != 1 {
		t.Fatalf("a record that was not replayed was removed: %d left", n)
	}
}

func TestEachOutcomeSince(t *testing.T) {
	js, cfg := dlqTSetup(t)
	pub := func(o event.Record) {
		o.AccountID, o.Stream = "a", cfg.Stream
		m, err := queue.OutcomeMsg(cfg.OutcomeSubject, o)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.PublishMsg(dlqTCtx(t), m); err != nil {
			t.Fatal(err)
		}
	}
	pub(event.Record{EventID: "e1", KeyID: "k1", Outcome: "revoked", Sequence: 1})
	if _, err := js.Publish(dlqTCtx(t), cfg.OutcomeSubject+".a.k9", []byte("not a record")); err != nil {
		t.Fatal(err)
	}
	mid := time.Now()
	pub(event.Record{EventID: "e2", KeyID: "k2", Outcome: "not_found", Sequence: 2})
	pub(event.Record{EventID: "e3", KeyID: "k3", Outcome: "dead_lettered", Reason: "api_rejected", Sequence: 3})

	read := func(since time.Time) (ids []string) {
		t.Helper()
		if err := queue.EachOutcome(dlqTCtx(t), js, cfg.OutcomeStream, cfg.OutcomeSubject+".>", since, func(o event.Record) error {
			ids = append(ids, o.EventID)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return ids
	}
	if got := fmt.Sprint(read(time.Time{})); got != "[e1 e2 e3]" {
		t.Fatalf("all: %s", got)
	}
	if got := fmt.Sprint(read(mid)); got != "[e2 e3]" {
		t.Fatalf("since: %s", got)
	}
	start := time.Now()
	if got := read(time.Now().Add(time.Hour)); len(got) != 0 {
		t.Fatalf("future: %v", got)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("nothing to read took %s", d)
	}
	stop := errors.New("enough")
	n := 0
	err := queue.EachOutcome(dlqTCtx(t), js, cfg.OutcomeStream, cfg.OutcomeSubject+".>", time.Time{}, func(event.Record) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Fatalf("stop: %v after %d", err, n)
	}
	// Reading leaves no consumer behind.
	s, err := js.Stream(dlqTCtx(t), cfg.OutcomeStream)
	if err != nil {
		t.Fatal(err)
	}
	if n := s.CachedInfo().State.Consumers; n != 0 {
		t.Fatalf("%d consumers left on the outcome stream", n)
	}
}
