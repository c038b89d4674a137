package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/metrics"
	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/worker"
)

// fakeRoutes serves the accounts it names, each with its credential and
// budget gate.
type fakeRoutes map[string]worker.Route

func (r fakeRoutes) Route(account string) (worker.Route, bool) {
	rt, ok := r[account]
	return rt, ok
}

// routed is a worker whose accounts acct1 and acct2 have credentials of
// their own, with budgets "a" and "b"; other accounts have none.
type routed struct {
	*harness
	gates  map[string]*throttle.Gate
	budget map[string]metrics.Budget
}

func newRouted(t *testing.T, answers ...*cloudflare.Response) *routed {
	t.Helper()
	return newRoutedTuned(t, nil, answers...)
}

func newRoutedTuned(t *testing.T, tune func(*worker.Config), answers ...*cloudflare.Response) *routed {
	t.Helper()
	h := &harness{
		api:     &fakeAPI{answers: answers},
		records: &fakeRecords{},
		ledger:  &fakeLedger{entries: map[uint64]worker.Entry{}},
		gate:    throttle.New(throttle.Config{Priorities: 2, Concurrency: 4}),
	}
	t.Cleanup(h.gate.Close)
	reg := prometheus.NewRegistry()
	subjects := []string{"revoke.urgent", "revoke.scheduled"}
	h.m = metrics.New(reg, metrics.Labels{Subjects: subjects, Outcomes: event.Names(event.Outcomes),
		Reasons: event.Names(event.Reasons), Budgets: []string{"a", "b"}}, metrics.Build{})
	h.ready = metrics.NewReadiness(reg)
	r := &routed{harness: h, gates: map[string]*throttle.Gate{}, budget: map[string]metrics.Budget{}}
	routes := fakeRoutes{}
	for i, name := range []string{"a", "b"} {
		g := throttle.New(throttle.Config{Priorities: 2, Concurrency: 4})
		t.Cleanup(g.Close)
		r.gates[name], r.budget[name] = g, h.m.Budget(name)
		h.ready.Declare(worker.ReadyCredentialOf("cred-" + name))
		routes["acct"+string(rune('1'+i))] = worker.Route{Credential: "cred-" + name, Gate: g, Budget: r.budget[name], Rate: 4}
	}
	cfg := worker.Config{
		Subjects: subjects, RetryInitial: time.Millisecond, RetryMaxInterval: 5 * time.Millisecond,
		RetryMaxElapsed: 50 * time.Millisecond, HandBackDelay: time.Millisecond, Name: "test",
	}
	if tune != nil {
		tune(&cfg)
	}
	h.w = worker.New(cfg, worker.Deps{API: h.api, Gate: h.gate, Routes: routes, Records: h.records, Ledger: h.ledger,
		Metrics: h.m, Ready: h.ready, Log: zap.NewNop()})
	return r
}

// TestRouteNamesTheCredential: the record names the credential of the
// event's account, and the call is charged to that account's budget only.
func TestRouteNamesTheCredential(t *testing.T) {
	r := newRouted(t, answer(200, revoked, 0))
	r.handle(&fakeDelivery{body: `{"account_id":"acct2","key_id":"key1"}`})
	if len(r.records.outcomes) != 1 || r.records.outcomes[0].Credential != "cred-b" || r.records.outcomes[0].Outcome != event.Revoked {
		t.Fatalf("records %+v, want one revoked naming cred-b", r.records.outcomes)
	}
	if a, b := testutil.ToFloat64(r.budget["a"].Calls), testutil.ToFloat64(r.budget["b"].Calls); a != 0 || b != 1 {
		t.Errorf("calls charged: a %v, b %v; want 0 and 1", a, b)
	}
}

// TestRouteUnknownAccount: an account no credential serves is dead-lettered
// account_not_allowed with no call.
func TestRouteUnknownAccount(t *testing.T) {
	r := newRouted(t, answer(200, revoked, 0))
	d := &fakeDelivery{body: `{"account_id":"acct9","key_id":"key1"}`}
	r.handle(d)
	if r.api.calls != 0 {
		t.Errorf("%d calls for an account no credential serves", r.api.calls)
	}
	if len(r.records.dlq) != 1 || r.records.dlq[0].Reason != event.AccountNotAllowed || d.settled[0] != "term" {
		t.Fatalf("dead letters %+v, settled %v; want one account_not_allowed, terminated", r.records.dlq, d.settled)
	}
}

// TestRouteNotAllowedNamesNoCredential: an account a credential serves but
// REVOKER_ALLOWED_ACCOUNTS leaves out is dead-lettered with no call, and
// its record names no credential: none was used (SPEC §5a).
func TestRouteNotAllowedNamesNoCredential(t *testing.T) {
	r := newRoutedTuned(t, func(c *worker.Config) { c.AllowedAccounts = []string{"acct2"} }, answer(200, revoked, 0))
	d := &fakeDelivery{body: `{"account_id":"acct1","key_id":"key1"}`}
	r.handle(d)
	if r.api.calls != 0 || len(r.records.outcomes) != 1 || r.records.outcomes[0].Reason != event.AccountNotAllowed || r.records.outcomes[0].Credential != "" {
		t.Fatalf("calls %d, records %+v; want one account_not_allowed naming no credential, no call", r.api.calls, r.records.outcomes)
	}
}

// TestRouteRefusedCredentialOnlyItsOwn: a 403 makes only that credential's
// condition false; a 429 holds only that budget's gate.
func TestRouteRefusedCredentialOnlyItsOwn(t *testing.T) {
	r := newRouted(t, answer(403, rejected, 0))
	r.handle(&fakeDelivery{body: `{"account_id":"acct1","key_id":"key1"}`})
	if v := testutil.ToFloat64(r.ready.Gauge(worker.ReadyCredentialOf("cred-a"))); v != 0 {
		t.Errorf("credential:cred-a ready = %v after a 403, want 0", v)
	}
	if v := testutil.ToFloat64(r.ready.Gauge(worker.ReadyCredentialOf("cred-b"))); v != 1 {
		t.Errorf("credential:cred-b ready = %v after cred-a's 403, want 1", v)
	}

	r2 := newRouted(t, answer(429, rejected, time.Hour), answer(200, revoked, 0))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	// acct1's 429 asks for an hour; the delivery waits it out until stop.
	r2.w.Handle(ctx, context.Background(), &fakeDelivery{body: `{"account_id":"acct1","key_id":"key1"}`, delivered: 1, maxDeliver: 3})
	if r2.gates["a"].PausedFor() < time.Minute {
		t.Fatalf("budget a paused for %v after a 429 asking for an hour", r2.gates["a"].PausedFor())
	}
	if p := r2.gates["b"].PausedFor(); p != 0 || r2.gate.PausedFor() != 0 {
		t.Errorf("budget b paused for %v, the shared gate for %v: a 429 holds only its own budget", p, r2.gate.PausedFor())
	}
	r2.handle(&fakeDelivery{body: `{"account_id":"acct2","key_id":"key1"}`})
	if n := len(r2.records.outcomes); n != 1 || r2.records.outcomes[0].Credential != "cred-b" {
		t.Errorf("records %+v: acct2 must be revoked while budget a is held", r2.records.outcomes)
	}
}

// TestRouteFollowsALowerQuota: an answer stating a quota below the
// budget's rate (Ratelimit-Policy: 60 calls a minute, rate 4/s) spaces
// that budget's next call a second out, and only that budget's.
func TestRouteFollowsALowerQuota(t *testing.T) {
	resp := answer(200, revoked, 0)
	resp.Policy = cloudflare.RatePolicy{Known: true, Quota: 60, Window: time.Minute}
	r := newRouted(t, resp)
	r.handle(&fakeDelivery{body: `{"account_id":"acct1","key_id":"key1"}`})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if pm, err := r.gates["a"].Acquire(ctx, 0); err == nil {
		pm.Release()
		t.Fatal("budget a granted a call at once after a quota of 1/s was stated; want it spaced a second out")
	}
	pm, err := r.gates["b"].Acquire(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	pm.Release()
}

// TestRouteQuotaLowersTheBudgetsRate: an answer stating a quota below the
// budget's rate (60 calls a minute, rate 4/s) lowers the rate itself, so
// every later call keeps the quota's spacing, not only the next one: calls
// already under way when it is stated cannot take the budget past it.
func TestRouteQuotaLowersTheBudgetsRate(t *testing.T) {
	resp := answer(200, revoked, 0)
	resp.Policy = cloudflare.RatePolicy{Known: true, Quota: 60, Window: time.Minute}
	r := newRouted(t, resp)
	g := throttle.New(throttle.Config{Priorities: 2, Concurrency: 4, Rate: 4})
	t.Cleanup(g.Close)
	w := r.workerOn(fakeRoutes{"acct1": {Credential: "cred-a", Gate: g, Budget: r.budget["a"], Rate: 4}})
	w.Handle(context.Background(), context.Background(), &fakeDelivery{body: `{"account_id":"acct1","key_id":"key1"}`})
	var granted []time.Time
	for range 3 {
		pm, err := g.Acquire(context.Background(), 0)
		if err != nil {
			t.Fatal(err)
		}
		granted = append(granted, time.Now())
		pm.Release()
	}
	// On the rate's schedule: the first permit, seen late by this
	// goroutine on a busy machine, may come nearer the next by as much as
	// a call may start after its slot (StartTolerance); at the 4/s rate
	// the run would take a quarter of this.
	want := throttle.Interval(1)
	if span := granted[len(granted)-1].Sub(granted[0]); span < time.Duration(len(granted)-1)*want-throttle.StartTolerance {
		t.Errorf("%d calls within %v after a quota of 1/s was stated, want them at least %v apart in all", len(granted), span, time.Duration(len(granted)-1)*want)
	}
}

// TestRouteWorkingCallClearsACheckedRefusal: a credential refused by its
// check at start (not by a call) is ready again once one of its calls
// works (SPEC §8: ready again on the next successful call).
func TestRouteWorkingCallClearsACheckedRefusal(t *testing.T) {
	r := newRouted(t, answer(200, revoked, 0))
	r.ready.Set(worker.ReadyCredentialOf("cred-a"), "refused by its check")
	r.handle(&fakeDelivery{body: `{"account_id":"acct1","key_id":"key1"}`})
	if v := testutil.ToFloat64(r.ready.Gauge(worker.ReadyCredentialOf("cred-a"))); v != 1 {
		t.Errorf("credential:cred-a ready = %v after a call that worked, want 1", v)
	}
}

// TestRouteRefusalAfterAPassedCheck: a credential refused by a call, then
// passed by its check, then refused by a call again is not ready again:
// the condition is the state, whoever set it last.
func TestRouteRefusalAfterAPassedCheck(t *testing.T) {
	r := newRouted(t, answer(403, rejected, 0))
	cond := worker.ReadyCredentialOf("cred-a")
	r.handle(&fakeDelivery{body: `{"account_id":"acct1","key_id":"key1"}`})
	if v := testutil.ToFloat64(r.ready.Gauge(cond)); v != 0 {
		t.Fatalf("credential:cred-a ready = %v after a 403, want 0", v)
	}
	r.ready.Set(cond, "") // its check, after its file changed, said active
	r.handle(&fakeDelivery{body: `{"account_id":"acct1","key_id":"key2"}`})
	if v := testutil.ToFloat64(r.ready.Gauge(cond)); v != 0 {
		t.Errorf("credential:cred-a ready = %v after another 403, want 0", v)
	}
}

// TestRouteRefusedCredentialCheckedBeforeItsCall: a refused credential is
// checked again before the next call; still refused, no DELETE is made and
// the event is given back like an unauthorized one; accepted, the call is
// made (SPEC §6).
func TestRouteRefusedCredentialCheckedBeforeItsCall(t *testing.T) {
	for _, works := range []bool{false, true} {
		r := newRouted(t, answer(200, revoked, 0))
		cond := worker.ReadyCredentialOf("cred-a")
		r.ready.Set(cond, "refused by its check")
		checks := 0
		routes := fakeRoutes{"acct1": {Credential: "cred-a", Gate: r.gates["a"], Budget: r.budget["a"], Rate: 4,
			Recheck: func(context.Context, int) bool {
				checks++
				if works {
					r.ready.Set(cond, "")
				}
				return works
			}}}
		w := r.workerOn(routes)
		d := &fakeDelivery{body: `{"account_id":"acct1","key_id":"key1"}`, delivered: 1, maxDeliver: 3}
		w.Handle(context.Background(), context.Background(), d)
		switch {
		case checks == 0:
			t.Errorf("works=%v: no check before the call", works)
		case !works && (r.api.calls != 0 || len(d.settled) != 1 || d.settled[0] != "giveback"):
			t.Errorf("still refused: %d DELETEs, settled %v; want none, given back", r.api.calls, d.settled)
		case works && (r.api.calls != 1 || d.settled[0] != "ack"):
			t.Errorf("accepted again: %d DELETEs, settled %v; want one, acked", r.api.calls, d.settled)
		}
	}
}

// TestLastStatusKeptAcrossDeliveriesWithoutACall: the only call got a 403;
// the next delivery makes none (its credential is still refused) and
// dead-letters the event as unauthorized with that 403 as its last status,
// not "error" (SPEC §5: Revoker-Status is the last HTTP status).
func TestLastStatusKeptAcrossDeliveriesWithoutACall(t *testing.T) {
	r := newRouted(t, answer(403, nil, 0))
	cond := worker.ReadyCredentialOf("cred-a")
	routes := fakeRoutes{"acct1": {Credential: "cred-a", Gate: r.gates["a"], Budget: r.budget["a"], Rate: 4,
		Recheck: func(context.Context, int) bool { return false }}}
	w := r.workerOn(routes)
	for n := 1; n <= 2; n++ {
		d := &fakeDelivery{body: `{"account_id":"acct1","key_id":"key1"}`, delivered: n, maxDeliver: 2}
		w.Handle(context.Background(), context.Background(), d)
		if n == 1 && (r.ready.Met(cond) || len(d.settled) != 1 || d.settled[0] != "giveback") {
			t.Fatalf("delivery 1: settled %v, credential met %v; want given back, refused", d.settled, r.ready.Met(cond))
		}
	}
	if r.api.calls != 1 || len(r.records.dlq) != 1 {
		t.Fatalf("%d calls, %d dead letters; want one of each", r.api.calls, len(r.records.dlq))
	}
	if dl := r.records.dlq[0]; dl.Reason != event.Unauthorized || dl.Status != 403 || dl.Attempts != 1 {
		t.Fatalf("dead letter %+v; want unauthorized, last status 403, 1 attempt", dl)
	}
}

// TestLastStatusIsTheLastCallsEvenWithoutAnswer: a 403, then a delivery
// whose calls got no answer, then one that makes no call: the last status
// is "none" (error), not the older 403.
func TestLastStatusIsTheLastCallsEvenWithoutAnswer(t *testing.T) {
	r := newRouted(t, answer(403, nil, 0), nil)
	cond := worker.ReadyCredentialOf("cred-a")
	works := false
	routes := fakeRoutes{"acct1": {Credential: "cred-a", Gate: r.gates["a"], Budget: r.budget["a"], Rate: 4,
		Recheck: func(context.Context, int) bool {
			if works {
				r.ready.Set(cond, "")
			}
			return works
		}}}
	w := r.workerOn(routes)
	handle := func(n int) {
		w.Handle(context.Background(), context.Background(), &fakeDelivery{body: `{"account_id":"acct1","key_id":"key1"}`, delivered: n, maxDeliver: 3})
	}
	handle(1) // 403: refused
	works = true
	handle(2) // accepted again; its calls get no answer
	calls := r.api.calls
	works = false
	r.ready.Set(cond, "refused again")
	handle(3) // no call; dead-lettered
	if r.api.calls != calls || calls < 2 || len(r.records.dlq) != 1 {
		t.Fatalf("%d calls (%d before the last delivery), %d dead letters", r.api.calls, calls, len(r.records.dlq))
	}
	if dl := r.records.dlq[0]; dl.Status != 0 || !dl.Called || dl.Attempts != calls {
		t.Fatalf("dead letter %+v; want last status none (error) after %d calls", dl, calls)
	}
}

// workerOn is a worker of r's fakes routing by routes, with a 20 ms retry
// budget.
func (r *routed) workerOn(routes fakeRoutes) *worker.Worker {
	return worker.New(worker.Config{
		Subjects: []string{"revoke.urgent", "revoke.scheduled"}, RetryInitial: time.Millisecond, RetryMaxInterval: 5 * time.Millisecond,
		RetryMaxElapsed: 20 * time.Millisecond, HandBackDelay: time.Millisecond, Name: "test",
	}, worker.Deps{API: r.api, Gate: r.gate, Routes: routes, Records: r.records, Ledger: r.ledger,
		Metrics: r.m, Ready: r.ready, Log: zap.NewNop()})
}
