package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/metrics"
	"github.com/revoker/revoker/worker"
)

// TestCarriedConfirmationKeepsItsAnswer: a confirmation carried over from
// a closed connection and stored in the ledger (the trail still refusing)
// is read by the next delivery, whose revoked record must not count the
// confirming call, whose 200 was heard, as unanswered (SPEC §5a).
func TestCarriedConfirmationKeepsItsAnswer(t *testing.T) {
	h := newHarness(t, nil, answer(200, revoked, 0))
	carry := &worker.Carryover{}
	reg := prometheus.NewRegistry()
	subjects := []string{"revoke.urgent", "revoke.scheduled"}
	m := metrics.New(reg, metrics.Labels{Subjects: subjects, Outcomes: event.Names(event.Outcomes), Reasons: event.Names(event.Reasons)}, metrics.Build{})
	w := worker.New(worker.Config{
		Subjects: subjects, RetryInitial: time.Millisecond, RetryMaxInterval: 5 * time.Millisecond,
		RetryMaxElapsed: 50 * time.Millisecond, HandBackDelay: time.Millisecond, Name: "test",
	}, worker.Deps{API: h.api, Gate: h.gate, Records: h.records, Ledger: h.ledger,
		Metrics: m, Ready: metrics.NewReadiness(reg), Log: zap.NewNop(), Carryover: carry})

	h.records.failOutcome = 1 << 30
	stop, cancel := context.WithCancel(context.Background())
	work, cancelWork := context.WithCancel(context.Background())
	h.api.onCall = func() {
		h.ledger.mu.Lock()
		h.ledger.failUpdates = 1 << 30 // the connection ends: neither store takes it
		h.ledger.mu.Unlock()
		cancel()
		time.AfterFunc(50*time.Millisecond, cancelWork) // the shutdown timeout
	}
	d1 := &fakeDelivery{body: goodEvent, maxDeliver: 3, delivered: 1}
	w.Handle(stop, work, d1)
	if d1.settled[0] != "giveback" {
		t.Fatalf("settled %v", d1.settled)
	}
	// The next connection: the ledger takes it, the trail still refuses.
	h.ledger.mu.Lock()
	h.ledger.failUpdates = 0
	h.ledger.mu.Unlock()
	h.records.mu.Lock()
	h.records.failOutcome = 1
	h.records.mu.Unlock()
	ctx, c := context.WithTimeout(context.Background(), 5*time.Second)
	defer c()
	if err := carry.Store(ctx, w); err != nil {
		t.Fatalf("Store: %v", err)
	}
	// The event's next delivery records it from the ledger.
	d2 := &fakeDelivery{body: goodEvent, maxDeliver: 3, delivered: 2}
	w.Handle(context.Background(), context.Background(), d2)
	rec := onlyRecord(t, h)
	if h.api.calls != 1 || rec.Outcome != event.Revoked || rec.CFRay != "ray-200" || rec.Attempts != 1 {
		t.Fatalf("calls %d, record %+v", h.api.calls, rec)
	}
	if rec.UnansweredCalls != 0 {
		t.Errorf("unanswered_calls = %d, want 0: the one call's 200 was heard (the carried record says %d)",
			rec.UnansweredCalls, h.ledger.unrecorded[0].UnansweredCalls)
	}
}
