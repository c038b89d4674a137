package main

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestReplayKeepsTheTraceState: an event published with a traceparent and
// a tracestate is dead-lettered (400) and replayed; the replay's delivery
// continues the W3C trace context the event brought, tracestate included
// (SPEC §13: "continues the W3C trace context it receives —
// traceparent/tracestate"; one event's spans form one trace). Every
// consumer span of the event carries the publisher's tracestate.
func TestReplayKeepsTheTraceState(t *testing.T) {
	rc := exportTraces(t)
	const tid, state = "5b8efff798038103d269b633813fc60d", "vendor=abc"
	s := hStack(t, nil)
	s.api.Script("tsreplay1", 400)
	s.startWorker()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := nats.NewMsg(s.cfg().LowestPriority())
	m.Data = []byte(`{"account_id":"acct","key_id":"tsreplay1"}`)
	m.Header.Set("traceparent", "00-"+tid+"-eee19b7ec3c1b174-01")
	m.Header.Set("tracestate", state)
	if _, err := s.js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	queuetest.Eventually(t, 10*time.Second, "dead-lettered", func() bool { return s.msgs(s.cfg().DLQStream) == 1 })
	s.run("dlq", "replay", "--all").want(t, exitOK, "replayed 1:")
	queuetest.Eventually(t, 10*time.Second, "revoked by its replay", func() bool { return len(s.outcomes("tsreplay1")) == 2 })
	if o := s.outcomes("tsreplay1"); o[1].Outcome != event.Revoked || o[1].TraceID != tid {
		t.Fatalf("outcomes %+v; want the replay revoked in trace %s", o, tid)
	}
	queuetest.Eventually(t, 10*time.Second, "both deliveries' consumer spans exported", func() bool {
		n := 0
		for _, sp := range rc.Of(tid) {
			if sp.GetKind() == tracepb.Span_SPAN_KIND_CONSUMER {
				n++
			}
		}
		return n == 2
	})
	for _, sp := range rc.Of(tid) {
		if sp.GetKind() == tracepb.Span_SPAN_KIND_CONSUMER && sp.GetTraceState() != state {
			t.Errorf("consumer span %q (parent %s) has tracestate %q, want the event's %q", sp.GetName(), sp.ParentID(), sp.GetTraceState(), state)
		}
	}
}
