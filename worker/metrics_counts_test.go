package worker_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/metrics"
	"github.com/revoker/revoker/queue/queuetest"
	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/worker"
)

// gatedAPI answers each key's DELETE with its status once the test lets
// that key's call go, and lists the account without any key.
type gatedAPI struct {
	mu      sync.Mutex
	status  map[string]int
	entered map[string]chan struct{}
	release map[string]chan struct{}
	lists   int
}

func newGatedAPI(status map[string]int) *gatedAPI {
	a := &gatedAPI{status: status, entered: map[string]chan struct{}{}, release: map[string]chan struct{}{}}
	for k := range status {
		a.entered[k], a.release[k] = make(chan struct{}), make(chan struct{})
	}
	return a
}

func (a *gatedAPI) DeleteSigningKey(_ context.Context, _, key string) (*cloudflare.Response, error) {
	close(a.entered[key])
	<-a.release[key]
	s := a.status[key]
	env := revoked
	if s == 404 {
		env = gone
	}
	return answer(s, env, 0), nil
}

func (a *gatedAPI) ListSigningKeys(context.Context, string) (*cloudflare.KeyList, error) {
	a.mu.Lock()
	a.lists++
	a.mu.Unlock()
	return cloudflare.NewKeyList(answer(200, revoked, 0)), nil
}

// TestAbsenceChecksCountListsFetched (SPEC §8):
// revoker_absence_checks_total counts "key lists fetched to prove a 404".
// Two 404s of one account that share one key list (SPEC §4, "The proof",
// point 1: "One list may serve every 404 of that account that arrived
// before it was fetched") are one list fetched.
func TestAbsenceChecksCountListsFetched(t *testing.T) {
	api := newGatedAPI(map[string]int{"keyA": 404, "keyB": 404, "keyC": 200})
	gate := throttle.New(throttle.Config{Priorities: 2, Concurrency: 1})
	t.Cleanup(gate.Close)
	reg := prometheus.NewRegistry()
	subjects := []string{"revoke.urgent", "revoke.scheduled"}
	m := metrics.New(reg, metrics.Labels{Subjects: subjects, Outcomes: event.Names(event.Outcomes), Reasons: event.Names(event.Reasons)}, metrics.Build{})
	records := &fakeRecords{}
	w := worker.New(worker.Config{
		Subjects: subjects, RetryInitial: time.Millisecond, RetryMaxInterval: 5 * time.Millisecond,
		RetryMaxElapsed: time.Minute, HandBackDelay: time.Millisecond, Name: "test",
	}, worker.Deps{API: api, Gate: gate, Records: records, Ledger: &fakeLedger{entries: map[uint64]worker.Entry{}},
		Metrics: m, Ready: metrics.NewReadiness(reg), Log: zap.NewNop()})

	var wg sync.WaitGroup
	run := func(key string, seq uint64) {
		d := &fakeDelivery{id: "ev-" + key, seq: seq, body: `{"account_id":"acct1","key_id":"` + key + `"}`, delivered: 1, maxDeliver: 3}
		wg.Go(func() { w.Handle(context.Background(), context.Background(), d) })
	}
	queued := func(n int) func() bool { return func() bool { return gate.Queued(1) == n } }
	run("keyA", 7)
	<-api.entered["keyA"] // A's DELETE holds the only call slot
	run("keyB", 8)
	queuetest.Eventually(t, 10*time.Second, "B waiting for the slot", queued(1))
	run("keyC", 9)
	queuetest.Eventually(t, 10*time.Second, "B and C waiting for the slot", queued(2))
	close(api.release["keyA"]) // A: 404; B takes the slot; A's key list waits behind C
	<-api.entered["keyB"]
	queuetest.Eventually(t, 10*time.Second, "C and A's key list waiting for the slot", queued(2))
	close(api.release["keyB"]) // B: 404 before A's list went out: it shares A's list; C takes the slot
	<-api.entered["keyC"]
	queuetest.Eventually(t, 10*time.Second, "B's 404 counted", func() bool {
		return testutil.ToFloat64(m.APIRequests.WithLabelValues("404")) == 2
	})
	close(api.release["keyC"])
	wg.Wait()

	api.mu.Lock()
	lists := api.lists
	api.mu.Unlock()
	checks := testutil.ToFloat64(m.AbsenceChecks.WithLabelValues(metrics.AbsenceAbsent))
	if float64(lists) != checks {
		t.Errorf("%d key list(s) fetched, revoker_absence_checks_total{result=\"absent\"} = %v", lists, checks)
	}
}

// TestRateLimitWaitCoversKeyLists (SPEC §8): revoker_rate_limit_wait_seconds
// is "how long calls waited for a rate token"; a key list proving a 404
// is a call that takes a rate token and is charged to the budget
// (revoker_budget_calls_total counts it), so its wait is observed too:
// one observation per call charged.
func TestRateLimitWaitCoversKeyLists(t *testing.T) {
	h := newHarness(t, nil, answer(404, gone, 0))
	h.handle(&fakeDelivery{body: goodEvent})
	var dm dto.Metric
	if err := h.m.RateLimitWait.(prometheus.Metric).Write(&dm); err != nil {
		t.Fatal(err)
	}
	waits := dm.GetHistogram().GetSampleCount()
	calls := testutil.ToFloat64(h.m.BudgetCalls.WithLabelValues(metrics.DefaultBudget))
	if float64(waits) != calls {
		t.Errorf("revoker_budget_calls_total %v (%d delete, %d key list), revoker_rate_limit_wait_seconds_count %d",
			calls, h.api.callCount(), h.api.lists, waits)
	}
}

// TestRateLimitWaitOncePerCall (SPEC §8): revoker_rate_limit_wait_seconds
// is "how long calls waited for a rate token": one observation per call.
// A call whose slot went by while its write-ahead was stored waits for the
// next slot and is made once; its waits are one observation, or the
// histogram's count (which RevokerRateBudgetSaturated divides by) counts
// calls that were never made.
func TestRateLimitWaitOncePerCall(t *testing.T) {
	h := newHarnessGate(t, throttle.Config{Priorities: 2, Concurrency: 8, Rate: 4}, nil, zap.NewNop(), answer(200, revoked, 0))
	h.handle(&fakeDelivery{id: "before", seq: 1, body: `{"account_id":"acct1","key_id":"before"}`, ackWait: 30 * time.Second})
	writing := slowFirstWrite(h.ledger, "key1")
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.handle(&fakeDelivery{body: goodEvent, ackWait: 30 * time.Second, maxDeliver: 10})
	}()
	<-writing
	<-done
	var dm dto.Metric
	if err := h.m.RateLimitWait.(prometheus.Metric).Write(&dm); err != nil {
		t.Fatal(err)
	}
	calls := h.api.callCount()
	if got := dm.GetHistogram().GetSampleCount(); got != uint64(calls) {
		t.Errorf("%d calls made, revoker_rate_limit_wait_seconds_count %d", calls, got)
	}
}
