package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"go.uber.org/zap/zaptest"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue/queuetest"
	"github.com/revoker/revoker/tracing"
	"github.com/revoker/revoker/tracing/tracingtest"
)

// TestOneTracePerEvent: an event published with a lower-case traceparent,
// answered 503 on its first delivery and 200 on its second, reaches a real
// OTLP/HTTP receiver as one trace: both deliveries' consumer spans children
// of the publisher's span, client spans with statuses 503 and 200 and the
// CF-Ray, the record's trace_id the trace's id, and the latency histogram's
// exemplar in OpenMetrics naming it (SPEC §13).
func TestOneTracePerEvent(t *testing.T) {
	rc := exportTraces(t)

	// One call a delivery: the 503 spends the first delivery's budget.
	s := hStack(t, map[string]string{"REVOKER_RETRY_MAX_ELAPSED": "1ms", "REVOKER_MAX_DELIVER": "3"})
	s.api.Script("traced2", 503)
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, s.cfg(), serveOptions{log: zaptest.NewLogger(t), ready: func(a string) { addr <- a }})
	}()
	t.Cleanup(func() { cancel(); <-done })
	metricsURL := "http://" + <-addr + "/metrics"

	const tid, publisherSpan = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
	m := nats.NewMsg(s.cfg().LowestPriority())
	m.Data = []byte(`{"account_id":"acct","key_id":"traced2"}`)
	m.Header.Set("traceparent", "00-"+tid+"-"+publisherSpan+"-01")
	queuetest.Eventually(t, 10*time.Second, "the event published", func() bool {
		_, err := s.js.PublishMsg(ctx, m)
		return err == nil
	})
	queuetest.Eventually(t, 20*time.Second, "the record of traced2", func() bool { return len(s.outcomes("traced2")) == 1 })
	if o := s.outcomes("traced2")[0]; o.Outcome != event.Revoked || o.TraceID != tid {
		t.Fatalf("record %+v; want revoked with trace_id %s", o, tid)
	}

	queuetest.Eventually(t, 10*time.Second, "the trace's spans exported", func() bool {
		var process, client int
		for _, sp := range rc.Of(tid) {
			switch sp.GetKind() {
			case tracepb.Span_SPAN_KIND_CONSUMER:
				process++
			case tracepb.Span_SPAN_KIND_CLIENT:
				client++
			}
		}
		return process >= 2 && client >= 2
	})
	var statuses []int64
	for _, sp := range rc.Of(tid) {
		switch sp.GetKind() {
		case tracepb.Span_SPAN_KIND_CONSUMER:
			if sp.GetName() != "process revoke.scheduled" || sp.ParentID() != publisherSpan {
				t.Errorf("consumer span %q with parent %x; want process revoke.scheduled under the publisher's span", sp.GetName(), sp.GetParentSpanId())
			}
		case tracepb.Span_SPAN_KIND_CLIENT:
			_, status, _ := sp.Attr("http.response.status_code")
			ray, _, hasRay := sp.Attr("cf_ray")
			if !hasRay || ray == "" {
				t.Errorf("client span %q has no cf_ray", sp.GetName())
			}
			if strings.Contains(sp.GetName(), "traced2") || strings.Contains(sp.GetName(), "acct") {
				t.Errorf("client span name %q names the account or key", sp.GetName())
			}
			statuses = append(statuses, status)
		}
	}
	if len(statuses) != 2 || statuses[0]+statuses[1] != 503+200 || statuses[0] != 503 && statuses[1] != 503 {
		t.Errorf("client span statuses %v, want 503 and 200", statuses)
	}

	req, _ := http.NewRequest(http.MethodGet, metricsURL, nil)
	req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `revoker_revocation_latency_seconds_bucket`) || !strings.Contains(string(body), `# {trace_id="`+tid+`"}`) {
		t.Fatalf("/metrics (OpenMetrics) has no exemplar naming trace %s", tid)
	}
}

// exportTraces turns tracing on for the test, exporting to a real OTLP/HTTP
// receiver in batches of 100 ms, and returns the receiver.
func exportTraces(t *testing.T) *tracingtest.Receiver {
	t.Helper()
	rc := tracingtest.NewReceiver(t)
	rc.Export(t)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
	shutdown, err := tracing.Setup(context.Background(), "revoker", "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = shutdown(context.Background())
		tracing.SetTracerProvider(nil)
	})
	return rc
}
