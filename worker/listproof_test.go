package worker_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/metrics"
	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/worker"
)

// standIn is an API stand-in: every DELETE answers deleteStatus with
// deleteBody, every key list answers 200 with listBody.
func standIn(t *testing.T, deleteStatus int, deleteBody, listBody string) *httptest.Server {
	t.Helper()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cf-Ray", "ray-standin")
		if r.Method == http.MethodDelete {
			w.WriteHeader(deleteStatus)
			io.WriteString(w, deleteBody)
			return
		}
		w.WriteHeader(200)
		io.WriteString(w, listBody)
	}))
	t.Cleanup(ts.Close)
	return ts
}

// realClientHarness is the harness of decide_test.go with its worker
// calling the stand-in through the real client.
func realClientHarness(t *testing.T, url string) *harness {
	t.Helper()
	h := newHarness(t, nil, answer(500, nil, 0))
	gate := throttle.New(throttle.Config{Priorities: 2, Concurrency: 4})
	t.Cleanup(gate.Close)
	reg := prometheus.NewRegistry()
	subjects := []string{"revoke.urgent", "revoke.scheduled"}
	m := metrics.New(reg, metrics.Labels{Subjects: subjects, Outcomes: event.Names(event.Outcomes), Reasons: event.Names(event.Reasons)}, metrics.Build{})
	h.w = worker.New(worker.Config{
		Subjects: subjects, RetryInitial: time.Millisecond, RetryMaxInterval: 5 * time.Millisecond,
		RetryMaxElapsed: 50 * time.Millisecond, HandBackDelay: time.Millisecond, Name: "test",
	}, worker.Deps{API: client(t, url, time.Second), Gate: gate, Records: h.records, Ledger: h.ledger,
		Metrics: m, Ready: metrics.NewReadiness(reg), Log: zap.NewNop()})
	return h
}

const (
	delete404 = `{"success":false,"errors":[{"code":10003,"message":"not found"}],"messages":[],"result":null}`
)

// TestAmbiguousKeyListIsNoProof: a 404 whose key list names the
// event's key is not proven absent, whatever else the answer's body holds
// (SPEC §4, "The proof", point 1). A body with the envelope's "result"
// twice is ambiguous: one of them lists the key.
func TestAmbiguousKeyListIsNoProof(t *testing.T) {
	for name, list := range map[string]string{
		"result twice, the key in the first": `{"success":true,"errors":[],"messages":[],"result":[{"id":"key1"}],"result":[]}`,
		"result twice, one escaped":          `{"success":true,"errors":[],"messages":[],"result":[{"id":"key1"}],"\u0072esult":[]}`,
		"result_info twice":                  `{"success":true,"errors":[],"messages":[],"result":[{"id":"other"}],"result_info":{"total_pages":2},"result_info":{}}`,
		"a cursor to more (KV style)":        `{"success":true,"errors":[],"messages":[],"result":[{"id":"other"}],"result_info":{"count":1,"cursor":"6Ck1la0VxJ0djhidm1MdX2F"}}`,
		"truncated (R2 style)":               `{"success":true,"errors":[],"messages":[],"result":[{"id":"other"}],"result_info":{"is_truncated":true,"cursor":"abc"}}`,
	} {
		t.Run(name, func(t *testing.T) {
			ts := standIn(t, 404, delete404, list)
			h := realClientHarness(t, ts.URL)
			d := &fakeDelivery{body: goodEvent}
			h.handle(d)
			for _, o := range h.records.outcomes {
				if o.Outcome == event.NotFound {
					t.Fatalf("record %+v: not_found on a key list that does not prove the key absent (settled %v)", o, d.settled)
				}
			}
			// Retried: given back, with nothing recorded yet.
			if len(d.settled) != 1 || !strings.HasPrefix(d.settled[0], "giveback") || len(h.records.outcomes) != 0 {
				t.Fatalf("settled %v with records %+v, want the event given back unrecorded", d.settled, h.records.outcomes)
			}
		})
	}
}
