package queue_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

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
	if _, err := js.CreateKeyValue(ctx, queue.ReplaysConfig(1)); err != nil {
		t.Fatal(err)
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

// TestReplayRepublishesAndCanRepeat: a replay republishes the record
// byte for byte and leaves it in place; the worker taking the replay
// removes it (Replays.Take). Run again on the same record (an interrupted
// run read it before it was removed), the republish is dropped as a
// duplicate, and nothing new is stored.
func TestReplayRepublishesAndCanRepeat(t *testing.T) {
	js, cfg := dlqTSetup(t)
	body := "{\"account_id\":\"a\",\"key_id\":\"k\"}  \n" // byte for byte, trailing space and all
	dlqTWrite(t, js, cfg, event.DeadLetter{Reason: "api_rejected", EventID: "orig-1", Stream: cfg.Stream,
		Subject: "revoke.scheduled", Sequence: 9, FailedAt: time.Now()}, body)
	rec, err := queue.GetDeadLetter(dlqTCtx(t), js, cfg.DLQStream, 1)
	if err != nil {
		t.Fatal(err)
	}

	res, err := replayer(t, js, cfg).Republish(dlqTCtx(t), rec)
	if err != nil {
		t.Fatal(err)
	}
	if res.Duplicate || res.MsgID != "replay:1" || res.Subject != "revoke.scheduled" || res.EventID != "orig-1" {
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
	if n := dlqTMsgs(t, js, cfg.DLQStream); n != 1 {
		t.Fatalf("%d records left: the replay itself removes none", n)
	}
	if ok, err := dlqTReplays(t, js, cfg).Take(dlqTCtx(t), "replay:1", "orig-1", m.Data, res.WorkSequence, m.Subject, ""); err != nil || !ok {
		t.Fatalf("the worker taking the replay: verified %v, %v", ok, err)
	}
	if n := dlqTMsgs(t, js, cfg.DLQStream); n != 0 {
		t.Fatalf("record not removed once the worker took the replay: %d left", n)
	}

	again, err := replayer(t, js, cfg).Republish(dlqTCtx(t), rec)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Duplicate || again.WorkSequence != res.WorkSequence {
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
	if _, err := replayer(t, js, cfg).Republish(dlqTCtx(t), rec); err == nil {
		t.Fatal("replayed to a subject outside the work stream")
	}
	rec.SourceSubject = ""
	if _, err := replayer(t, js, cfg).Republish(dlqTCtx(t), rec); err == nil {
		t.Fatal("replayed a record without a source subject")
	}
	if n := dlqTMsgs(t, js, cfg.DLQStream); n != 1 {
		t.Fatalf("a record that was not replayed was removed: %d left", n)
	}
}

// TestReplayRefusesARecordCutShort: a record cut to fit its stream
// (Revoker-Body-Truncated: a dead-letter stream made with a smaller
// message limit) keeps only the start of its event. Put back, that start
// would be a new, invalid event, and the record, the only copy of the
// rest, would be removed: the replay refuses it and leaves it in place.
func TestReplayRefusesARecordCutShort(t *testing.T) {
	js, cfg := dlqTSetup(t)
	body := `{"account_id":"a","key_id":"k","reason":"` + strings.Repeat("x", 30<<10) + `"}`
	m := queue.DeadLetterMsg(cfg.DLQSubject, event.DeadLetter{Reason: "api_rejected", EventID: "e", Stream: cfg.Stream,
		Subject: cfg.Subjects[0], Sequence: 9, FailedAt: time.Now()}, []byte(body), 20<<10)
	if m.Header.Get(queue.HeaderBodyTruncated) == "" {
		t.Fatal("the record was not cut: nothing tested")
	}
	if _, err := js.PublishMsg(dlqTCtx(t), m); err != nil {
		t.Fatal(err)
	}
	rec, err := queue.GetDeadLetter(dlqTCtx(t), js, cfg.DLQStream, 1)
	if err != nil {
		t.Fatal(err)
	}
	_, err = replayer(t, js, cfg).Republish(dlqTCtx(t), rec)
	if err == nil {
		t.Fatal("a record keeping only the start of its event was replayed")
	}
	t.Logf("refused: %v", err)
	if n := dlqTMsgs(t, js, cfg.Stream); n != 0 {
		t.Fatalf("the work stream holds %d messages: a fragment was put back", n)
	}
	if n := dlqTMsgs(t, js, cfg.DLQStream); n != 1 {
		t.Fatalf("the record was removed: %d left", n)
	}
}

func TestEachOutcomeSince(t *testing.T) {
	js, cfg := dlqTSetup(t)
	pub := func(o event.Record) {
		o.AccountID, o.Stream = "a", cfg.Stream
		m := queue.OutcomeMsg(cfg.OutcomeSubject, o)
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

	var strays []queue.Stray
	read := func(since time.Time) (ids []string) {
		t.Helper()
		strays = nil
		if err := queue.EachOutcome(dlqTCtx(t), js, cfg.OutcomeStream, cfg.OutcomeSubject+".>", since, func(o event.Record) error {
			ids = append(ids, o.EventID)
			return nil
		}, func(s queue.Stray) { strays = append(strays, s) }); err != nil {
			t.Fatal(err)
		}
		return ids
	}
	if got := fmt.Sprint(read(time.Time{})); got != "[e1 e2 e3]" {
		t.Fatalf("all: %s", got)
	}
	// What is not a record of its subject's key is reported, not believed.
	if len(strays) != 1 || strays[0].Subject != cfg.OutcomeSubject+".a.k9" {
		t.Fatalf("strays %+v, want the message on %s.a.k9", strays, cfg.OutcomeSubject)
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
	err := queue.EachOutcome(dlqTCtx(t), js, cfg.OutcomeStream, cfg.OutcomeSubject+".>", time.Time{}, func(event.Record) error { n++; return stop }, nil)
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

// dlqTPlant publishes on a work subject as anyone allowed to publish
// events can: any Nats-Msg-Id, any Revoker-Replay-Of.
func dlqTPlant(t *testing.T, js jetstream.JetStream, subject, msgID, body, replayOf string) uint64 {
	t.Helper()
	m := nats.NewMsg(subject)
	m.Data = []byte(body)
	m.Header.Set(jetstream.MsgIDHeader, msgID)
	if replayOf != "" {
		m.Header.Set(queue.HeaderReplayOf, replayOf)
	}
	ack, err := js.PublishMsg(dlqTCtx(t), m)
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

// dlqTStored returns the messages a stream holds, oldest first.
func dlqTStored(t *testing.T, js jetstream.JetStream, stream string) []*jetstream.RawStreamMsg {
	t.Helper()
	s, err := js.Stream(dlqTCtx(t), stream)
	if err != nil {
		t.Fatal(err)
	}
	st := s.CachedInfo().State
	var out []*jetstream.RawStreamMsg
	for seq := st.FirstSeq; st.Msgs > 0 && seq <= st.LastSeq; seq++ {
		m, err := s.GetMsg(dlqTCtx(t), seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// consume removes a message from the work stream, as the worker's ack
// does on a work-queue stream.
func consume(t *testing.T, js jetstream.JetStream, stream string, seq uint64) {
	t.Helper()
	s, err := js.Stream(dlqTCtx(t), stream)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteMsg(dlqTCtx(t), seq); err != nil {
		t.Fatal(err)
	}
}

// TestReplayNotSuppressedByPlantedID: a publisher who sends a message under
// the replay's id first (waiting, or long consumed) must not make the
// operator's replay vanish as a duplicate, nor its dead letter with it.
func TestReplayNotSuppressedByPlantedID(t *testing.T) {
	for _, consumed := range []bool{false, true} {
		t.Run(fmt.Sprintf("planted consumed %v", consumed), func(t *testing.T) {
			js, cfg := dlqTSetup(t)
			body := `{"account_id":"a","key_id":"k"}`
			dlqTWrite(t, js, cfg, event.DeadLetter{Reason: "api_rejected", EventID: "orig-1", Stream: cfg.Stream,
				Subject: "revoke.urgent", Sequence: 9, FailedAt: time.Now()}, body)
			rec, err := queue.GetDeadLetter(dlqTCtx(t), js, cfg.DLQStream, 1)
			if err != nil {
				t.Fatal(err)
			}
			planted := dlqTPlant(t, js, "revoke.urgent", queue.ReplayMsgID(1), `{"account_id":"a","key_id":"decoy"}`, "orig-1")
			if consumed {
				consume(t, js, cfg.Stream, planted)
			}

			res, err := replayer(t, js, cfg).Republish(dlqTCtx(t), rec)
			if err != nil {
				t.Fatal(err)
			}
			if res.Duplicate || res.MsgID == queue.ReplayMsgID(1) || !strings.HasPrefix(res.MsgID, "replay:1:") {
				t.Fatalf("result %+v", res)
			}
			stored := dlqTStored(t, js, cfg.Stream)
			if len(stored) == 0 {
				t.Fatal("the replay was suppressed: nothing republished")
			}
			m := stored[len(stored)-1]
			if m.Sequence == planted || m.Sequence != res.WorkSequence || m.Subject != "revoke.urgent" || string(m.Data) != body ||
				m.Header.Get(jetstream.MsgIDHeader) != res.MsgID || m.Header.Get(queue.HeaderReplayOf) != "orig-1" {
				t.Fatalf("republished %d %q on %s with %v; result %+v", m.Sequence, m.Data, m.Subject, m.Header, res)
			}
			if n := dlqTMsgs(t, js, cfg.DLQStream); n != 1 {
				t.Fatalf("%d records left: the replay itself removes none (the worker does, taking it)", n)
			}
			// Only the real replay passes for one.
			replays := dlqTReplays(t, js, cfg)
			if ok, err := replays.Verify(dlqTCtx(t), res.MsgID, "orig-1"); err != nil || !ok {
				t.Fatalf("the real replay not verified: %v %v", ok, err)
			}
			if ok, err := replays.Verify(dlqTCtx(t), queue.ReplayMsgID(1), "orig-1"); err != nil || ok {
				t.Fatalf("the planted message verified as a replay: %v %v", ok, err)
			}
		})
	}
}

// TestReplayNotSuppressedByPlantedHeaders: a message planted under the
// replay's id with the dead letter's own body and Revoker-Replay-Of, but
// headers the replay would not carry, is not the replay either: a
// Content-Type that makes the worker read it as a CloudEvent (or drops
// that of a CloudEvent), or any header the replayer does not write. The
// record is republished under a new id.
func TestReplayNotSuppressedByPlantedHeaders(t *testing.T) {
	const plain, ce = `{"account_id":"a","key_id":"k"}`, `{"specversion":"1.0","id":"c1","source":"s","type":"t","data":{"account_id":"a","key_id":"k"}}`
	for _, tc := range []struct {
		name, body, contentType string
		planted                 map[string]string
	}{
		{"a plain event planted as a CloudEvent", plain, "", map[string]string{queue.HeaderContentType: "application/cloudevents+json"}},
		{"a CloudEvent planted without its Content-Type", ce, "application/cloudevents+json", nil},
		{"a header the replay does not carry", plain, "", map[string]string{"Traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js, cfg := dlqTSetup(t)
			dlqTWrite(t, js, cfg, event.DeadLetter{Reason: "unauthorized", EventID: "orig-1", Stream: cfg.Stream,
				Subject: "revoke.urgent", Sequence: 9, FailedAt: time.Now(), ContentType: tc.contentType}, tc.body)
			rec, err := queue.GetDeadLetter(dlqTCtx(t), js, cfg.DLQStream, 1)
			if err != nil {
				t.Fatal(err)
			}
			m := nats.NewMsg("revoke.urgent")
			m.Data = []byte(tc.body)
			m.Header.Set(jetstream.MsgIDHeader, queue.ReplayMsgID(1))
			m.Header.Set(queue.HeaderReplayOf, "orig-1")
			for k, v := range tc.planted {
				m.Header[k] = []string{v}
			}
			ack, err := js.PublishMsg(dlqTCtx(t), m)
			if err != nil {
				t.Fatal(err)
			}

			res, err := replayer(t, js, cfg).Republish(dlqTCtx(t), rec)
			if err != nil {
				t.Fatal(err)
			}
			if res.Duplicate || res.WorkSequence == ack.Sequence || !strings.HasPrefix(res.MsgID, "replay:1:") {
				t.Fatalf("the planted message %d passed for the replay: result %+v", ack.Sequence, res)
			}
			stored := dlqTStored(t, js, cfg.Stream)
			last := stored[len(stored)-1]
			if last.Sequence != res.WorkSequence || string(last.Data) != tc.body || last.Header.Get(queue.HeaderContentType) != tc.contentType {
				t.Fatalf("republished %d %q with %v; result %+v", last.Sequence, last.Data, last.Header, res)
			}
		})
	}
}

// TestReplayKeepsDeadLetterUntilRepublished: when the replay's id is taken
// and the republish under a fresh one fails, the dead letter stays.
func TestReplayKeepsDeadLetterUntilRepublished(t *testing.T) {
	js, cfg := dlqTSetup(t)
	// A work stream that takes one message: the planted one fills it.
	work := queue.WorkStream(cfg.Topology())
	work.MaxMsgs, work.Discard = 1, jetstream.DiscardNew
	if _, err := js.UpdateStream(dlqTCtx(t), work); err != nil {
		t.Fatal(err)
	}
	dlqTWrite(t, js, cfg, event.DeadLetter{Reason: "api_rejected", EventID: "orig-1", Stream: cfg.Stream,
		Subject: "revoke.urgent", Sequence: 9, FailedAt: time.Now()}, `{"account_id":"a","key_id":"k"}`)
	rec, err := queue.GetDeadLetter(dlqTCtx(t), js, cfg.DLQStream, 1)
	if err != nil {
		t.Fatal(err)
	}
	dlqTPlant(t, js, "revoke.urgent", queue.ReplayMsgID(1), `{"account_id":"a","key_id":"decoy"}`, "")

	res, err := replayer(t, js, cfg).Republish(dlqTCtx(t), rec)
	if err == nil {
		t.Fatalf("a replay the work stream refused reported done: %+v", res)
	}
	if dlqTMsgs(t, js, cfg.DLQStream) != 1 {
		t.Fatalf("dead letter removed without a republish: %+v", res)
	}
}

// TestReplayOwnEarlierRepublishCountsAsDone: a duplicate that is this very
// replay (an earlier run's, the record still there) is not
// republished again, whether it still waits or was consumed already.
func TestReplayOwnEarlierRepublishCountsAsDone(t *testing.T) {
	body := `{"account_id":"a","key_id":"k"}`
	for _, tc := range []struct {
		name string
		// earlier republishes the record as an interrupted run did and
		// returns where the work stream stored it.
		earlier func(t *testing.T, js jetstream.JetStream, cfg config.Config, rec queue.DeadLetterRecord) uint64
		waiting bool // still in the work stream when the run repeats
		direct  bool // the work stream allows direct gets (one an operator made)
	}{
		{"same id, body and claim, waiting", func(t *testing.T, js jetstream.JetStream, cfg config.Config, rec queue.DeadLetterRecord) uint64 {
			// No note of it: a run stopped right after publishing.
			return dlqTPlant(t, js, rec.SourceSubject, queue.ReplayMsgID(rec.Sequence), body, rec.EventID)
		}, true, false},
		// A direct get answers with headers of its own: the replay must
		// still know its own message.
		{"same id, body and claim, waiting, direct gets allowed", func(t *testing.T, js jetstream.JetStream, cfg config.Config, rec queue.DeadLetterRecord) uint64 {
			return dlqTPlant(t, js, rec.SourceSubject, queue.ReplayMsgID(rec.Sequence), body, rec.EventID)
		}, true, true},
		{"republished, then consumed", func(t *testing.T, js jetstream.JetStream, cfg config.Config, rec queue.DeadLetterRecord) uint64 {
			res, err := replayer(t, js, cfg).Republish(dlqTCtx(t), rec)
			if err != nil || res.Duplicate {
				t.Fatalf("republish: %+v %v", res, err)
			}
			consume(t, js, cfg.Stream, res.WorkSequence)
			return res.WorkSequence
		}, false, false},
		// Stored, but the answer lost (no sequence noted), then consumed:
		// the worker's record names the replay's claim, which it writes
		// only for a message matching the note.
		{"published, its answer lost, then consumed and recorded", func(t *testing.T, js jetstream.JetStream, cfg config.Config, rec queue.DeadLetterRecord) uint64 {
			id := queue.ReplayMsgID(rec.Sequence)
			if err := dlqTReplays(t, js, cfg).Note(dlqTCtx(t), id, rec.EventID, rec.Body, rec.Sequence); err != nil {
				t.Fatal(err)
			}
			seq := dlqTPlant(t, js, rec.SourceSubject, id, body, rec.EventID)
			recs := &queue.Records{JS: js, Log: zap.NewNop(), OutcomeStream: cfg.OutcomeStream, OutcomePrefix: cfg.OutcomeSubject, Timeout: 5 * time.Second}
			if _, err := recs.Outcome(dlqTCtx(t), event.Record{EventID: id, AccountID: "a", KeyID: "k", Outcome: event.Revoked,
				Status: 200, Stream: cfg.Stream, Subject: rec.SourceSubject, Sequence: seq, Attempts: 1, ReplayOf: rec.EventID}); err != nil {
				t.Fatal(err)
			}
			consume(t, js, cfg.Stream, seq)
			return seq
		}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js, cfg := dlqTSetup(t)
			if tc.direct {
				work := queue.WorkStream(cfg.Topology())
				work.AllowDirect = true
				if _, err := js.UpdateStream(dlqTCtx(t), work); err != nil {
					t.Fatal(err)
				}
			}
			dlqTWrite(t, js, cfg, event.DeadLetter{Reason: "api_rejected", EventID: "orig-1", Stream: cfg.Stream,
				Subject: "revoke.scheduled", Sequence: 9, FailedAt: time.Now()}, body)
			rec, err := queue.GetDeadLetter(dlqTCtx(t), js, cfg.DLQStream, 1)
			if err != nil {
				t.Fatal(err)
			}
			first := tc.earlier(t, js, cfg, rec)

			res, err := replayer(t, js, cfg).Republish(dlqTCtx(t), rec)
			if err != nil {
				t.Fatal(err)
			}
			if !res.Duplicate || res.MsgID != queue.ReplayMsgID(1) || res.WorkSequence != first {
				t.Fatalf("result %+v, first stored at %d", res, first)
			}
			want := uint64(0)
			if tc.waiting {
				want = 1
			}
			if n := dlqTMsgs(t, js, cfg.Stream); n != want {
				t.Fatalf("work stream holds %d, want %d: republished twice", n, want)
			}
			if n := dlqTMsgs(t, js, cfg.DLQStream); n != 1 {
				t.Fatalf("%d records left: the replay itself removes none", n)
			}
		})
	}
}
