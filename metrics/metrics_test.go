package metrics_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/metrics"
)

// TestEverySeriesStartsAtZero: dashboards never show "no data" for an
// outcome that has not happened yet, and the names are the contract's.
func TestEverySeriesStartsAtZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	labels := metrics.Labels{
		Subjects: []string{"revoke.urgent", "revoke.scheduled"},
		Outcomes: event.Names(event.Outcomes),
		Reasons:  event.Names(event.Reasons),
	}
	metrics.New(reg, labels, metrics.Build{Version: "1.2.3", Revision: "abc", GoVersion: "go1.26"})
	ready := metrics.NewReadiness(reg, "nats", "consumers")
	ready.Declare("credential")
	want := map[string]int{
		"revoker_events_received_total":          2,
		"revoker_events_processed_total":         2 * len(event.Outcomes),
		"revoker_dead_letters_total":             len(event.Reasons),
		"revoker_oldest_waiting_seconds":         2,
		"revoker_ready":                          3,
		"revoker_api_requests_total":             13,
		"revoker_api_request_duration_seconds":   1,
		"revoker_api_retries_total":              1,
		"revoker_revocation_latency_seconds":     2,
		"revoker_rate_limit_wait_seconds":        1,
		"revoker_api_paused":                     1,
		"revoker_inflight_events":                1,
		"revoker_consumer_pending_messages":      2,
		"revoker_nats_connected":                 1,
		"revoker_build_info":                     1,
		"revoker_outcome_publish_failures_total": 1,
	}
	for name, n := range want {
		if got, err := testutil.GatherAndCount(reg, name); err != nil || got != n {
			t.Errorf("%s: %d series (err %v), want %d", name, got, err, n)
		}
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP revoker_build_info Always 1; the labels describe the running binary.
# TYPE revoker_build_info gauge
revoker_build_info{goversion="go1.26",revision="abc",version="1.2.3"} 1
# HELP revoker_ready 1 while the condition holds; /readyz is 200 when all are 1.
# TYPE revoker_ready gauge
revoker_ready{condition="consumers"} 0
revoker_ready{condition="credential"} 1
revoker_ready{condition="nats"} 0
# HELP revoker_oldest_waiting_seconds Age, from its publish time, of the subject's oldest event with no final outcome yet (in the stream or held by this replica); 0 when there is none.
# TYPE revoker_oldest_waiting_seconds gauge
revoker_oldest_waiting_seconds{priority="0",subject="revoke.urgent"} 0
revoker_oldest_waiting_seconds{priority="1",subject="revoke.scheduled"} 0
`), "revoker_build_info", "revoker_ready", "revoker_oldest_waiting_seconds"); err != nil {
		t.Error(err)
	}
	if metrics.Code(0) != "error" || metrics.Code(429) != "429" {
		t.Error("Code labels")
	}
}

func TestEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics.New(reg, metrics.Labels{Subjects: []string{"s"}}, metrics.Build{})
	ready := metrics.NewReadiness(reg, "nats", "consumers")
	srv := httptest.NewServer(metrics.Handler(reg, ready))
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "nats") {
		t.Errorf("/readyz before ready = %d %q", code, body)
	}
	ready.Set("nats", "")
	ready.Set("consumers", "")
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz when ready = %d", code)
	}
	ready.Set("credential", "the API refused the credential")
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "credential") {
		t.Errorf("/readyz with a bad credential = %d %q", code, body)
	}
	if v := testutil.ToFloat64(ready.Gauge("credential")); v != 0 {
		t.Errorf("revoker_ready{condition=credential} = %v while refused", v)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, `revoker_ready{condition="credential"} 0`) {
		t.Errorf("/metrics = %d", code)
	}
}

// TestReadyWithOneCredentialRefused: of several named credentials, one
// refused leaves /readyz 200 naming it; all refused make it 503 (SPEC §6).
func TestReadyWithOneCredentialRefused(t *testing.T) {
	reg := prometheus.NewRegistry()
	ready := metrics.NewReadiness(reg)
	ready.Declare("credential:media-eu")
	ready.Declare("credential:ops")
	srv := httptest.NewServer(metrics.Handler(reg, ready))
	defer srv.Close()
	get := func() (int, string) {
		resp, err := http.Get(srv.URL + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	ready.Set("credential:media-eu", "token refused")
	if code, body := get(); code != 200 || !strings.Contains(body, "credential:media-eu: token refused") || strings.Contains(body, "credential:ops") {
		t.Errorf("/readyz with one of two credentials refused = %d %q; want 200 naming media-eu only", code, body)
	}
	if v := testutil.ToFloat64(ready.Gauge("credential:media-eu")); v != 0 {
		t.Errorf("revoker_ready{condition=credential:media-eu} = %v while refused", v)
	}
	ready.Set("credential:ops", "token refused")
	if code, _ := get(); code != 503 {
		t.Errorf("/readyz with every credential refused = %d, want 503", code)
	}
	// The file changes: ops is gone, a new one works. A removed
	// credential counts for nothing, and its series goes.
	ready.Remove("credential:ops")
	ready.Declare("credential:news")
	if code, body := get(); code != 200 || strings.Contains(body, "credential:ops") {
		t.Errorf("/readyz after ops was removed = %d %q", code, body)
	}
	ready.Remove("credential:news")
	if code, _ := get(); code != 503 {
		t.Errorf("/readyz with only a refused credential left = %d, want 503", code)
	}
	if n, err := testutil.GatherAndCount(reg, "revoker_ready"); err != nil || n != 1 {
		t.Errorf("%d revoker_ready series (%v), want 1: the removed credentials' series gone", n, err)
	}
	// A refusal heard late for a removed credential does not bring it
	// back; one of a credential still there counts.
	if ready.Update("credential:ops", "token refused") {
		t.Errorf("Update brought back a removed condition")
	}
	if !ready.Update("credential:media-eu", "") || !ready.Met("credential:media-eu") {
		t.Errorf("Update of a known condition did not apply")
	}
	if n, err := testutil.GatherAndCount(reg, "revoker_ready"); err != nil || n != 1 {
		t.Errorf("%d revoker_ready series (%v) after a late refusal of a removed credential, want 1", n, err)
	}
}
