package worker_test

import (
	"context"
	"slices"
	"sync"
	"testing"

	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/worker"
)

// switchRoutes is fakeRoutes that a test may replace mid-delivery, as a
// reload of the credentials file does.
type switchRoutes struct {
	mu      sync.Mutex
	m       fakeRoutes
	changed chan struct{} // closed by the next store, as credentials.Router's
}

func (s *switchRoutes) Route(account string) (worker.Route, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m.Route(account)
}

func (s *switchRoutes) store(m fakeRoutes) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m = m
	if s.changed != nil {
		close(s.changed)
	}
	s.changed = make(chan struct{})
}

func (s *switchRoutes) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.changed == nil {
		s.changed = make(chan struct{})
	}
	return s.changed
}

// reloadWorker is a worker of r's fakes routing through routes.
func reloadWorker(r *routed, routes worker.Routes) *worker.Worker {
	return worker.New(worker.Config{
		Subjects: []string{"revoke.urgent", "revoke.scheduled"}, RetryInitial: 1e6, RetryMaxInterval: 5e6,
		RetryMaxElapsed: 50e6, HandBackDelay: 1e6, Name: "test",
	}, worker.Deps{API: r.api, Gate: r.gate, Routes: routes, Records: r.records, Ledger: r.ledger,
		Metrics: r.m, Ready: r.ready, Log: zap.NewNop()})
}

// A confirmation kept in the ledger (its record refused until shutdown)
// and recorded by a later delivery, after a reload moved the account to
// another credential, names the credential that made the call (SPEC §5a:
// "the name of the credential used"), not the one the account has now.
func TestConfirmationNamesTheCredentialThatCalled(t *testing.T) {
	r := newRouted(t, answer(200, revoked, 0))
	apiA, apiB := &fakeAPI{answers: []*cloudflare.Response{answer(200, revoked, 0)}}, &fakeAPI{answers: []*cloudflare.Response{answer(200, revoked, 0)}}
	routes := &switchRoutes{m: fakeRoutes{"acct1": {Credential: "cred-a", Identity: "file:aaaa a", Gate: r.gates["a"], Budget: r.budget["a"], Rate: 4, API: apiA}}}
	w := reloadWorker(r, routes)
	r.records.failOutcome = 1 << 30
	stop, cancel := context.WithCancel(context.Background())
	apiA.onCall = func() { go cancel() }
	work, cancelWork := context.WithTimeout(context.Background(), 200e6)
	defer cancelWork()
	first := &fakeDelivery{body: `{"account_id":"acct1","key_id":"key1"}`, delivered: 1, maxDeliver: 3}
	w.Handle(stop, work, first)
	if len(first.settled) != 1 || first.settled[0] != "giveback" || r.ledger.entries[7].Confirmed == nil {
		t.Fatalf("first delivery settled %v, ledger %+v; want given back with its confirmation kept", first.settled, r.ledger.entries[7])
	}
	routes.store(fakeRoutes{"acct1": {Credential: "cred-b", Identity: "file:bbbb b", Gate: r.gates["b"], Budget: r.budget["b"], Rate: 4, API: apiB}})
	r.records.mu.Lock()
	r.records.failOutcome = 0
	r.records.mu.Unlock()
	again := &fakeDelivery{body: `{"account_id":"acct1","key_id":"key1"}`, delivered: 2, maxDeliver: 3}
	w.Handle(context.Background(), context.Background(), again)
	if apiA.calls != 1 || apiB.calls != 0 {
		t.Fatalf("calls: cred-a %d, cred-b %d; want 1 and 0", apiA.calls, apiB.calls)
	}
	if len(r.records.outcomes) == 0 {
		t.Fatalf("no record; settled %v", again.settled)
	}
	if o := r.records.outcomes[len(r.records.outcomes)-1]; o.Outcome != event.Revoked || o.Credential != "cred-a" {
		t.Errorf("record %s naming credential %q (cf_ray %s); the confirmed call was made with cred-a", o.Outcome, o.Credential, o.CFRay)
	}
}

// A reload of the credentials file while a delivery is between retries
// moves its next call: to the credential that serves the account now, or,
// when none does, to no call at all (SPEC §6: the account picks its
// credential; an account no credential names is dead-lettered as
// account_not_allowed).
func TestReloadMovesTheNextCall(t *testing.T) {
	for _, removed := range []bool{false, true} {
		r := newRouted(t, answer(503, nil, 0), answer(503, nil, 0), answer(200, revoked, 0))
		apiA, apiB := &fakeAPI{answers: r.api.answers}, &fakeAPI{answers: []*cloudflare.Response{answer(200, revoked, 0)}}
		routes := &switchRoutes{m: fakeRoutes{"acct1": {Credential: "cred-a", Identity: "file:aaaa a", Gate: r.gates["a"], Budget: r.budget["a"], Rate: 4, API: apiA}}}
		apiA.onCall = func() {
			next := fakeRoutes{}
			if !removed {
				next["acct1"] = worker.Route{Credential: "cred-b", Identity: "file:bbbb b", Gate: r.gates["b"], Budget: r.budget["b"], Rate: 4, API: apiB}
			}
			routes.store(next)
		}
		d := &fakeDelivery{body: `{"account_id":"acct1","key_id":"key1"}`, delivered: 1, maxDeliver: 3}
		reloadWorker(r, routes).Handle(context.Background(), context.Background(), d)
		if apiA.calls != 1 {
			t.Errorf("removed=%v: %d calls with cred-a; want 1, the one before the reload", removed, apiA.calls)
		}
		if len(r.records.outcomes) != 1 {
			t.Fatalf("removed=%v: records %+v, settled %v", removed, r.records.outcomes, d.settled)
		}
		o := r.records.outcomes[0]
		switch {
		case !removed && (apiB.calls != 1 || o.Outcome != event.Revoked || o.Credential != "cred-b" || o.Attempts != 2):
			t.Errorf("moved: %d calls with cred-b, record %s by %q with %d attempts; want 1, revoked by cred-b, 2 attempts", apiB.calls, o.Outcome, o.Credential, o.Attempts)
		case removed && (apiB.calls != 0 || o.Outcome != event.DeadLettered || o.Reason != event.AccountNotAllowed || o.Attempts != 1):
			t.Errorf("removed: %d calls with cred-b, record %s (%s) with %d attempts; want none, dead_lettered account_not_allowed, 1 attempt", apiB.calls, o.Outcome, o.Reason, o.Attempts)
		}
	}
}

// A credential a reload took out of the file no longer counts for
// readiness (its condition removed); a refusal heard afterwards from a
// call made with it must not bring the condition back, as unmet, naming a
// credential no longer there.
func TestRemovedCredentialConditionStaysRemoved(t *testing.T) {
	r := newRouted(t, answer(403, rejected, 0))
	cond := worker.ReadyCredentialOf("cred-a")
	r.ready.Remove(cond) // the reload: cred-a is gone
	r.handle(&fakeDelivery{body: `{"account_id":"acct1","key_id":"key1"}`})
	for _, n := range r.ready.Names() {
		if n == cond {
			_, why := r.ready.Ready()
			t.Errorf("condition %s of a credential no longer in the file is back: /readyz says %q", cond, why)
		}
	}
}

// A delivery waiting for its budget's next slot is set aside as a fresh
// one (Delivery.Aside), whether or not its call failed before: that wait
// is its budget's alone, and another account's events, fetched past it,
// would be called (SPEC §9: an incident in one account never waits behind
// another account's hold or backlog). Its backoff sleeps after a failed
// call are set aside as retrying ones, which the lane bounds: while the
// API fails for every event, it does not fetch event after event to fail.
func TestBudgetWaitIsFreshItsBackoffRetrying(t *testing.T) {
	r := newRouted(t)
	rated := throttle.New(throttle.Config{Priorities: 2, Concurrency: throttle.Unbounded, Rate: 20})
	t.Cleanup(rated.Close)
	api := &fakeAPI{answers: []*cloudflare.Response{answer(503, nil, 0), answer(503, nil, 0), answer(200, revoked, 0)}}
	routes := &switchRoutes{m: fakeRoutes{"acct1": {Credential: "cred-a", Identity: "file:aaaa a", Gate: rated, Budget: r.budget["a"], Rate: 20, API: api}}}
	// Its budget's first slot is taken: even the first call waits for one.
	pm, err := rated.Acquire(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	pm.Release()
	d := &fakeDelivery{body: `{"account_id":"acct1","key_id":"key1"}`, delivered: 1, maxDeliver: 3}
	reloadWorker(r, routes).Handle(context.Background(), context.Background(), d)
	if api.calls != 3 {
		t.Fatalf("%d calls, want 3 (503, 503, 200)", api.calls)
	}
	// Its budget's wait, a backoff, the wait, a backoff, the wait.
	if want := []bool{false, true, false, true, false}; !slices.Equal(d.asides, want) {
		t.Errorf("set aside as retrying: %v, want %v (each wait for the budget fresh, each backoff retrying)", d.asides, want)
	}
}
