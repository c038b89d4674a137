package metrics_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/revoker/revoker/metrics"
)

// TestEverySeriesStartsAtZero: dashboards never show "no data" for an
// outcome that has not happened yet, and the names are the contract's.
func TestEverySeriesStartsAtZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics.New(reg, []string{"revoke.urgent", "revoke.scheduled"}, metrics.Build{Version: "1.2.3", Revision: "abc", GoVersion: "go1.26"})
	want := map[string]int{
		"revoker_events_received_total":          2,
		"revoker_events_processed_total":         2 * len(metrics.Outcomes),
		"revoker_dead_letters_total":             len(metrics.DeadLetterReasons),
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
`), "revoker_build_info"); err != nil {
		t.Error(err)
	}
	if metrics.Code(0) != "error" || metrics.Code(429) != "429" {
		t.Error("Code labels")
	}
}

func TestEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics.New(reg, []string{"s"}, metrics.Build{})
	ready := metrics.NewReadiness("nats", "consumers")
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
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "revoker_events_processed_total") {
		t.Errorf("/metrics = %d", code)
	}
}
