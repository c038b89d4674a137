package worker_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/worker"
)

// TestHugeRetryAfterChargedAsItsCappedHold: a 503 asking for an hour holds
// every call for 5 minutes (SPEC §4: capped, "nothing an answer says can
// stop the worker for longer"), and the event's retry budget is charged
// that capped hold, not the hour: with a 10-minute budget the delivery waits
// the hold out and calls again; it is not dead-lettered on the spot.
func TestHugeRetryAfterChargedAsItsCappedHold(t *testing.T) {
	h := newHarness(t, func(c *worker.Config) {
		c.RetryMaxElapsed = 10 * time.Minute
		c.RetryMaxInterval = time.Second
	}, answer(503, nil, time.Hour), answer(200, revoked, 0))
	d := &fakeDelivery{body: goodEvent, delivered: 1, maxDeliver: 1}
	handleUntil(t, h, d, "waiting out the hold at the gate", func() bool { return h.gate.Queued(1) == 1 })
	h.records.mu.Lock()
	defer h.records.mu.Unlock()
	if len(h.records.dlq) != 0 {
		t.Fatalf("dead-lettered after one 503 whose Retry-After (1h) is capped at 5m, within a 10m budget: %+v", h.records.dlq[0])
	}
	if left := h.gate.PausedFor(); left > 5*time.Minute {
		t.Fatalf("hold %v, more than 5 minutes", left)
	}
}

// TestRetryAfterOfA429RefusedForGoodStillHolds: a 429 with x-should-retry:
// false dead-letters its event at once (SPEC §4), but the hold it asks for
// is every call's: "a 429 pauses every call of every replica sharing the
// credential", and "any hold that the API asks for — Retry-After … — …
// shows in revoker_api_paused".
func TestRetryAfterOfA429RefusedForGoodStillHolds(t *testing.T) {
	no := false
	resp := answer(429, &cloudflare.Envelope{Errors: []cloudflare.Message{{Code: 971, Message: "Please wait and consider throttling your request speed"}}}, 30*time.Second)
	resp.ShouldRetry = &no
	h := newHarness(t, nil, resp)
	d := &fakeDelivery{body: goodEvent}
	h.handle(d)
	if len(d.settled) != 1 || d.settled[0] != "term" {
		t.Fatalf("settled %v, want [term] (api_rejected at once)", d.settled)
	}
	if left := h.gate.PausedFor(); left < 20*time.Second {
		t.Fatalf("every call held for %v after a 429 asking for 30s; want about 30s", left)
	}
}

// TestNotFoundDeadLetterKeepsTheAPIsWords: in dead-letter mode a not_found
// is dead-lettered with a Revoker-Detail carrying the API's error codes
// and messages (SPEC §5), those of the DELETE that answered 404.
func TestNotFoundDeadLetterKeepsTheAPIsWords(t *testing.T) {
	h := newHarness(t, func(c *worker.Config) { c.NotFoundDeadLetter = true }, answer(404, gone, 0))
	h.handle(&fakeDelivery{body: goodEvent})
	if len(h.records.dlq) != 1 {
		t.Fatalf("%d dead letters, want 1", len(h.records.dlq))
	}
	if det := h.records.dlq[0].Detail; !strings.Contains(det, "10003") || !strings.Contains(det, "not found") {
		t.Fatalf("Revoker-Detail %q does not carry the API's 10003 \"not found\"", det)
	}
}

// TestRedirectIsNotTheAPI: the API at CLOUDFLARE_BASE_URL never redirects
// a DELETE; a 3xx comes from a base URL that is wrong (http for https, a
// moved host or path, a proxy's login page): the API is not where it
// should be (SPEC §4, the table's 404-without-envelope row: condition api,
// retried like unauthorized), not a refusal of this event to dead-letter
// at once, which would dead-letter every revocation of a misconfigured
// worker without turning it not-ready.
func TestRedirectIsNotTheAPI(t *testing.T) {
	for _, status := range []int{301, 302, 307, 308} {
		ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Location", "https://elsewhere.example/client/v4"+r.URL.Path)
			w.WriteHeader(status)
		}))
		resp, err := client(t, ts.URL, time.Second).DeleteSigningKey(context.Background(), "acct", "key")
		ts.Close()
		if d := worker.Classify(resp, err); d.Kind != worker.NoAPI {
			t.Errorf("HTTP %d redirect: %v (%s), want no_api", status, d.Kind, d.Detail)
		}
	}
}

// handleUntil handles d, on its last delivery, until it settles or until
// (what, a wait of the delivery's) holds; then it stops the handling.
func handleUntil(t *testing.T, h *harness, d *fakeDelivery, what string, until func() bool) {
	t.Helper()
	stop, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.w.Handle(stop, context.Background(), d)
	}()
	waitUntil(t, "the event settled, or "+what, func() bool {
		select {
		case <-done:
			return true
		default:
			return until()
		}
	})
	cancel()
	<-done
}
