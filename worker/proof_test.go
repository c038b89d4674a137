package worker_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/metrics"
	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/worker"
)

// The proof (SPEC §4): what the worker records must be true whatever the
// API, the other replicas and the clock do. These run against fakes.

var ref7 = worker.Ref{Stream: "REVOCATIONS", Seq: 7, Account: "acct1", Key: "key1"}

// onlyRecord is the single outcome record h holds.
func onlyRecord(t *testing.T, h *harness) event.Record {
	t.Helper()
	if len(h.records.outcomes) != 1 {
		t.Fatalf("%d outcome records, want 1: %+v", len(h.records.outcomes), h.records.outcomes)
	}
	return h.records.outcomes[0]
}

// TestNotFoundNeedsAbsence: a 404 with the envelope becomes not_found only
// once a key list, fetched after it, answers without the key; the record
// says when.
func TestNotFoundNeedsAbsence(t *testing.T) {
	h := newHarness(t, nil, answer(404, gone, 0))
	before := time.Now()
	d := &fakeDelivery{body: goodEvent}
	h.handle(d)
	if !slices.Equal(h.api.order, []string{"delete 404", "list"}) {
		t.Fatalf("calls %v; want the list after the 404", h.api.order)
	}
	o := onlyRecord(t, h)
	at, err := time.Parse(time.RFC3339Nano, o.AbsenceCheckedAt)
	if o.Outcome != event.NotFound || err != nil || at.Before(before) || o.Status != 404 || o.Attempts != 1 {
		t.Fatalf("record %+v; want not_found, status 404, 1 attempt, absence_checked_at after the start", o)
	}
	if d.settled[0] != "ack" {
		t.Fatalf("settled %v", d.settled)
	}
	if n := testutil.ToFloat64(h.m.AbsenceChecks.WithLabelValues(metrics.AbsenceAbsent)); n != 1 {
		t.Fatalf("revoker_absence_checks_total{result=absent} = %v", n)
	}
}

// TestStillListedIsNotGone: a key still listed after its 404 is retried,
// and on the last delivery dead-lettered as api_rejected, never recorded
// as gone.
func TestStillListedIsNotGone(t *testing.T) {
	h := newHarness(t, nil, answer(404, gone, 0))
	h.api.listed = []string{"KEY1"} // listed in another letter case still counts
	first := &fakeDelivery{body: goodEvent}
	h.handle(first)
	if first.settled[0] != "giveback" || len(h.records.outcomes) != 0 {
		t.Fatalf("settled %v with records %+v; want the event given back, unrecorded", first.settled, h.records.outcomes)
	}
	last := &fakeDelivery{body: goodEvent, delivered: 3}
	h.handle(last)
	o := onlyRecord(t, h)
	if last.settled[0] != "term" || o.Outcome != event.DeadLettered || o.Reason != event.APIRejected {
		t.Fatalf("last delivery settled %v, record %+v; want term and api_rejected", last.settled, o)
	}
	if dl := h.records.dlq[0]; !strings.Contains(dl.Detail, "still listed") {
		t.Fatalf("dead-letter detail %q does not say the key is still listed", dl.Detail)
	}
	if n := testutil.ToFloat64(h.m.AbsenceChecks.WithLabelValues(metrics.AbsenceListed)); n < 2 {
		t.Fatalf("revoker_absence_checks_total{result=listed} = %v", n)
	}
}

// TestHTML404IsNoAPI: a 404 without the envelope is never not_found; the
// worker turns not-ready (condition api) until the API answers again.
func TestHTML404IsNoAPI(t *testing.T) {
	html := &cloudflare.Response{Status: 404, BodyError: "not JSON: <html>"}
	h := newHarness(t, nil, html)
	d := &fakeDelivery{body: goodEvent}
	h.handle(d)
	if d.settled[0] != "giveback" || len(h.records.outcomes) != 0 || h.api.lists != 0 {
		t.Fatalf("settled %v, records %+v, lists %d; want a give-back, no record, no list", d.settled, h.records.outcomes, h.api.lists)
	}
	if v := testutil.ToFloat64(h.ready.Gauge(worker.ReadyAPI)); v != 0 {
		t.Fatalf("revoker_ready{condition=api} = %v after an HTML 404", v)
	}
	last := &fakeDelivery{body: goodEvent, delivered: 3}
	h.handle(last)
	if o := onlyRecord(t, h); o.Outcome != event.DeadLettered || o.Reason != event.APIRejected {
		t.Fatalf("record %+v on the last delivery; want api_rejected", o)
	}
	h.api.answers = []*cloudflare.Response{answer(200, revoked, 0)}
	h.handle(&fakeDelivery{body: `{"account_id":"acct1","key_id":"key2"}`})
	if last := h.api.order[len(h.api.order)-1]; last != "delete 200" {
		t.Fatalf("last call %q; the event of another key got no call", last)
	}
	if v := testutil.ToFloat64(h.ready.Gauge(worker.ReadyAPI)); v != 1 {
		t.Fatalf("revoker_ready{condition=api} = %v after the API answered", v)
	}
}

// TestListThatProvesNothing: a list answer that is not a list is retried
// as its status says; a 404 on the list means the API is not there.
func TestListThatProvesNothing(t *testing.T) {
	for _, tc := range []struct {
		name  string
		list  *cloudflare.Response
		ready bool // api condition afterwards
	}{
		{"503", answer(503, nil, 0), true},
		{"200 success false", answer(200, rejected, 0), true},
		{"HTML 404", &cloudflare.Response{Status: 404, BodyError: "not JSON"}, false},
		// Any other 4xx on the list (SPEC §4, "The proof", point 1),
		// a refused credential's too.
		{"403", answer(403, rejected, 0), false},
		{"401", answer(401, rejected, 0), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil, answer(404, gone, 0))
			h.api.list = tc.list
			d := &fakeDelivery{body: goodEvent}
			h.handle(d)
			if d.settled[0] != "giveback" || len(h.records.outcomes) != 0 {
				t.Fatalf("settled %v, records %+v; want a give-back and no record", d.settled, h.records.outcomes)
			}
			if v := testutil.ToFloat64(h.ready.Gauge(worker.ReadyAPI)); (v == 1) != tc.ready {
				t.Fatalf("revoker_ready{condition=api} = %v", v)
			}
			// Any 401 or 403 puts the credential in doubt too (SPEC §8).
			refused := tc.list.Status == 401 || tc.list.Status == 403
			if v := testutil.ToFloat64(h.ready.Gauge(worker.ReadyCredential)); (v == 0) != refused {
				t.Fatalf("revoker_ready{condition=credential} = %v", v)
			}
			if n := testutil.ToFloat64(h.m.AbsenceChecks.WithLabelValues(metrics.AbsenceFailed)); n == 0 {
				t.Fatal("revoker_absence_checks_total{result=failed} not counted")
			}
		})
	}
}

// TestUnproven404LeavesTheAPIGone: the API is not where it should be
// (a key list answered an HTML 404), so condition api is unmet. Another
// event's DELETE answers 404 with the envelope: that proves nothing of
// the API either (SPEC §4, "The proof", point 1), so the condition stays
// unmet while that event's list is asked for, and after it answers the
// same.
func TestUnproven404LeavesTheAPIGone(t *testing.T) {
	h := newHarness(t, nil, answer(404, gone, 0))
	h.api.list = &cloudflare.Response{Status: 404, BodyError: "not JSON"}
	h.handle(&fakeDelivery{body: goodEvent})
	if v := testutil.ToFloat64(h.ready.Gauge(worker.ReadyAPI)); v != 0 {
		t.Fatalf("revoker_ready{condition=api} = %v after a key list answered an HTML 404", v)
	}
	var during []float64
	h.api.onList = func() { during = append(during, testutil.ToFloat64(h.ready.Gauge(worker.ReadyAPI))) }
	h.handle(&fakeDelivery{body: `{"account_id":"acct1","key_id":"key2"}`, seq: 8})
	if len(during) == 0 {
		t.Fatal("the second event's key list was never asked for")
	}
	for i, v := range during {
		if v != 0 {
			t.Fatalf("list %d of the second event: revoker_ready{condition=api} = %v while it was asked for (all: %v); an unproven 404 said the API answers again", i, v, during)
		}
	}
}

// TestStaleConfirmationNotInherited: an entry kept for another account or
// key at the same sequence (the stream was made again) is not believed:
// the new event gets a real call.
func TestStaleConfirmationNotInherited(t *testing.T) {
	h := newHarness(t, nil, answer(200, revoked, 0))
	h.ledger.entries[7] = worker.Entry{Account: "acct1", Key: "oldkey", Calls: 1,
		Confirmed: &worker.Call{Status: 200, CFRay: "old-ray"}}
	for _, delivered := range []int{1, 2} {
		h.records.outcomes = nil
		h.handle(&fakeDelivery{body: goodEvent, delivered: delivered})
		if o := onlyRecord(t, h); o.CFRay != "ray-200" || o.Attempts != 1 {
			t.Fatalf("delivery %d: record %+v; want this event's own call", delivered, o)
		}
		h.ledger.entries[7] = worker.Entry{Account: "acct1", Key: "oldkey", Calls: 1,
			Confirmed: &worker.Call{Status: 200, CFRay: "old-ray"}}
		h.ledger.journal = nil // the next event is another, stored at another time
	}
	if h.api.calls != 2 {
		t.Fatalf("%d calls, want one per event", h.api.calls)
	}
}

// TestNoStoreNoCall: a call that cannot be stored ahead is not made, and
// the event is never dead-lettered for it.
func TestNoStoreNoCall(t *testing.T) {
	h := newHarness(t, nil, answer(200, revoked, 0))
	h.ledger.failUpdates = 1 << 20
	d := &fakeDelivery{body: goodEvent, delivered: 3}
	h.handle(d)
	if h.api.calls != 0 || d.settled[0] != "giveback" || len(h.records.dlq) != 0 {
		t.Fatalf("calls %d, settled %v, dead letters %d; want no call and a give-back", h.api.calls, d.settled, len(h.records.dlq))
	}
}

// TestCallsCountedAcrossCrashes: calls stored ahead by a delivery that
// died are counted, and those never answered say so.
func TestCallsCountedAcrossCrashes(t *testing.T) {
	h := newHarness(t, nil, answer(404, gone, 0))
	h.ledger.entries[7] = worker.Entry{Account: "acct1", Key: "key1", Calls: 2, Answered: 1}
	h.handle(&fakeDelivery{body: goodEvent, delivered: 2})
	o := onlyRecord(t, h)
	if o.Outcome != event.NotFound || o.Attempts != 3 || o.UnansweredCalls != 1 {
		t.Fatalf("record %+v; want not_found, 3 attempts, 1 unanswered", o)
	}
}

// TestFirstDeliveryFindsEarlierCalls: a first delivery (a consumer made
// again counts from 1) whose ledger shows calls it did not make reads the
// trail before calling, and finds the event revoked.
func TestFirstDeliveryFindsEarlierCalls(t *testing.T) {
	h := newHarness(t, nil, answer(404, gone, 0))
	h.ledger.entries[7] = worker.Entry{Account: "acct1", Key: "key1", Calls: 1}
	h.records.outcomes = []event.Record{{Stream: "REVOCATIONS", Sequence: 7, AccountID: "acct1", KeyID: "key1",
		Outcome: event.Revoked, Status: 200, CFRay: "first-ray", Attempts: 1}}
	d := &fakeDelivery{body: goodEvent, remade: true}
	h.handle(d)
	if h.api.calls != 0 || d.settled[0] != "ack" || len(h.records.outcomes) != 1 {
		t.Fatalf("calls %d, settled %v, records %d; want the earlier revocation to stand", h.api.calls, d.settled, len(h.records.outcomes))
	}
}

// TestRevokedBeatsNotFound: a 404 after another replica's confirmation is
// recorded as that confirmation, whatever the delivery count; and a
// confirmation heard after a not_found was recorded follows it, naming it.
func TestRevokedBeatsNotFound(t *testing.T) {
	t.Run("confirmation in the ledger", func(t *testing.T) {
		h := newHarness(t, nil, answer(404, gone, 0))
		// The other replica's confirmation reaches the ledger while this
		// delivery's call is out.
		h.api.answers = []*cloudflare.Response{answer(404, gone, 0)}
		h.api.onCall = func() {
			h.ledger.mu.Lock()
			e := h.ledger.entries[7]
			e.Account, e.Key = "acct1", "key1"
			e.Calls++
			e.Confirmed = &worker.Call{Status: 200, CFRay: "other-ray"}
			h.ledger.entries[7] = e
			h.ledger.mu.Unlock()
		}
		h.handle(&fakeDelivery{body: goodEvent})
		if o := onlyRecord(t, h); o.Outcome != event.Revoked || o.CFRay != "other-ray" || o.Attempts != 2 {
			t.Fatalf("record %+v; want the other replica's confirmation, 2 attempts", o)
		}
	})
	t.Run("late confirmation supersedes", func(t *testing.T) {
		h := newHarness(t, nil, answer(200, revoked, 0))
		h.records.outcomes = []event.Record{{Stream: "REVOCATIONS", Sequence: 7, AccountID: "acct1", KeyID: "key1",
			Outcome: event.NotFound, Status: 404, Attempts: 1}}
		d := &fakeDelivery{body: goodEvent}
		h.handle(d)
		if len(h.records.outcomes) != 2 {
			t.Fatalf("%d records, want the not_found and its correction", len(h.records.outcomes))
		}
		if o := h.records.outcomes[1]; o.Outcome != event.Revoked || o.Supersedes != 1 || o.CFRay != "ray-200" {
			t.Fatalf("correction %+v; want revoked superseding record 1", o)
		}
		if d.settled[0] != "ack" {
			t.Fatalf("settled %v", d.settled)
		}
	})
}

// TestNoTrailKeepsConfirmation: with outcome records turned off, a
// confirmation is kept in the ledger before the ack.
func TestNoTrailKeepsConfirmation(t *testing.T) {
	h := newHarness(t, nil, answer(200, revoked, 0), answer(404, gone, 0))
	h.records.off = true
	h.handle(&fakeDelivery{body: goodEvent})
	if e := h.ledger.entries[7]; e.Confirmed == nil || e.Confirmed.CFRay != "ray-200" {
		t.Fatalf("ledger %+v; the confirmation must be durable before the ack", e)
	}
	again := &fakeDelivery{body: goodEvent, delivered: 2}
	h.handle(again)
	if h.api.calls != 1 || again.settled[0] != "ack" {
		t.Fatalf("calls %d, settled %v; the redelivery must not call again", h.api.calls, again.settled)
	}
}

// TestLostConfirmationShouted: a confirmation that neither the trail nor
// the ledger takes before the shutdown timeout is counted and logged.
// TestConfirmationReadFromTheLedgerIsNotLost: a redelivery finds the
// event's confirmation in the ledger and cannot write its record before
// shutdown, nor write the ledger again: the confirmation stays where it
// was kept, and is not shouted as lost.
func TestConfirmationReadFromTheLedgerIsNotLost(t *testing.T) {
	h := newHarness(t, nil, answer(200, revoked, 0))
	h.ledger.entries[7] = worker.Entry{Account: "acct1", Key: "key1", Calls: 1, Answered: 1,
		Confirmed: &worker.Call{Status: 200, CFRay: "kept-ray"}}
	h.records.failOutcome = 1 << 30
	stop, cancel := context.WithCancel(context.Background())
	work, cancelWork := context.WithCancel(context.Background())
	h.records.onFail = func() {
		h.ledger.mu.Lock()
		h.ledger.failUpdates = 1 << 30 // it can keep nothing more
		h.ledger.mu.Unlock()
		cancel()
		time.AfterFunc(50*time.Millisecond, cancelWork)
		h.records.onFail = nil
	}
	d := &fakeDelivery{body: goodEvent, maxDeliver: 3, delivered: 2}
	h.w.Handle(stop, work, d)
	if h.api.calls != 0 || d.settled[0] != "giveback" {
		t.Fatalf("calls %d, settled %v; want no call and a give-back", h.api.calls, d.settled)
	}
	if n := testutil.ToFloat64(h.m.ConfirmationsLost); n != 0 {
		t.Fatalf("revoker_confirmations_lost_total = %v, want 0: the confirmation is in the ledger", n)
	}
}

func TestLostConfirmationShouted(t *testing.T) {
	h := newHarness(t, nil, answer(200, revoked, 0))
	h.records.failOutcome = 1 << 30
	stop, cancel := context.WithCancel(context.Background())
	work, cancelWork := context.WithCancel(context.Background())
	h.api.onCall = func() {
		h.ledger.mu.Lock()
		h.ledger.failUpdates = 1 << 30
		h.ledger.mu.Unlock()
		cancel()
		time.AfterFunc(50*time.Millisecond, cancelWork)
	}
	d := &fakeDelivery{body: goodEvent, maxDeliver: 3, delivered: 1}
	h.w.Handle(stop, work, d)
	if d.settled[0] != "giveback" {
		t.Fatalf("settled %v", d.settled)
	}
	if n := testutil.ToFloat64(h.m.ConfirmationsLost); n != 1 {
		t.Fatalf("revoker_confirmations_lost_total = %v, want 1", n)
	}
}

// TestConfirmationKeptWhereNoDeliveryReadsItIsShouted: replica A, cut off,
// hears its DELETE's 200 only after replica B took the event over, got a
// 404 proven absent, recorded not_found and acked it. A's revoked record
// is refused to the end of the shutdown timeout. The ledger keeps the
// confirmation, which only a later delivery reads, and the record itself,
// which the sweep of the trail writes whatever comes (SPEC §4, "The
// proof", point 3): then nothing is lost. Where the ledger cannot keep the
// record and the broker no longer holds the event, no delivery will come
// to record it: the confirmation is shouted and counted lost (point 6),
// not left silently under the not_found; where the broker still holds it
// (B's ack was lost), the next delivery records it.
func TestConfirmationKeptWhereNoDeliveryReadsItIsShouted(t *testing.T) {
	for _, tc := range []struct {
		name             string
		dropped, noSweep bool
		lost             float64
	}{
		{name: "kept for the sweep", dropped: true},
		{name: "not kept for the sweep, event gone", dropped: true, noSweep: true, lost: 1},
		{name: "not kept for the sweep, event held", noSweep: true},
	} {
		h := newHarness(t, nil, answer(200, revoked, 0))
		h.ledger.failUnrecorded = tc.noSweep
		b := h.beside(t, "replica-b", answer(404, gone, 0))
		stop, cancelStop := context.WithCancel(context.Background())
		work, cancelWork := context.WithCancel(context.Background())
		dA := &fakeDelivery{body: goodEvent, delivered: 1, maxDeliver: 10}
		dB := &fakeDelivery{body: goodEvent, delivered: 2, maxDeliver: 10}
		h.api.onCall = func() {
			b.Handle(context.Background(), context.Background(), dB) // B has the event while A's answer is out
			dA.mu.Lock()
			dA.gone = tc.dropped // B's ack reached the broker, or was lost
			dA.mu.Unlock()
			h.records.mu.Lock()
			h.records.failOutcome = 1 << 30 // the trail refuses A to the end; the ledger works
			h.records.mu.Unlock()
			cancelStop()
			time.AfterFunc(300*time.Millisecond, cancelWork) // the shutdown timeout
		}
		h.w.Handle(stop, work, dA)
		cancelWork()
		if len(dB.settled) != 1 || dB.settled[0] != "ack" || h.records.outcomes[0].Outcome != event.NotFound {
			t.Fatalf("%s: B settled %v, records %+v; want not_found recorded and acked", tc.name, dB.settled, h.records.outcomes)
		}
		if e := h.ledger.entry(ref7); e.Confirmed == nil || e.Confirmed.Status != 200 {
			t.Fatalf("%s: ledger %+v; want A's confirmation kept", tc.name, e)
		}
		swept := len(h.ledger.unrecorded) == 1 && h.ledger.unrecorded[0].Outcome == event.Revoked && h.ledger.unrecorded[0].Status == 200
		if swept == tc.noSweep {
			t.Errorf("%s: kept for the sweep %+v", tc.name, h.ledger.unrecorded)
		}
		if n := testutil.ToFloat64(h.m.ConfirmationsLost); n != tc.lost {
			t.Errorf("%s: revoker_confirmations_lost_total = %v, want %v", tc.name, n, tc.lost)
		}
	}
}

// TestConfirmationReachesTheTrailWhenItComesBack: the outcome stream
// refuses the revoked record once (a leader election), and the ledger is
// away for the whole shutdown: the confirmation is retried into the trail
// as well as the ledger, and recorded by whichever takes it first, not
// lost while the trail would take it.
func TestConfirmationReachesTheTrailWhenItComesBack(t *testing.T) {
	h := newHarness(t, nil, answer(200, revoked, 0))
	h.records.failOutcome = 1
	stop, cancel := context.WithCancel(context.Background())
	// The shutdown timeout: what the worker may use, not a synchronisation.
	work, cancelWork := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelWork()
	h.api.onCall = func() {
		h.ledger.mu.Lock()
		h.ledger.failUpdates = 1 << 30
		h.ledger.mu.Unlock()
		cancel()
	}
	d := &fakeDelivery{body: goodEvent, maxDeliver: 3, delivered: 1}
	h.w.Handle(stop, work, d)
	if n := testutil.ToFloat64(h.m.ConfirmationsLost); n != 0 || len(h.records.outcomes) != 1 || h.records.outcomes[0].Outcome != event.Revoked {
		t.Fatalf("%v confirmations lost, records %+v; want the revoked record", n, h.records.outcomes)
	}
	if len(d.settled) != 1 || d.settled[0] != "ack" {
		t.Fatalf("settled %v, want [ack]", d.settled)
	}
}

// fakeReplays says which replay claims are true.
type fakeReplays map[string]string

func (r fakeReplays) Take(_ context.Context, msgID, claimed string, _ []byte, _ uint64, _, _ string) (bool, error) {
	return r[msgID] == claimed, nil
}

// TestReplayClaimVerified: the record's replay_of is set only when the
// replay's mark confirms it.
func TestReplayClaimVerified(t *testing.T) {
	for _, tc := range []struct {
		name    string
		replays fakeReplays
		want    string
	}{
		{"forged", fakeReplays{}, ""},
		{"real", fakeReplays{"ev-1": "INC-1"}, "INC-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil, answer(200, revoked, 0))
			h.w = worker.New(worker.Config{Subjects: []string{"revoke.urgent", "revoke.scheduled"}, RetryInitial: time.Millisecond,
				RetryMaxInterval: time.Millisecond, RetryMaxElapsed: 10 * time.Millisecond},
				worker.Deps{API: h.api, Gate: h.gate, Records: h.records, Ledger: h.ledger, Replays: tc.replays,
					Metrics: h.m, Ready: h.ready, Log: zap.NewNop()})
			h.handle(&fakeDelivery{body: goodEvent, replayOf: "INC-1"})
			if o := onlyRecord(t, h); o.ReplayOf != tc.want {
				t.Fatalf("replay_of %q, want %q", o.ReplayOf, tc.want)
			}
		})
	}
}

// hungReplays is a replays bucket that does not answer: each read ends
// at its own bound (queue's 5 s, scaled down), or when its context ends.
// onFirst runs at the first read.
type hungReplays struct {
	mu      sync.Mutex
	reads   int
	onFirst func()
}

const hungReadBound = 200 * time.Millisecond

func (r *hungReplays) Take(ctx context.Context, _, _ string, _ []byte, _ uint64, _, _ string) (bool, error) {
	r.mu.Lock()
	r.reads++
	first, f := r.reads == 1, r.onFirst
	r.mu.Unlock()
	if first && f != nil {
		f()
	}
	ctx, cancel := context.WithTimeout(ctx, hungReadBound)
	defer cancel()
	<-ctx.Done()
	return false, fmt.Errorf("read revoker_replays: %w", ctx.Err())
}

// TestReplayMarkReadDoesNotHoldTheLedgerBack: a replayed event is
// confirmed; shutdown comes as its record is built; the trail refuses to
// the end, the replays bucket hangs, the ledger works. The mark is read
// once, within its own bound, so the ledger is asked in time and keeps
// the confirmation (SPEC §4, "The proof", point 6: lost only when the
// trail and the ledger both refuse), with shutdown 1.5 read bounds long.
// The claim left out of the record is logged with its cause.
func TestReplayMarkReadDoesNotHoldTheLedgerBack(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	h := newHarnessLog(t, nil, zap.New(core), answer(200, revoked, 0))
	h.records.failOutcome = 1 << 30
	stop, cancelStop := context.WithCancel(context.Background())
	work, cancelWork := context.WithCancel(context.Background())
	defer cancelWork()
	replays := &hungReplays{onFirst: func() {
		cancelStop()
		time.AfterFunc(hungReadBound*3/2, cancelWork)
	}}
	h.w = worker.New(worker.Config{Subjects: []string{"revoke.urgent", "revoke.scheduled"}, RetryInitial: time.Millisecond,
		RetryMaxInterval: 5 * time.Millisecond, RetryMaxElapsed: 50 * time.Millisecond, HandBackDelay: time.Millisecond, Name: "test"},
		worker.Deps{API: h.api, Gate: h.gate, Records: h.records, Ledger: h.ledger, Replays: replays,
			Metrics: h.m, Ready: h.ready, Log: zap.New(core)})
	d := &fakeDelivery{body: goodEvent, replayOf: "INC-1", maxDeliver: 3, delivered: 1}
	h.w.Handle(stop, work, d)
	if n := testutil.ToFloat64(h.m.ConfirmationsLost); n != 0 {
		t.Fatalf("revoker_confirmations_lost_total = %v, want 0: the ledger worked, but was asked only after the mark's reads (%d)", n, replays.reads)
	}
	if e := h.ledger.entry(ref7); e.Confirmed == nil || e.Confirmed.Status != 200 {
		t.Fatalf("ledger %+v; want the confirmation kept", e)
	}
	if logs.FilterMessageSnippet("replays' marks cannot be read").Len() == 0 {
		t.Fatal("the claim left out was not logged")
	}
}

// TestConfirmationBeatsADeadLetter: a last delivery that spent its retries
// looks for a confirmation recorded elsewhere before it dead-letters (here
// another replica's revoked record lands while this one retries): it
// settles as recorded, and writes no dead letter.
func TestConfirmationBeatsADeadLetter(t *testing.T) {
	h := newHarness(t, nil, answer(503, nil, 0))
	h.api.onCall = func() {
		h.records.mu.Lock()
		h.records.outcomes = []event.Record{{Stream: "REVOCATIONS", Sequence: 7, AccountID: "acct1", KeyID: "key1",
			Outcome: event.Revoked, Status: 200, CFRay: "other-ray", Attempts: 1}}
		h.records.mu.Unlock()
		h.api.onCall = nil
	}
	d := &fakeDelivery{body: goodEvent, delivered: 3}
	h.handle(d)
	if o := onlyRecord(t, h); o.Outcome != event.Revoked || o.CFRay != "other-ray" || len(h.records.dlq) != 0 || d.settled[0] != "ack" {
		t.Fatalf("record %+v, dead letters %d, settled %v; want the other replica's revocation and no dead letter", o, len(h.records.dlq), d.settled)
	}
}

// TestJournaledCallsCountedOnce: a delivery's first call is announced in
// the journal, its later calls in the entry, and the two are counted
// together once; a first call whose delivery died is counted, and
// unanswered, on the next delivery.
func TestJournaledCallsCountedOnce(t *testing.T) {
	t.Run("first call journaled, retry in the entry", func(t *testing.T) {
		h := newHarness(t, nil, answer(503, nil, 0), answer(200, revoked, 0))
		h.handle(&fakeDelivery{body: goodEvent})
		if o := onlyRecord(t, h); o.Outcome != event.Revoked || o.Attempts != 2 || o.UnansweredCalls != 0 {
			t.Fatalf("record %+v; want revoked, 2 attempts, none unanswered", o)
		}
		ref := worker.Ref{Seq: 7, Account: "acct1", Key: "key1"}
		if j := h.ledger.journal[journalKey{7, "acct1", "key1"}]; j != 1 {
			t.Fatalf("%d first calls in the journal, want 1", j)
		}
		if e := h.ledger.entry(ref); e.Calls != 2 || e.Journaled != 1 {
			t.Fatalf("ledger %+v; want 2 calls, 1 of them journaled", e)
		}
	})
	t.Run("first call of a delivery that died", func(t *testing.T) {
		h := newHarness(t, nil, answer(200, revoked, 0))
		h.ledger.journal = map[journalKey]int{{7, "acct1", "key1"}: 1}
		h.handle(&fakeDelivery{body: goodEvent, delivered: 2})
		if o := onlyRecord(t, h); o.Outcome != event.Revoked || o.Attempts != 2 || o.UnansweredCalls != 1 {
			t.Fatalf("record %+v; want revoked, 2 attempts, 1 unanswered", o)
		}
	})
}

// announceFailsOnce is a ledger whose first write-ahead fails (its answer
// lost with the connection); onFail runs as it fails.
type announceFailsOnce struct {
	*fakeLedger
	failed bool
	onFail func()
}

func (l *announceFailsOnce) Announce(ctx context.Context, ref worker.Ref) error {
	if !l.failed {
		l.failed = true
		l.onFail()
		return errors.New("journal write timed out")
	}
	return l.fakeLedger.Announce(ctx, ref)
}

// TestRetriedWriteAheadReadsFirst: a first delivery's write-ahead fails,
// and while it backs off, another replica's delivery of the event calls,
// gets 200 and records it. The retry is no longer the first write-ahead of
// anything: it reads the ledger, finds the call it did not know of, then
// the record, and settles from it without a call (SPEC §4, "The proof",
// points 3 and 4).
func TestRetriedWriteAheadReadsFirst(t *testing.T) {
	h := newHarness(t, nil, answer(404, gone, 0))
	l := &announceFailsOnce{fakeLedger: h.ledger}
	l.onFail = func() {
		h.ledger.mu.Lock()
		h.ledger.journal = map[journalKey]int{{7, "acct1", "key1"}: 1}
		h.ledger.mu.Unlock()
		h.records.mu.Lock()
		h.records.outcomes = []event.Record{{Stream: "REVOCATIONS", Sequence: 7, AccountID: "acct1", KeyID: "key1",
			Outcome: event.Revoked, Status: 200, CFRay: "ray-other", Attempts: 1}}
		h.records.mu.Unlock()
	}
	h.w = worker.New(worker.Config{Subjects: []string{"revoke.urgent", "revoke.scheduled"}, RetryInitial: time.Millisecond,
		RetryMaxInterval: 5 * time.Millisecond, RetryMaxElapsed: 50 * time.Millisecond, HandBackDelay: time.Millisecond, Name: "test"},
		worker.Deps{API: h.api, Gate: h.gate, Records: h.records, Ledger: l, Metrics: h.m, Ready: h.ready, Log: zap.NewNop()})
	d := &fakeDelivery{body: goodEvent}
	h.handle(d)
	if h.api.calls != 0 || h.api.lists != 0 {
		t.Fatalf("%d DELETEs and %d key lists after the event was revoked and recorded elsewhere", h.api.calls, h.api.lists)
	}
	if len(d.settled) != 1 || d.settled[0] != "ack" || len(h.records.outcomes) != 1 {
		t.Fatalf("settled %v, records %+v; want acked on the other delivery's record", d.settled, h.records.outcomes)
	}
}

// TestRecordCountsACallMadeBesideIt: a later delivery calls, and while its
// DELETE is out the earlier delivery, back from a cut, stores and makes a
// call of its own. The revoked record counts both calls, and the other's
// answer as unheard, though this delivery is young (SPEC §5a: attempts
// count every call, unanswered_calls every answer nobody heard).
func TestRecordCountsACallMadeBesideIt(t *testing.T) {
	recordWithACallBeside(t, 0)
}

// TestNoCallStartsAfterShutdownDuringTheWriteAhead: SIGTERM comes while
// the call's write-ahead is out: the call is not made (SPEC §7: no new
// call starts for an event not already in one), the ledger no longer
// counts it, and the event is given back.
func TestNoCallStartsAfterShutdownDuringTheWriteAhead(t *testing.T) {
	h := newHarness(t, nil, answer(200, revoked, 0))
	stop, cancel := context.WithCancel(context.Background())
	h.ledger.slowWrite = func(worker.Ref) time.Duration { cancel(); return 20 * time.Millisecond }
	d := &fakeDelivery{body: goodEvent, delivered: 1, maxDeliver: 3, ackWait: 30 * time.Second}
	h.w.Handle(stop, context.Background(), d)
	if e := h.ledger.entry(ref7); h.api.calls != 0 || e.Calls != 0 {
		t.Fatalf("%d calls made after shutdown began, the ledger counts %d; want none and none", h.api.calls, e.Calls)
	}
	if len(d.settled) != 1 || d.settled[0] != "giveback" {
		t.Fatalf("settled %v, want [giveback]", d.settled)
	}
}

// TestKeptConfirmationKeepsItsAnswers: a delivery hears a 503, then a
// 200; the trail refuses the record until shutdown, so the confirmation
// waits in the ledger. The delivery that records it counts both calls
// answered: none unanswered (SPEC §5a).
func TestKeptConfirmationKeepsItsAnswers(t *testing.T) {
	h := newHarness(t, nil, answer(503, nil, 0), answer(200, revoked, 0))
	h.records.failOutcome = 1 << 30
	stop, cancel := context.WithCancel(context.Background())
	work, cancelWork := context.WithCancel(context.Background())
	defer cancelWork()
	calls := 0
	h.api.onCall = func() {
		if calls++; calls == 2 {
			cancel()
			time.AfterFunc(50*time.Millisecond, cancelWork) // the shutdown timeout, not a synchronisation
		}
	}
	a := &fakeDelivery{body: goodEvent, delivered: 1, maxDeliver: 3}
	h.w.Handle(stop, work, a)
	h.records.mu.Lock()
	h.records.failOutcome = 0
	h.records.mu.Unlock()
	h.api.onCall = nil
	b := &fakeDelivery{body: goodEvent, delivered: 2, maxDeliver: 3}
	h.handle(b)
	o := onlyRecord(t, h)
	if h.api.calls != 2 || o.Outcome != event.Revoked || o.Attempts != 2 || o.UnansweredCalls != 0 {
		t.Fatalf("%d calls, record %+v; want revoked after 2 attempts, none unanswered", h.api.calls, o)
	}
}

// TestKeptAnswersAreNotCountedTwice: a later delivery hears its call's 200,
// the trail refuses the record once, and meanwhile the earlier delivery,
// back from a cut, stores a call of its own. The confirmation kept in the
// ledger counts this delivery's answer; read back with the other's call,
// it must not be subtracted twice: the record counts 2 calls, 1 of them
// unanswered (SPEC §5a).
func TestKeptAnswersAreNotCountedTwice(t *testing.T) {
	keptWithACallBeside(t, false)
}

// keptWithACallBeside has a later delivery hear its call's 200 while the
// trail refuses the record once and the earlier delivery stores a call
// beside it, the kept confirmation's answer lost when lostAnswer is set,
// and checks that the record counts both calls, one unanswered.
func keptWithACallBeside(t *testing.T, lostAnswer bool) {
	t.Helper()
	h := newHarness(t, nil, answer(200, revoked, 0))
	h.records.failOutcome = 1
	h.records.onFail = func() {
		h.ledger.mu.Lock()
		defer h.ledger.mu.Unlock()
		h.ledger.callBeside(ref7)
		// The read before the retried record answers after the kept
		// confirmation's write: its latency, not a synchronisation.
		h.ledger.slowLoad = 20 * time.Millisecond
		if lostAnswer {
			h.ledger.lostAnswers = 1 // the confirmation's write, next
		}
	}
	h.handle(&fakeDelivery{body: goodEvent, delivered: 2, ackWait: 30 * time.Second})
	o := onlyRecord(t, h)
	if o.Outcome != event.Revoked || o.Attempts != 2 || o.UnansweredCalls != 1 {
		t.Fatalf("record %+v; want revoked, 2 attempts, 1 unanswered", o)
	}
}

// TestConfirmationKeptWhileTheTrailHangs: SIGTERM comes while the DELETE
// is out; its 200 arrives as the outcome stream refuses the record, and
// from then on every outcome write hangs until the shutdown timeout. The
// ledger refuses its first write and then answers: the confirmation goes
// there, not held back behind the trail's hanging try (SPEC §4, "The
// proof", point 6).
func TestConfirmationKeptWhileTheTrailHangs(t *testing.T) {
	h := newHarness(t, nil, answer(200, revoked, 0))
	h.records.failOutcome = 1 << 30
	h.records.onFail = func() { h.records.slow = time.Hour } // until the write's context ends
	stop, work := shutdownAtTheCall(t, h, 300*time.Millisecond, func(l *fakeLedger) { l.failUpdates = 1 })
	d := &fakeDelivery{body: goodEvent, delivered: 1, maxDeliver: 3}
	h.w.Handle(stop, work, d)
	if e := h.ledger.entry(ref7); e.Confirmed == nil || testutil.ToFloat64(h.m.ConfirmationsLost) != 0 {
		t.Fatalf("ledger %+v, %v confirmations lost; want the confirmation kept", e, testutil.ToFloat64(h.m.ConfirmationsLost))
	}
}

// TestConfirmationRecordedWhileTheLedgerHangs: the mirror of
// TestConfirmationKeptWhileTheTrailHangs. The outcome stream refuses the
// quick write and two tries more, then is back; the ledger hangs until
// the shutdown timeout. The confirmation is recorded in the trail:
// neither store hanging keeps it from the other (SPEC §4, "The proof",
// point 6).
func TestConfirmationRecordedWhileTheLedgerHangs(t *testing.T) {
	h := newHarness(t, nil, answer(200, revoked, 0))
	h.records.failOutcome = 3
	stop, work := shutdownAtTheCall(t, h, time.Second, func(l *fakeLedger) { l.hang = true })
	d := &fakeDelivery{body: goodEvent, delivered: 1, maxDeliver: 3, ackWait: 30 * time.Second}
	h.w.Handle(stop, work, d)
	if n := testutil.ToFloat64(h.m.ConfirmationsLost); n != 0 || len(h.records.outcomes) != 1 || len(d.settled) != 1 || d.settled[0] != "ack" {
		t.Fatalf("%v confirmations lost, records %+v, settled %v; want the revoked record, acked", n, h.records.outcomes, d.settled)
	}
}

// TestKeptAnswersCountedOnceWhenTheLedgerAnswerIsLost: as
// TestKeptAnswersAreNotCountedTwice, but the ledger stores the kept
// confirmation and its answer is lost: the entry read back holds this
// delivery's answers all the same, and they are not subtracted twice.
func TestKeptAnswersCountedOnceWhenTheLedgerAnswerIsLost(t *testing.T) {
	keptWithACallBeside(t, true)
}

// TestLedgerReadDoesNotHoldTheRecord: a later delivery's revoked record
// reads the ledger first, to count calls made beside it; with the ledger
// hanging, reads and writes alike, that read gives up after a second, and
// the record is written well within the shutdown timeout.
func TestLedgerReadDoesNotHoldTheRecord(t *testing.T) {
	h := newHarness(t, nil, answer(200, revoked, 0))
	h.records.failOutcome = 1
	stop, work := shutdownAtTheCall(t, h, 4*time.Second, func(l *fakeLedger) { l.hang = true })
	d := &fakeDelivery{body: goodEvent, delivered: 2, maxDeliver: 3, ackWait: 30 * time.Second}
	h.w.Handle(stop, work, d)
	if n := testutil.ToFloat64(h.m.ConfirmationsLost); n != 0 || len(h.records.outcomes) != 1 || len(d.settled) != 1 || d.settled[0] != "ack" {
		t.Fatalf("%v confirmations lost, records %+v, settled %v; want the revoked record, acked", n, h.records.outcomes, d.settled)
	}
}

// shutdownAtTheCall makes SIGTERM come as the API call is made (stop
// ends), with the shutdown timeout (work) ending after timeout; change, if
// any, then changes the ledger.
func shutdownAtTheCall(t *testing.T, h *harness, timeout time.Duration, change func(*fakeLedger)) (stop, work context.Context) {
	stop, cancel := context.WithCancel(context.Background())
	work, cancelWork := context.WithCancel(context.Background())
	t.Cleanup(cancelWork)
	h.api.onCall = func() {
		if change != nil {
			h.ledger.mu.Lock()
			change(h.ledger)
			h.ledger.mu.Unlock()
		}
		cancel()
		time.AfterFunc(timeout, cancelWork) // the shutdown timeout, not a synchronisation
	}
	return stop, work
}

// TestSlowLedgerReadStillCounted: as TestRecordCountsACallMadeBesideIt,
// with the ledger busy: its read before the revoked record takes a second
// and a half. Outside shutdown the read is waited for, and the record
// counts the call made beside it.
func TestSlowLedgerReadStillCounted(t *testing.T) {
	recordWithACallBeside(t, 1500*time.Millisecond)
}

// recordWithACallBeside has a later delivery call while the earlier one
// stores a call of its own, with reads of the ledger taking read from
// then on, and checks that the revoked record counts both calls, the
// other's unanswered.
func recordWithACallBeside(t *testing.T, read time.Duration) {
	t.Helper()
	h := newHarness(t, nil, answer(200, revoked, 0))
	h.api.onCall = func() {
		h.ledger.mu.Lock()
		defer h.ledger.mu.Unlock()
		h.ledger.callBeside(ref7)
		h.ledger.slowLoad = read
		h.api.onCall = nil
	}
	h.handle(&fakeDelivery{body: goodEvent, delivered: 2, ackWait: 30 * time.Second})
	o := onlyRecord(t, h)
	if o.Outcome != event.Revoked || o.Attempts != 2 || o.UnansweredCalls != 1 {
		t.Fatalf("record %+v; want revoked, 2 attempts, 1 unanswered", o)
	}
}

// confirmBeside keeps the confirmation of the last call another delivery
// made for ref's event, its 200 heard, as keepConfirmation leaves it; l.mu
// is held.
func (l *fakeLedger) confirmBeside(ref worker.Ref, ray string) {
	e := l.entry(ref)
	e.Confirmed, e.Answered = &worker.Call{Status: 200, CFRay: ray}, e.Answered+1
	l.entries[ref.Seq] = e
}

// callBeside stores a call another delivery made for ref's event, as its
// write-ahead does; l.mu is held.
func (l *fakeLedger) callBeside(ref worker.Ref) {
	e := l.entry(ref)
	e.Account, e.Key = ref.Account, ref.Key
	e.Calls++
	l.entries[ref.Seq] = e
}

// TestFirstDeliveryHeldLongReadsFirst: a first delivery held for half its
// ack wait or more before its first call (here by a pause of every call)
// may meanwhile have been handed to another replica, which finished the
// event: it reads what that replica left — a confirmation in the ledger,
// a record in the trail — and settles as it did, without a call of its
// own and with no call left counted. Held briefly, it calls without
// reading.
func TestFirstDeliveryHeldLongReadsFirst(t *testing.T) {
	const held = 200 * time.Millisecond
	other := event.Record{Stream: "REVOCATIONS", Sequence: 7, AccountID: "acct1", KeyID: "key1",
		Outcome: event.Revoked, Status: 200, CFRay: "other-ray", Attempts: 1}
	for _, tc := range []struct {
		name      string
		ackWait   time.Duration
		confirmed bool // the other replica's confirmation is in the ledger too
		calls     int
	}{
		{"held past half the ack wait, confirmed in the ledger", held / 5, true, 0},
		{"held past half the ack wait, recorded in the trail", held / 5, false, 0},
		{"held briefly", 30 * time.Second, true, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil, answer(404, gone, 0))
			e := worker.Entry{Account: "acct1", Key: "key1", Calls: 1, Answered: 1}
			if tc.confirmed {
				e.Confirmed = &worker.Call{Status: 200, CFRay: "other-ray"}
			}
			h.ledger.entries[7] = e
			h.records.outcomes = []event.Record{other}
			h.gate.Pause(held)
			d := &fakeDelivery{body: goodEvent, delivered: 1, ackWait: tc.ackWait}
			h.handle(d)
			if h.api.calls != tc.calls || d.settled[0] != "ack" {
				t.Fatalf("calls %d, settled %v; want %d calls and an ack", h.api.calls, d.settled, tc.calls)
			}
			if n := h.ledger.entry(ref7).Calls; n != 1+tc.calls {
				t.Fatalf("the ledger counts %d calls, want %d", n, 1+tc.calls)
			}
			for _, o := range h.records.outcomes {
				if o.Outcome != event.Revoked || o.CFRay != "other-ray" {
					t.Fatalf("records %+v; want only the other replica's revocation", h.records.outcomes)
				}
			}
		})
	}
}

// TestRecordTakesInWhatWasStoredWhileItWasRefused: a redelivery proves a
// key absent; while the trail refuses its not_found record, another
// delivery stores a call of its own, and in the second case keeps the
// call's confirmation in the ledger and gives the event back. The record
// written once the trail is back counts that call, unanswered as far as
// it knows (SPEC §5a: attempts count every call made for the event); and
// where the call was confirmed, it is that revocation (SPEC §4, "The
// proof", point 3: revoked beats everything).
func TestRecordTakesInWhatWasStoredWhileItWasRefused(t *testing.T) {
	for _, tc := range []struct {
		confirmed  bool
		outcome    event.Outcome
		ray        string
		unanswered int
	}{
		{false, event.NotFound, "ray-404", 1},
		{true, event.Revoked, "kept-ray", 0},
	} {
		h := newHarness(t, nil, answer(404, gone, 0))
		h.records.failOutcome = 1
		h.records.onFail = func() {
			h.ledger.mu.Lock()
			defer h.ledger.mu.Unlock()
			h.ledger.callBeside(ref7)
			if tc.confirmed {
				h.ledger.confirmBeside(ref7, "kept-ray")
			}
		}
		d := &fakeDelivery{body: goodEvent, delivered: 2}
		h.handle(d)
		o := onlyRecord(t, h)
		if o.Outcome != tc.outcome || o.CFRay != tc.ray || o.Attempts != 2 || o.UnansweredCalls != tc.unanswered || d.settled[0] != "ack" {
			t.Fatalf("confirmed beside %v: record %+v, settled %v; want %s, %s, 2 attempts, %d unanswered, an ack",
				tc.confirmed, o, d.settled, tc.outcome, tc.ray, tc.unanswered)
		}
	}
}

// TestNoRetryAfterTheEventIsRecorded: another delivery records the event
// while this one waits to retry a failed call, or while the retry is
// being stored ahead: the retry is not made (a record cannot count a call
// made after it), nor left counted, and the delivery settles as that
// record did.
func TestNoRetryAfterTheEventIsRecorded(t *testing.T) {
	for _, duringWriteAhead := range []bool{false, true} {
		h := newHarness(t, nil, answer(503, nil, 0), answer(404, gone, 0))
		record := func() {
			h.records.mu.Lock()
			defer h.records.mu.Unlock()
			h.records.outcomes = append(h.records.outcomes, event.Record{Stream: "REVOCATIONS", Sequence: 7,
				AccountID: "acct1", KeyID: "key1", Outcome: event.NotFound, Status: 404, CFRay: "other-ray", Attempts: 2})
			h.ledger.onUpdate = nil
		}
		h.api.onCall = func() {
			if duringWriteAhead {
				h.ledger.onUpdate = record
			} else {
				record()
			}
			h.api.onCall = nil
		}
		d := &fakeDelivery{body: goodEvent, delivered: 2}
		h.handle(d)
		if h.api.calls != 1 || d.settled[0] != "ack" || len(h.records.outcomes) != 1 {
			t.Fatalf("recorded during the write-ahead %v: calls %d, settled %v, records %+v; want one call, an ack, the other's record alone",
				duringWriteAhead, h.api.calls, d.settled, h.records.outcomes)
		}
		if n := h.ledger.entry(ref7).Calls; n != 1 {
			t.Fatalf("recorded during the write-ahead %v: the ledger counts %d calls, want the one made", duringWriteAhead, n)
		}
	}
}

// TestSlowRecordReadDoesNotSpinOnSlots: a retry reads the event's record
// before its call, and the read takes longer than a rate slot may wait, so
// the slot goes by: the call takes the next slot without reading again,
// and is made.
func TestSlowRecordReadDoesNotSpinOnSlots(t *testing.T) {
	h := newHarnessGate(t, throttle.Config{Priorities: 2, Concurrency: 8, Rate: 20}, func(c *worker.Config) {
		c.RetryMaxElapsed = 5 * time.Second
	}, zap.NewNop(), answer(503, nil, 0), answer(200, revoked, 0))
	h.records.slowPrior = 4 * throttle.StartTolerance
	d := &fakeDelivery{body: goodEvent, delivered: 2}
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.handle(d)
	}()
	waitUntil(t, "the retry made", func() bool {
		h.api.mu.Lock()
		defer h.api.mu.Unlock()
		return h.api.calls == 2
	})
	<-done
	if o := onlyRecord(t, h); o.Outcome != event.Revoked || o.Attempts != 2 {
		t.Fatalf("record %+v; want revoked after 2 calls", o)
	}
}

// TestConfirmationFoundTakingACallBack: while a retry is stored ahead,
// another delivery records not_found, and a third keeps its call's
// confirmation in the ledger: the retry is not made, and the confirmation
// found as it takes the call back is recorded, after the not_found it
// corrects (SPEC §4, "The proof", point 3), not buried under it.
func TestConfirmationFoundTakingACallBack(t *testing.T) {
	h := newHarness(t, nil, answer(503, nil, 0), answer(404, gone, 0))
	h.api.onCall = func() {
		h.ledger.onUpdate = func() {
			h.ledger.onUpdate = nil
			h.records.mu.Lock()
			h.records.outcomes = append(h.records.outcomes, event.Record{Stream: "REVOCATIONS", Sequence: 7,
				AccountID: "acct1", KeyID: "key1", Outcome: event.NotFound, Status: 404, CFRay: "other-ray", Attempts: 2})
			h.records.mu.Unlock()
			h.ledger.mu.Lock()
			defer h.ledger.mu.Unlock()
			h.ledger.callBeside(ref7)
			h.ledger.confirmBeside(ref7, "kept-ray")
		}
		h.api.onCall = nil
	}
	d := &fakeDelivery{body: goodEvent, delivered: 2}
	h.handle(d)
	if h.api.calls != 1 || d.settled[0] != "ack" {
		t.Fatalf("calls %d, settled %v; want the one call and an ack", h.api.calls, d.settled)
	}
	if n := len(h.records.outcomes); n != 2 || h.records.outcomes[1].Outcome != event.Revoked ||
		h.records.outcomes[1].CFRay != "kept-ray" || h.records.outcomes[1].Supersedes != 1 {
		t.Fatalf("records %+v; want the not_found, then the kept revocation superseding it", h.records.outcomes)
	}
}

// firstRecords is the fake trail able to store a key's first record with
// its answer handled on another goroutine (worker.FirstRecords), as the
// queue does where the stream's answers are read; refuse makes it tell an
// error instead, storing nothing.
type firstRecords struct {
	*fakeRecords
	refuse bool
	firsts int
	// held, when set, takes then instead of answering: no answer comes
	// until the test calls it.
	held chan func(error)
}

func (r *firstRecords) FirstOutcome(rec event.Record, then func(error)) bool {
	if r.held != nil {
		r.held <- then
		return true
	}
	r.mu.Lock()
	r.firsts++
	_, _, found := r.believed(worker.Ref{Stream: rec.Stream, Seq: rec.Sequence, Account: rec.AccountID, Key: rec.KeyID})
	var err error
	switch {
	case r.refuse:
		err = errors.New("no answer in time")
	case found:
		err = errors.New("wrong last sequence")
	default:
		r.outcomes = append(r.outcomes, rec)
	}
	r.mu.Unlock()
	go then(err)
	return true
}

// TestFirstRecordSettledWhereAnswersAreRead: a first delivery's revoked
// record goes the first record's way, and the event is acked, counted and
// logged once where the answer is handled; told an error (no answer in
// time), the record is written the way that reads what is there, once,
// and the event acked once all the same.
func TestFirstRecordSettledWhereAnswersAreRead(t *testing.T) {
	for _, refuse := range []bool{false, true} {
		core, logs := observer.New(zapcore.InfoLevel)
		h := newHarnessLog(t, nil, zap.New(core), answer(200, revoked, 0))
		fr := &firstRecords{fakeRecords: h.records, refuse: refuse}
		h.w = worker.New(worker.Config{
			Subjects: []string{"revoke.urgent", "revoke.scheduled"}, RetryInitial: time.Millisecond,
			RetryMaxInterval: 5 * time.Millisecond, RetryMaxElapsed: 50 * time.Millisecond, HandBackDelay: time.Millisecond, Name: "test",
		}, worker.Deps{API: h.api, Gate: h.gate, Records: fr, Ledger: h.ledger, Metrics: h.m, Ready: h.ready, Log: zap.New(core)})
		d := &fakeDelivery{body: goodEvent, delivered: 1, maxDeliver: 3}
		h.w.Handle(context.Background(), context.Background(), d)
		if fr.firsts != 1 {
			t.Fatalf("refuse=%v: %d first-record writes, want 1", refuse, fr.firsts)
		}
		if len(d.settled) != 1 || d.settled[0] != "ack" {
			t.Errorf("refuse=%v: settled %v, want one ack", refuse, d.settled)
		}
		if n := len(h.records.outcomes); n != 1 || h.records.outcomes[0].Outcome != event.Revoked {
			t.Errorf("refuse=%v: records %+v, want one revoked", refuse, h.records.outcomes)
		}
		if n := logs.FilterMessage("event revoked").Len(); n != 1 {
			t.Errorf("refuse=%v: %d outcome lines, want 1", refuse, n)
		}
	}
}

// TestFirstRecordGivesUpAtTheShutdownTimeout: a first record whose answer
// has not come when the shutdown timeout ends holds the delivery no
// longer (SPEC §7), and an answer coming after settles nothing: the
// event's next delivery finds the record, if it was stored.
func TestFirstRecordGivesUpAtTheShutdownTimeout(t *testing.T) {
	h := newHarness(t, nil, answer(200, revoked, 0))
	fr := &firstRecords{fakeRecords: h.records, held: make(chan func(error), 1)}
	h.w = worker.New(worker.Config{
		Subjects: []string{"revoke.urgent", "revoke.scheduled"}, RetryInitial: time.Millisecond,
		RetryMaxInterval: 5 * time.Millisecond, RetryMaxElapsed: 50 * time.Millisecond, HandBackDelay: time.Millisecond, Name: "test",
	}, worker.Deps{API: h.api, Gate: h.gate, Records: fr, Ledger: h.ledger, Metrics: h.m, Ready: h.ready, Log: zap.NewNop()})
	// Shutdown and the end of its timeout at once: stop, a child of work,
	// is done only once work is. (Were work still going when stop came,
	// the record written the other way, then acked, would be right.)
	work, cancelWork := context.WithCancel(context.Background())
	stop, cancelStop := context.WithCancel(work)
	defer cancelStop()
	d := &fakeDelivery{body: goodEvent, delivered: 1, maxDeliver: 3}
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.w.Handle(stop, work, d)
	}()
	then := <-fr.held // the record is out; its answer has not come
	cancelWork()      // shutdown, and its timeout ends
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the delivery still waits for its record's answer after the shutdown timeout")
	}
	then(nil) // the answer, too late
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, how := range d.settled {
		if how == "ack" {
			t.Errorf("settled %v: acked by an answer that came after the delivery gave up", d.settled)
		}
	}
}

// TestShutdownFirstRecordHangingKeepsItInTheLedger: SIGTERM comes while a
// first delivery's DELETE is out; its 200 arrives, and the revoked record
// goes the first record's way (FirstRecords, as queue.Records does). The
// outcome stream does not answer until the shutdown timeout ends; the
// ledger answers the whole time. A confirmation is lost only when the
// outcome stream and its fallback both refuse through the whole shutdown
// timeout (SPEC §4, "The proof", point 6): here the ledger must keep it.
func TestShutdownFirstRecordHangingKeepsItInTheLedger(t *testing.T) {
	h := newHarness(t, nil, answer(200, revoked, 0))
	fr := &firstRecords{fakeRecords: h.records, held: make(chan func(error), 1)}
	h.records.failOutcome = 1 << 30 // the trail refuses every other write too
	h.w = worker.New(worker.Config{
		Subjects: []string{"revoke.urgent", "revoke.scheduled"}, RetryInitial: time.Millisecond,
		RetryMaxInterval: 5 * time.Millisecond, RetryMaxElapsed: 50 * time.Millisecond, HandBackDelay: time.Millisecond, Name: "test",
	}, worker.Deps{API: h.api, Gate: h.gate, Records: fr, Ledger: h.ledger, Metrics: h.m, Ready: h.ready, Log: zap.NewNop()})
	stop, work := shutdownAtTheCall(t, h, 500*time.Millisecond, nil)
	d := &fakeDelivery{body: goodEvent, delivered: 1, maxDeliver: 3, ackWait: 30 * time.Second}
	h.w.Handle(stop, work, d)
	wantKeptInTheLedger(t, h, d)
}

// TestShutdownTrailHangingKeepsItInTheLedger: as above on a redelivery
// (no first-record path): every outcome write hangs until its context
// ends (queue.Records bounds one by 10 s, more than a shutdown timeout
// may be), while the ledger answers.
func TestShutdownTrailHangingKeepsItInTheLedger(t *testing.T) {
	h := newHarness(t, nil, answer(200, revoked, 0))
	h.records.slow = time.Hour // until the write's context ends
	stop, work := shutdownAtTheCall(t, h, 500*time.Millisecond, nil)
	d := &fakeDelivery{body: goodEvent, delivered: 2, maxDeliver: 3, ackWait: 30 * time.Second}
	h.w.Handle(stop, work, d)
	wantKeptInTheLedger(t, h, d)
}

// slowFirst is FirstRecords whose stream never answers: then is told
// "no answer in time" after timeout, as queue.Records' sweep does after
// Records.Timeout (10 s in serve).
type slowFirst struct {
	*fakeRecords
	timeout time.Duration
}

func (r *slowFirst) FirstOutcome(_ event.Record, then func(error)) bool {
	time.AfterFunc(r.timeout, func() { then(errors.New("the outcome stream did not answer in time")) })
	return true
}

// TestShutdownLedgerAskedBeforeTheTrailsTimeouts: the default timings
// scaled by 1/40 (Records.Timeout 10 s -> 250 ms, REVOKER_SHUTDOWN_TIMEOUT
// 25 s -> 625 ms). SIGTERM comes as the DELETE is out; its 200 arrives;
// the outcome stream answers nothing for the whole shutdown timeout. The
// ledger answers for the first 450 ms (18 s of 25) and then goes away:
// it must be asked while it answers, not after the first record's and
// the next write's timeouts.
func TestShutdownLedgerAskedBeforeTheTrailsTimeouts(t *testing.T) {
	h := newHarness(t, nil, answer(200, revoked, 0))
	h.records.slow = 250 * time.Millisecond // each outcome write: no answer within Records.Timeout
	h.records.failOutcome = 1 << 30
	fr := &slowFirst{fakeRecords: h.records, timeout: 250 * time.Millisecond}
	h.w = worker.New(worker.Config{
		Subjects: []string{"revoke.urgent", "revoke.scheduled"}, RetryInitial: time.Millisecond,
		RetryMaxInterval: 5 * time.Millisecond, RetryMaxElapsed: 50 * time.Millisecond, HandBackDelay: time.Millisecond, Name: "test",
	}, worker.Deps{API: h.api, Gate: h.gate, Records: fr, Ledger: h.ledger, Metrics: h.m, Ready: h.ready, Log: zap.NewNop()})
	stop, work := shutdownAtTheCall(t, h, 625*time.Millisecond, func(l *fakeLedger) {
		time.AfterFunc(450*time.Millisecond, func() { // the ledger goes away 18 s into the 25 s
			l.mu.Lock()
			l.silent = true
			l.mu.Unlock()
		})
	})
	d := &fakeDelivery{body: goodEvent, delivered: 1, maxDeliver: 3, ackWait: 30 * time.Second}
	h.w.Handle(stop, work, d)
	wantKeptInTheLedger(t, h, d)
}

// wantKeptInTheLedger fails t unless the ledger keeps event 7's
// confirmation and none was counted lost.
func wantKeptInTheLedger(t *testing.T, h *harness, d *fakeDelivery) {
	t.Helper()
	h.ledger.mu.Lock()
	e := h.ledger.entry(ref7)
	h.ledger.mu.Unlock()
	if lost := testutil.ToFloat64(h.m.ConfirmationsLost); e.Confirmed == nil || lost != 0 {
		t.Fatalf("ledger entry %+v, revoker_confirmations_lost_total = %v, settled %v; want the confirmation kept in the ledger, which answered, and none lost",
			e, lost, d.settled)
	}
}

// TestUnreachableAPIIsNotReady: a call that gets no answer at all (the
// connection refused) turns the worker not-ready, condition api (SPEC §6:
// an unreachable API, not-ready), and the next answer makes it ready.
func TestUnreachableAPIIsNotReady(t *testing.T) {
	h := newHarness(t, nil, nil, answer(200, revoked, 0))
	h.api.onCall = func() {
		if h.api.calls == 2 { // the retry, once the first went unanswered
			if v := testutil.ToFloat64(h.ready.Gauge(worker.ReadyAPI)); v != 0 {
				t.Errorf("revoker_ready{condition=api} = %v after a call got no answer", v)
			}
		}
	}
	d := &fakeDelivery{body: goodEvent}
	h.handle(d)
	if o := onlyRecord(t, h); o.Outcome != event.Revoked || o.Attempts != 2 {
		t.Fatalf("record %+v; want revoked on the second call", o)
	}
	if v := testutil.ToFloat64(h.ready.Gauge(worker.ReadyAPI)); v != 1 {
		t.Fatalf("revoker_ready{condition=api} = %v after the API answered", v)
	}
}
