package worker_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/metrics"
	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/worker"
)

// TestListRetryAfterIsACappedHold: a DELETE answers 404 with the
// envelope; the key list fetched to prove it answers 200 with success
// false and Retry-After of an hour. That list proves nothing and is
// retried (SPEC §4, "The proof", point 1), and the hold it asks for is
// capped at 5 minutes ("Any hold that the API asks for — Retry-After … —
// is capped at 5 minutes … Nothing an answer says can stop the worker for
// longer"). With a 10-minute budget the delivery must wait the capped hold
// out and try again, not be dead-lettered after one call.
func TestListRetryAfterIsACappedHold(t *testing.T) {
	h := newHarness(t, func(c *worker.Config) {
		c.RetryMaxElapsed = 10 * time.Minute
		c.RetryMaxInterval = time.Second
	}, answer(404, gone, 0), answer(200, revoked, 0))
	h.api.list = answer(200, &cloudflare.Envelope{Errors: []cloudflare.Message{{Code: 10000, Message: "busy"}}}, time.Hour)
	d := &fakeDelivery{body: goodEvent, delivered: 1, maxDeliver: 1}
	handleUntil(t, h, d, "waiting out a hold", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return h.gate.PausedFor() > 0 || len(d.asides) > 0
	})
	h.records.mu.Lock()
	defer h.records.mu.Unlock()
	if len(h.records.dlq) != 0 {
		t.Fatalf("dead-lettered after one 404 whose key list asked for 1h (capped at 5m) within a 10m budget: %+v", h.records.dlq[0])
	}
}

// TestClassifyListRetryAfterIsAHold: the same at the decision: a
// key list that answered 2xx without a list, asking for an hour, gives a
// wait longer than any hold may last, and no shared hold (Pause), so it
// neither shows in revoker_api_paused nor is capped (SPEC §4, §8).
func TestClassifyListRetryAfterIsAHold(t *testing.T) {
	list := &cloudflare.KeyList{Response: answer(200, &cloudflare.Envelope{}, time.Hour)}
	d := worker.ClassifyList(list, nil, "key1")
	if d.Kind != worker.Retry {
		t.Fatalf("kind %v, want retry", d.Kind)
	}
	if !d.Pause && d.RetryAfter > 5*time.Minute {
		t.Fatalf("decision %+v: a %v wait, not a hold, beyond the 5-minute cap", d, d.RetryAfter)
	}
}

// TestListHoldNamesItsOwnAnswer: after a DELETE's 404, the key list
// answers 503 with Retry-After: the hold is the list's to ask for, and it
// is "logged once with its length and cause" (SPEC §4). The cause must
// name the answer that asked (the list's 503), not the DELETE's 404, which
// asked for nothing: an operator reading "Retry-After on a 404" looks in
// the wrong place.
func TestListHoldNamesItsOwnAnswer(t *testing.T) {
	causes := make(chan string, 16)
	h := newHarnessGate(t, throttle.Config{Priorities: 2, Concurrency: 4,
		OnHold: func(_ time.Duration, cause string) { causes <- cause }}, nil, zap.NewNop(),
		answer(404, gone, 0))
	h.api.list = answer(503, nil, 2*time.Second)
	d := &fakeDelivery{body: goodEvent}
	h.handle(d)
	var cause string
	waitUntil(t, "a hold reported", func() bool {
		select {
		case cause = <-causes:
			return true
		default:
			return false
		}
	})
	if strings.Contains(cause, "404") || !strings.Contains(cause, "503") {
		t.Fatalf("hold asked for by the key list's 503 reported as %q", cause)
	}
}

// TestEchoedTokenInCFRayKeptOutOfTheRecord: an answer (a proxy, a
// debugging load balancer) whose CF-Ray header echoes the request's
// Authorization header: the outcome record keeps cf_ray, so the token
// lands in the append-only audit trail (SPEC §6: secrets never appear in
// records, "not even in part").
func TestEchoedTokenInCFRayKeptOutOfTheRecord(t *testing.T) {
	const token = "cfut_SeCrEtT0kenValue0123456789abcdefXYZ"
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cf-Ray", r.Header.Get("Authorization"))
		io.WriteString(w, `{"success":true,"errors":[],"messages":[],"result":"ok"}`)
	}))
	t.Cleanup(ts.Close)
	h := newHarness(t, nil, answer(500, nil, 0))
	c, err := cloudflare.New(cloudflare.Config{BaseURL: ts.URL, Credential: cloudflare.Token(token), Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	subjects := []string{"revoke.urgent", "revoke.scheduled"}
	m := metrics.New(reg, metrics.Labels{Subjects: subjects, Outcomes: event.Names(event.Outcomes), Reasons: event.Names(event.Reasons)}, metrics.Build{})
	h.w = worker.New(worker.Config{
		Subjects: subjects, RetryInitial: time.Millisecond, RetryMaxInterval: 5 * time.Millisecond,
		RetryMaxElapsed: 50 * time.Millisecond, HandBackDelay: time.Millisecond, Name: "test",
	}, worker.Deps{API: c, Gate: h.gate, Records: h.records, Ledger: h.ledger,
		Metrics: m, Ready: metrics.NewReadiness(reg), Log: zap.NewNop()})
	h.handle(&fakeDelivery{body: goodEvent})
	h.records.mu.Lock()
	defer h.records.mu.Unlock()
	for _, o := range h.records.outcomes {
		if strings.Contains(o.CFRay, token[:16]) {
			t.Fatalf("outcome record %s keeps the token in cf_ray: %q", o.Outcome, o.CFRay)
		}
	}
}

// TestRetryAfterOnAnyAnswerHolds: "Any hold that the API asks for —
// Retry-After, Retry-After-Ms, … — is capped at 5 minutes, shows in
// revoker_api_paused" (SPEC §4). The worker honours Retry-After on
// retryable answers and on those refused by x-should-retry: false, but
// ignores it on the other answers it classifies: a 4xx refused for good,
// a 401/403, a 2xx with success false, a 404 without the envelope.
func TestRetryAfterOnAnyAnswerHolds(t *testing.T) {
	for name, resp := range map[string]*cloudflare.Response{
		"400 rejected":         answer(400, rejected, 30*time.Second),
		"403 unauthorized":     answer(403, &cloudflare.Envelope{Errors: []cloudflare.Message{{Code: 10000, Message: "Authentication error"}}}, 30*time.Second),
		"200 success false":    answer(200, rejected, 30*time.Second),
		"404 without envelope": answer(404, nil, 30*time.Second),
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, nil, resp)
			stop, cancel := context.WithCancel(context.Background())
			defer cancel()
			d := &fakeDelivery{body: goodEvent, delivered: 1, maxDeliver: 3}
			done := make(chan struct{})
			go func() {
				defer close(done)
				h.w.Handle(stop, context.Background(), d)
			}()
			settledFirst := false
			waitUntil(t, "a hold, or the event settled", func() bool {
				if h.gate.PausedFor() > 0 {
					return true
				}
				select {
				case <-done:
					settledFirst = true
					return true
				default:
					return false
				}
			})
			cancel()
			<-done
			if settledFirst && h.gate.PausedFor() == 0 {
				t.Fatalf("HTTP %d with Retry-After 30s: no hold (settled %v)", resp.Status, d.settled)
			}
		})
	}
}
