package worker_test

import (
	"testing"
	"time"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/worker"
)

// TestListRetryAfterZeroIsNoHold (a61099b): a key list answered 403
// (or 2xx without a list) with "Retry-After: 0": the answer asks for no
// wait. ClassifyList marks every answer that carries the header as a hold
// of every call (Pause), whatever its length; holdAsked then holds the
// whole budget for the current backoff, shows it in revoker_api_paused
// and logs a hold "asked for" by that answer. Classify, for the DELETE,
// holds only for RetryAfter > 0.
func TestListRetryAfterZeroIsNoHold(t *testing.T) {
	for _, st := range []int{200, 403} {
		list := &cloudflare.KeyList{Response: &cloudflare.Response{Status: st, HasRetryAfter: true}}
		d := worker.ClassifyList(list, nil, "key1")
		if d.Pause {
			t.Errorf("key list HTTP %d with Retry-After: 0: decision %+v holds every call", st, d)
		}
		del := worker.Classify(&cloudflare.Response{Status: st, HasRetryAfter: true}, nil)
		if del.Pause != d.Pause {
			t.Errorf("HTTP %d with Retry-After: 0 holds every call after a key list (%v) but not after a DELETE (%v)", st, d.Pause, del.Pause)
		}
	}
}

// TestUnauthorizedRetryAfterChargedOnce (a61099b): a 403 that asks
// for 600ms (Retry-After-Ms). The Unauthorized branch now both holds every
// call for it (held) and sleeps the longest backoff (wait, 500ms), and
// charges the delivery's retry budget (1s) for both, though the two run
// at once: 600 + 500 > 1000, so the delivery is given back after one call
// at t=0, with 400ms of its budget unused. Charged as it elapses (the
// later of hold and sleep, 600ms), a second call fits. Before a61099b a
// 403 held nothing and slept 500ms: more than one call.
func TestUnauthorizedRetryAfterChargedOnce(t *testing.T) {
	h := newHarness(t, func(c *worker.Config) {
		c.RetryMaxElapsed = time.Second
		c.RetryMaxInterval = 500 * time.Millisecond
	}, answer(403, &cloudflare.Envelope{Errors: []cloudflare.Message{{Code: 10000, Message: "Authentication error"}}}, 600*time.Millisecond))
	d := &fakeDelivery{body: goodEvent, delivered: 1, maxDeliver: 10}
	h.handle(d)
	h.api.mu.Lock()
	calls := h.api.calls
	h.api.mu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	if calls < 2 {
		t.Errorf("a 403 asking for 600ms got %d call(s) in a 1s retry budget (settled %v): the hold and the backoff sleep, run together, were charged one after the other", calls, d.settled)
	}
}

// TestListRetryAfterZeroHoldsNothing: the same through the worker. A
// DELETE answers 404 with the envelope; the key list fetched to prove it
// answers 403 with "Retry-After: 0". Nothing asked for a wait, yet every
// call of the budget is held for the current backoff (here a minute:
// RetryInitial), shown in revoker_api_paused.
func TestListRetryAfterZeroHoldsNothing(t *testing.T) {
	h := newHarness(t, func(c *worker.Config) {
		c.RetryInitial = time.Minute
		c.RetryMaxInterval = time.Minute
	}, answer(404, gone, 0))
	h.api.list = &cloudflare.Response{Status: 403, CFRay: "ray-list", HasRetryAfter: true,
		Envelope: &cloudflare.Envelope{Errors: []cloudflare.Message{{Code: 10000, Message: "Authentication error"}}}}
	d := &fakeDelivery{body: goodEvent, delivered: 1, maxDeliver: 10}
	h.handle(d)
	if p := h.gate.PausedFor(); p > 0 {
		t.Errorf("after a key list's 403 with Retry-After: 0, every call is held for %v", p.Round(time.Second))
	}
}
