package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/revoker/revoker/cloudflare"
)

// TestReloadMovesACallWaitingAtItsOldBudget: acct1's credential
// cred-a is held by a 429 (Retry-After, capped at 5 minutes); its event
// waits at budget a's gate. The operator moves acct1 to cred-b (its own
// token and budget) in the credentials file. SPEC §6: the account picks its
// credential, and the file is in use within 5 s; §9: an incident in one
// account never waits behind another principal's hold. The event must be
// called with cred-b soon after the reload, never with cred-a's token once
// the old hold ends.
func TestReloadMovesACallWaitingAtItsOldBudget(t *testing.T) {
	r := newRouted(t)
	apiA := &fakeAPI{answers: []*cloudflare.Response{answer(200, revoked, 0)}}
	apiB := &fakeAPI{answers: []*cloudflare.Response{answer(200, revoked, 0)}}
	routes := &switchRoutes{m: fakeRoutes{"acct1": {Credential: "cred-a", Identity: "file:aaaa a", Gate: r.gates["a"], Budget: r.budget["a"], Rate: 4, API: apiA}}}
	r.gates["a"].Pause(time.Hour) // a 429 of cred-a's principal: capped at 5 minutes
	w := reloadWorker(r, routes)
	stop, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := &fakeDelivery{body: `{"account_id":"acct1","key_id":"key1"}`, delivered: 1, maxDeliver: 3}
	done := make(chan struct{})
	go func() { defer close(done); w.Handle(stop, context.Background(), d) }()

	waitUntil(t, "the event waiting at budget a's gate", func() bool { return r.gates["a"].Queued(d.Priority()) > 0 })
	// The reload: acct1 is cred-b's now.
	routes.store(fakeRoutes{"acct1": {Credential: "cred-b", Identity: "file:bbbb b", Gate: r.gates["b"], Budget: r.budget["b"], Rate: 4, API: apiB}})

	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	apiA.mu.Lock()
	a := apiA.calls
	apiA.mu.Unlock()
	apiB.mu.Lock()
	b := apiB.calls
	apiB.mu.Unlock()
	if b != 1 || a != 0 {
		t.Errorf("5 s after the reload moved acct1 to cred-b: %d calls with cred-b, %d with cred-a; want 1 and 0 (the event still waits for cred-a's hold, %v left, and would then call with cred-a's token)",
			b, a, r.gates["a"].PausedFor().Round(time.Second))
	}
	cancel()
	<-done
}

// TestReloadedAccountCalledWithItsNewToken: as above with a short
// hold (500 ms): once it ends, the event that waited through the reload
// is called with cred-a's token and charged to budget a, though the file
// has named cred-b for acct1 since before the call.
func TestReloadedAccountCalledWithItsNewToken(t *testing.T) {
	r := newRouted(t)
	apiA := &fakeAPI{answers: []*cloudflare.Response{answer(200, revoked, 0)}}
	apiB := &fakeAPI{answers: []*cloudflare.Response{answer(200, revoked, 0)}}
	routes := &switchRoutes{m: fakeRoutes{"acct1": {Credential: "cred-a", Identity: "file:aaaa a", Gate: r.gates["a"], Budget: r.budget["a"], Rate: 4, API: apiA}}}
	r.gates["a"].Pause(500 * time.Millisecond)
	w := reloadWorker(r, routes)
	d := &fakeDelivery{body: `{"account_id":"acct1","key_id":"key1"}`, delivered: 1, maxDeliver: 3}
	done := make(chan struct{})
	go func() { defer close(done); w.Handle(context.Background(), context.Background(), d) }()
	waitUntil(t, "the event waiting at budget a's gate", func() bool { return r.gates["a"].Queued(d.Priority()) > 0 })
	routes.store(fakeRoutes{"acct1": {Credential: "cred-b", Identity: "file:bbbb b", Gate: r.gates["b"], Budget: r.budget["b"], Rate: 4, API: apiB}})
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the delivery did not end")
	}
	if apiA.calls != 0 || apiB.calls != 1 || len(r.records.outcomes) != 1 || r.records.outcomes[0].Credential != "cred-b" {
		cred := ""
		if len(r.records.outcomes) > 0 {
			cred = r.records.outcomes[0].Credential
		}
		t.Errorf("after the reload moved acct1 to cred-b (before any call): %d calls with cred-a's token, %d with cred-b's; record names %q; want 0, 1, cred-b",
			apiA.calls, apiB.calls, cred)
	}
}
