package queue_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
	"github.com/revoker/revoker/worker"
)

// outcomeT is a trail on a fresh JetStream, with a second connection
// counting the JetStream API requests made.
type outcomeT struct {
	t    *testing.T
	js   jetstream.JetStream
	cfg  config.Config
	recs *queue.Records
	logs *observer.ObservedLogs
	api  atomic.Int64 // $JS.API requests seen, markers aside
	mark atomic.Int64 // markers seen ($JS.API.INFO)
}

func newOutcomeT(t *testing.T) *outcomeT {
	t.Helper()
	js, cfg := dlqTSetup(t)
	core, logs := observer.New(zap.WarnLevel)
	o := &outcomeT{t: t, js: js, cfg: cfg, logs: logs, recs: &queue.Records{
		JS: js, Log: zap.New(core), Timeout: 5 * time.Second,
		DLQStream: cfg.DLQStream, DLQSubject: cfg.DLQSubject,
		OutcomeStream: cfg.OutcomeStream, OutcomePrefix: cfg.OutcomeSubject,
	}}
	watch, err := nats.Connect(js.Conn().ConnectedUrl())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(watch.Close)
	if _, err := watch.Subscribe("$JS.API.>", func(m *nats.Msg) {
		if m.Subject == "$JS.API.INFO" {
			o.mark.Add(1)
		} else {
			o.api.Add(1)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := watch.Flush(); err != nil {
		t.Fatal(err)
	}
	return o
}

// record is the record of event seq of key k, stored at `stored`.
func (o *outcomeT) record(k string, seq uint64, outcome event.Outcome, stored time.Time) event.Record {
	return event.Record{
		EventID: "e" + k, AccountID: "acct01", KeyID: k, Outcome: outcome, Status: 200,
		Stream: o.cfg.Stream, Subject: o.cfg.LowestPriority(), Sequence: seq, Attempts: 1,
		PublishedAt: stored.UTC().Format(time.RFC3339Nano), CompletedAt: time.Now().UTC().Format(time.RFC3339Nano),
	}
}

func (o *outcomeT) outcome(rec event.Record) event.Record {
	o.t.Helper()
	got, err := o.recs.Outcome(dlqTCtx(o.t), rec)
	if err != nil {
		o.t.Fatalf("Outcome(%s %s): %v", rec.KeyID, rec.Outcome, err)
	}
	return got
}

// onSubject returns the records stored on key k's subject.
func (o *outcomeT) onSubject(k string) []event.Record {
	o.t.Helper()
	recs, err := queue.KeyOutcomes(dlqTCtx(o.t), o.js, o.cfg.OutcomeStream, o.cfg.OutcomeSubject, "acct01", k, nil)
	if err != nil {
		o.t.Fatal(err)
	}
	return recs
}

// apiRequests returns the count of JetStream API requests since the last
// call. The watcher sees our connection's messages in order, so once it
// has seen a marker sent after them, it has seen them all.
func (o *outcomeT) apiRequests() int64 {
	o.t.Helper()
	marks := o.mark.Load()
	if _, err := o.js.AccountInfo(dlqTCtx(o.t)); err != nil {
		o.t.Fatal(err)
	}
	queuetest.Eventually(o.t, 5*time.Second, "the watcher to see the marker", func() bool { return o.mark.Load() > marks })
	return o.api.Swap(0)
}

// TestRecordsOutcomeFirstRecordOneRequest: a key's first record is one
// publish, with no JetStream API request (no stream lookup, no read of
// the subject), and the outcome stream is looked up once, not per record.
func TestRecordsOutcomeFirstRecordOneRequest(t *testing.T) {
	o := newOutcomeT(t)
	o.apiRequests() // setup's
	now := time.Now()
	for i, k := range []string{"k1", "k2", "k3"} {
		got := o.outcome(o.record(k, uint64(i+1), event.Revoked, now))
		if got.Outcome != event.Revoked || got.KeyID != k {
			t.Fatalf("believed %+v", got)
		}
	}
	if n := o.apiRequests(); n != 0 {
		t.Errorf("3 first records made %d JetStream API requests, want 0", n)
	}
	for _, k := range []string{"k1", "k2", "k3"} {
		if recs := o.onSubject(k); len(recs) != 1 {
			t.Fatalf("%s has %d records, want 1", k, len(recs))
		}
	}
	// Subjects with records on them are read, through one lookup of the
	// stream for all of them.
	o.apiRequests()
	for i, k := range []string{"k1", "k2", "k3"} {
		o.outcome(o.record(k, uint64(10+i), event.Revoked, now))
	}
	if n := o.apiRequests(); n > 1+3*2 {
		t.Errorf("3 records on used subjects made %d API requests, want at most one stream lookup and two reads each", n)
	}
}

// TestRecordsOutcomeKeepsTheChecks: with the first write taking no read,
// the trail still refuses a second final record of an event, lets a
// revoked record correct a not_found, ignores a record stored before the
// event, and keeps a key's other events apart.
func TestRecordsOutcomeKeepsTheChecks(t *testing.T) {
	o := newOutcomeT(t)

	// A record planted before the event was stored: ignored, ours written.
	planted := o.record("k1", 7, event.Revoked, time.Now())
	m := queue.OutcomeMsg(o.cfg.OutcomeSubject, planted)
	m.Header.Set(jetstream.MsgIDHeader, "planted")
	ack, err := o.js.PublishMsg(dlqTCtx(t), m)
	if err != nil {
		t.Fatal(err)
	}
	s, err := o.js.Stream(dlqTCtx(t), o.cfg.OutcomeStream)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := s.GetMsg(dlqTCtx(t), ack.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	stored := pm.Time.Add(time.Nanosecond) // the event came after the plant
	nf := o.record("k1", 7, event.NotFound, stored)
	if got := o.outcome(nf); got.Outcome != event.NotFound {
		t.Fatalf("a record planted before the event answered for it: %+v", got)
	}
	// A second final record of the event is refused: the first answers.
	if got := o.outcome(o.record("k1", 7, event.DeadLettered, stored)); got.Outcome != event.NotFound {
		t.Fatalf("second record: believed %s, want the first (not_found)", got.Outcome)
	}
	// A confirmation corrects the not_found, naming it.
	recs := o.onSubject("k1")
	if len(recs) != 2 {
		t.Fatalf("%d records, want the plant and not_found", len(recs))
	}
	got := o.outcome(o.record("k1", 7, event.Revoked, stored))
	if got.Outcome != event.Revoked || got.Supersedes == 0 {
		t.Fatalf("correction: %+v", got)
	}
	// Another event of the same key is recorded beside them.
	if got := o.outcome(o.record("k1", 8, event.NotFound, stored)); got.Outcome != event.NotFound || got.Sequence != 8 {
		t.Fatalf("another event of the key: %+v", got)
	}
	if recs := o.onSubject("k1"); len(recs) != 4 {
		t.Fatalf("%d records, want 4: plant, not_found, its correction, the other event", len(recs))
	}
	// A refused write leaves no trace of its id: the write after the read
	// is not taken for a duplicate of someone else's record.
	for _, e := range o.logs.All() {
		t.Errorf("logged %s: %s", e.Level, e.Message)
	}
}

// TestRecordsOutcomeRaceOneRecord: writers racing on an empty subject to
// record one event end with one record, which every writer is told.
func TestRecordsOutcomeRaceOneRecord(t *testing.T) {
	o := newOutcomeT(t)
	stored := time.Now()
	outcomes := []event.Outcome{event.NotFound, event.DeadLettered, event.NotFound, event.DeadLettered, event.NotFound, event.DeadLettered}
	got := make([]event.Record, len(outcomes))
	var wg sync.WaitGroup
	for i, oc := range outcomes {
		wg.Go(func() {
			r, err := o.recs.Outcome(dlqTCtx(t), o.record("k1", 3, oc, stored))
			if err != nil {
				t.Error(err)
			}
			got[i] = r
		})
	}
	wg.Wait()
	recs := o.onSubject("k1")
	if len(recs) != 1 {
		t.Fatalf("%d records for one event, want 1", len(recs))
	}
	for i, r := range got {
		if r.Outcome != recs[0].Outcome {
			t.Errorf("writer %d believes %s, the trail holds %s", i, r.Outcome, recs[0].Outcome)
		}
	}
}

// TestRecordsPriorAfterTheStreamIsMadeAgain: the kept handle of the
// outcome stream does not outlive the stream: made again without direct
// gets, it is read again after at most one failed read.
func TestRecordsPriorAfterTheStreamIsMadeAgain(t *testing.T) {
	o := newOutcomeT(t)
	ctx := dlqTCtx(t)
	if err := o.js.DeleteStream(ctx, o.cfg.OutcomeStream); err != nil {
		t.Fatal(err)
	}
	direct := queue.OutcomeStream(o.cfg.Topology())
	direct.AllowDirect = true
	if _, err := o.js.CreateStream(ctx, direct); err != nil {
		t.Fatal(err)
	}
	stored := time.Now()
	o.outcome(o.record("k1", 1, event.NotFound, stored))
	ref := worker.Ref{Stream: o.cfg.Stream, Seq: 1, Account: "acct01", Key: "k1", Stored: stored}
	if _, found, err := o.recs.Prior(ctx, ref); err != nil || !found {
		t.Fatalf("Prior: found %v, %v", found, err)
	}

	if err := o.js.DeleteStream(ctx, o.cfg.OutcomeStream); err != nil {
		t.Fatal(err)
	}
	if _, err := o.js.CreateStream(ctx, queue.OutcomeStream(o.cfg.Topology())); err != nil {
		t.Fatal(err)
	}
	// Stored by hand: the worker's own write may read through the kept
	// handle too, and this test is about the reads.
	m := queue.OutcomeMsg(o.cfg.OutcomeSubject, o.record("k1", 1, event.Revoked, stored))
	if _, err := o.js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	o.recs.Timeout = time.Second // the read that fails waits this long
	var err error
	for range 2 {
		var (
			rec   event.Record
			found bool
		)
		if rec, found, err = o.recs.Prior(ctx, ref); err == nil {
			if !found || rec.Outcome != event.Revoked {
				t.Fatalf("Prior on the stream made again: %+v, found %v", rec, found)
			}
			return
		}
	}
	t.Fatalf("Prior failed twice on the stream made again: %v", err)
}

// notFoundThenRevoked stores the not_found of event seq of key k that a
// replica recorded while another, cut off, had a call out (two calls, one
// unanswered), and returns the revoked record the cut-off one writes once
// it heard its 200, knowing of the same two calls.
func (o *outcomeT) notFoundThenRevoked(k string, seq uint64, stored time.Time) event.Record {
	o.t.Helper()
	nf := o.record(k, seq, event.NotFound, stored)
	nf.Status, nf.Attempts, nf.UnansweredCalls = 404, 2, 1
	o.outcome(nf)
	rv := o.record(k, seq, event.Revoked, stored)
	rv.Attempts, rv.UnansweredCalls = 2, 1
	return rv
}

// TestRecordsCorrectionCountsTheConfirmingCallAnswered: a not_found that
// counted two calls, one unanswered (the call of a replica cut off, which
// it did not hear), is corrected by that replica's revoked record once it
// heard its 200. The writer of the correction knows of the same two calls
// but not that the other was answered (an ack leaves nothing in the
// ledger): the correction takes the not_found's count of unanswered calls,
// less the confirming call, now answered (SPEC §5a).
func TestRecordsCorrectionCountsTheConfirmingCallAnswered(t *testing.T) {
	o := newOutcomeT(t)
	stored := time.Now()
	rv := o.notFoundThenRevoked("k1", 7, stored)
	got := o.outcome(rv)
	if got.Outcome != event.Revoked || got.Supersedes == 0 || got.Attempts != 2 || got.UnansweredCalls != 0 {
		t.Fatalf("correction %+v; want revoked, superseding, 2 calls, none unanswered", got)
	}
	if recs := o.onSubject("k1"); len(recs) != 2 || recs[1].UnansweredCalls != 0 {
		t.Fatalf("stored %+v; want the not_found and its correction with no call unanswered", recs)
	}
}

// TestFirstOutcome: a key's first record is stored and told on the
// answers' goroutine; one on a subject that holds a record already is not
// stored, and told as an error, so that the caller writes it the way that
// reads what is there; a record without a valid key, or without records,
// does not go this way at all.
func TestFirstOutcome(t *testing.T) {
	o := newOutcomeT(t)
	first := func(rec event.Record) (bool, error) {
		t.Helper()
		told := make(chan error, 1)
		if !o.recs.FirstOutcome(rec, func(err error) { told <- err }) {
			return false, nil
		}
		select {
		case err := <-told:
			return true, err
		case <-time.After(10 * time.Second):
			t.Fatal("FirstOutcome never told")
			return true, nil
		}
	}
	stored := time.Now()
	rec := o.record("k1", 7, event.Revoked, stored)
	if went, err := first(rec); !went || err != nil {
		t.Fatalf("first record of k1: went %v, %v; want stored", went, err)
	}
	if recs := o.onSubject("k1"); len(recs) != 1 || !recs[0].SameFacts(rec) {
		t.Fatalf("stored on k1: %+v", recs)
	}
	// Another event's record on the same key: the subject holds one.
	if went, err := first(o.record("k1", 8, event.Revoked, stored)); !went || err == nil {
		t.Fatalf("a second record of k1: went %v, %v; want an error, nothing stored", went, err)
	}
	if recs := o.onSubject("k1"); len(recs) != 1 {
		t.Fatalf("%d records on k1 after a refused first record, want 1", len(recs))
	}
	bad := o.record("k2", 9, event.Revoked, stored)
	bad.KeyID = "no good"
	if went, _ := first(bad); went {
		t.Error("a record without a valid key went the first record's way")
	}
	off := &queue.Records{JS: o.js, Log: o.recs.Log, Timeout: o.recs.Timeout, OutcomeStream: o.cfg.OutcomeStream}
	if off.FirstOutcome(o.record("k3", 10, event.Revoked, stored), func(error) { t.Error("told with records off") }) {
		t.Error("a record went the first record's way with records off")
	}
	// No stream to answer: told, not left waiting.
	gone := &queue.Records{JS: o.js, Log: o.recs.Log, Timeout: o.recs.Timeout, OutcomeStream: "NOSTREAM", OutcomePrefix: "nostream.outcome"}
	told := make(chan error, 1)
	if gone.FirstOutcome(o.record("k4", 11, event.Revoked, stored), func(err error) { told <- err }) {
		select {
		case err := <-told:
			if err == nil {
				t.Error("a record nobody stored was told stored")
			}
		case <-time.After(10 * time.Second):
			t.Error("a record nobody could store was never told")
		}
	}
}

// TestSweepUnrecorded: a revoked record the trail refused, kept in the
// ledger, is written by the sweep whatever became of its event: here
// after another delivery's not_found, which it corrects (SPEC §4, "The
// proof", point 3); then dropped from the ledger. A record whose event the
// trail believes revoked already is dropped without a write; one no
// worker could have kept there is dropped with a word.
func TestSweepUnrecorded(t *testing.T) {
	o := newOutcomeT(t)
	ctx := dlqTCtx(t)
	l, err := queue.BindLedger(ctx, o.js, o.cfg.Topology(), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	stored := time.Now()
	rv := o.notFoundThenRevoked("k1", 7, stored)
	if err := l.Unrecorded(ctx, rv); err != nil {
		t.Fatal(err)
	}
	done := o.record("k2", 8, event.Revoked, stored)
	o.outcome(done)
	if err := l.Unrecorded(ctx, done); err != nil {
		t.Fatal(err)
	}
	kv, err := o.js.KeyValue(ctx, queue.LedgerBucket)
	if err != nil {
		t.Fatal(err)
	}
	// An entry of a work stream named as the sweep's keys begin is none of
	// them.
	other := worker.Ref{Stream: "unrecorded", Seq: 7, Account: "acct01", Key: "k1", Stored: stored}
	if _, err := l.Update(ctx, other, func(e *worker.Entry) error {
		e.Calls, e.Confirmed = 1, &worker.Call{Status: 200, CFRay: "ray-1", At: time.Now()}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "trail/unrecorded.REVOCATIONS.99", []byte(`{"outcome":"revoked","account_id":"acct01","key_id":"k3","stream":"REVOCATIONS","sequence":5}`)); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.WarnLevel)
	n, err := l.SweepUnrecorded(ctx, o.recs, zap.New(core))
	if err != nil || n != 1 {
		t.Fatalf("swept %d, %v; want the one record the trail lacked", n, err)
	}
	if recs := o.onSubject("k1"); len(recs) != 2 || recs[1].Outcome != event.Revoked || recs[1].Supersedes == 0 {
		t.Fatalf("k1: %+v; want the not_found and the revoked record correcting it", recs)
	}
	if recs := o.onSubject("k2"); len(recs) != 1 {
		t.Errorf("k2: %d records; want the one already there", len(recs))
	}
	if recs := o.onSubject("k3"); len(recs) != 0 {
		t.Errorf("k3: %+v; a record kept under another event's key was written", recs)
	}
	if logs.FilterMessage("the ledger holds, among the revoked records for the trail, one no worker wrote; dropped").Len() != 1 {
		t.Errorf("the planted record not reported: %v", logs.All())
	}
	if e, err := l.Load(ctx, other); err != nil || e.Confirmed == nil {
		t.Errorf("the entry of stream unrecorded's event 7 after the sweep: %+v, %v; want its confirmation kept", e, err)
	}
	keys, err := kv.ListKeysFiltered(ctx, "trail/unrecorded.>")
	if err != nil {
		t.Fatal(err)
	}
	for k := range keys.Keys() {
		t.Errorf("still kept after the sweep: %s", k)
	}
	if n, err := l.SweepUnrecorded(ctx, o.recs, zap.NewNop()); err != nil || n != 0 {
		t.Errorf("a second sweep wrote %d, %v; want nothing", n, err)
	}
}
