package worker_test

import (
	"context"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/tracing"
	"github.com/revoker/revoker/untrusted"
	"github.com/revoker/revoker/worker"
)

const (
	traceID     = "4bf92f3577b34da6a3ce929d0e0e4736"
	traceParent = "00-" + traceID + "-00f067aa0ba902b7-01"
)

// TestTraceIDInRecords: the trace context an event carries, in a NATS
// header of any letter case, names the trace in its records (SPEC §13).
func TestTraceIDInRecords(t *testing.T) {
	for _, name := range []string{"traceparent", "Traceparent", "TRACEPARENT"} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, nil, answer(400, rejected, 0))
			h.handle(&fakeDelivery{body: goodEvent, header: map[string]string{name: traceParent}})
			if o := onlyRecord(t, h); o.TraceID != traceID {
				t.Fatalf("record trace_id %q, want %q", o.TraceID, traceID)
			}
			if dl := h.records.dlq[0]; dl.TraceID != traceID {
				t.Fatalf("dead letter trace id %q, want %q", dl.TraceID, traceID)
			}
		})
	}
	h := newHarness(t, nil, answer(200, revoked, 0))
	h.handle(&fakeDelivery{body: goodEvent})
	if o := onlyRecord(t, h); o.TraceID != "" {
		t.Fatalf("trace_id %q for an event that carried no trace context (tracing off)", o.TraceID)
	}
	// Two spellings that disagree: neither is believed, as the ingress and
	// the service read them.
	h = newHarness(t, nil, answer(200, revoked, 0))
	h.handle(&fakeDelivery{body: goodEvent, header: map[string]string{
		"traceparent": traceParent, "Traceparent": "00-11111111111111111111111111111111-2222222222222222-01"}})
	if o := onlyRecord(t, h); o.TraceID != "" {
		t.Fatalf("trace_id %q from one of two traceparent headers that disagree", o.TraceID)
	}
	// Two that agree are that one.
	h = newHarness(t, nil, answer(200, revoked, 0))
	h.handle(&fakeDelivery{body: goodEvent, header: map[string]string{"traceparent": traceParent, "Traceparent": traceParent}})
	if o := onlyRecord(t, h); o.TraceID != traceID {
		t.Fatalf("trace_id %q from two traceparent headers that agree, want %q", o.TraceID, traceID)
	}
}

// TestCloudEvent: a structured-mode CloudEvent is revoked like the event
// in its data; its id is the event's id when no Nats-Msg-Id is set, and
// its traceparent extension is the trace context (SPEC §14).
func TestCloudEvent(t *testing.T) {
	ce := `{"specversion":"1.0","id":"ce-42","source":"/soar","type":"com.example.revoke",` +
		`"traceparent":"` + traceParent + `","data":` + goodEvent + `}`
	ct := map[string]string{"Content-Type": "application/cloudevents+json; charset=utf-8"}

	h := newHarness(t, nil, answer(200, revoked, 0))
	h.handle(&fakeDelivery{body: ce, header: ct})
	o := onlyRecord(t, h)
	if o.Outcome != event.Revoked || o.EventID != "ce-42" || o.TraceID != traceID || o.KeyID != "key1" {
		t.Fatalf("record %+v; want revoked, event id ce-42, trace %s", o, traceID)
	}

	withID := map[string]string{"Content-Type": ct["Content-Type"], "Nats-Msg-Id": "pub-1"}
	h = newHarness(t, nil, answer(200, revoked, 0))
	h.handle(&fakeDelivery{body: ce, header: withID})
	if o := onlyRecord(t, h); o.EventID != "ev-1" { // the fake's Nats-Msg-Id
		t.Fatalf("event id %q; a Nats-Msg-Id beats the CloudEvent's id", o.EventID)
	}

	// A header in another letter case is no Nats-Msg-Id to JetStream,
	// which neither dedupes on it nor names the event by it.
	lower := map[string]string{"Content-Type": ct["Content-Type"], "nats-msg-id": "pub-2"}
	h = newHarness(t, nil, answer(200, revoked, 0))
	h.handle(&fakeDelivery{body: ce, header: lower})
	if o := onlyRecord(t, h); o.EventID != "ce-42" {
		t.Fatalf("event id %q with a lower-case nats-msg-id header; want the CloudEvent's ce-42", o.EventID)
	}
	// A traceparent header that is no trace context leaves the
	// CloudEvent's own.
	badTrace := map[string]string{"Content-Type": ct["Content-Type"], "traceparent": "not-a-traceparent"}
	h = newHarness(t, nil, answer(200, revoked, 0))
	h.handle(&fakeDelivery{body: ce, header: badTrace})
	if o := onlyRecord(t, h); o.TraceID != traceID {
		t.Fatalf("trace_id %q with an invalid traceparent header; want the CloudEvent's %s", o.TraceID, traceID)
	}

	h = newHarness(t, nil, answer(200, revoked, 0))
	h.handle(&fakeDelivery{body: `{"specversion":"0.3","id":"x","source":"s","type":"t","data":` + goodEvent + `}`, header: ct})
	if o := onlyRecord(t, h); o.Outcome != event.DeadLettered || o.Reason != event.InvalidEvent || h.api.calls != 0 {
		t.Fatalf("record %+v after %d calls; a CloudEvent breaking its rules is an invalid event", o, h.api.calls)
	}
	// A valid envelope whose data breaks SPEC §2 is dead-lettered under
	// the envelope's id and trace.
	h = newHarness(t, nil, answer(200, revoked, 0))
	h.handle(&fakeDelivery{body: `{"specversion":"1.0","id":"ce-43","source":"s","type":"t","traceparent":"` + traceParent +
		`","data":{"account_id":"acct1","key_id":"no-dashes"}}`, header: ct})
	if o := onlyRecord(t, h); o.Reason != event.InvalidEvent || o.EventID != "ce-43" || o.TraceID != traceID {
		t.Fatalf("record %+v; want invalid_event under event id ce-43, trace %s", o, traceID)
	}
	if dl := h.records.dlq[0]; dl.EventID != "ce-43" || dl.TraceID != traceID {
		t.Fatalf("dead letter event id %q, trace id %q; want ce-43, %s", dl.EventID, dl.TraceID, traceID)
	}
	// Without the content type, the same body is an event of its own, and
	// lacks account_id.
	h = newHarness(t, nil, answer(200, revoked, 0))
	h.handle(&fakeDelivery{body: ce})
	if o := onlyRecord(t, h); o.Reason != event.InvalidEvent {
		t.Fatalf("record %+v; a CloudEvent body without its content type is not an event", o)
	}
}

// A long event id is cut in the outcome record as in the dead-letter
// record and the logs (SPEC §10): at most 256 characters, however many
// bytes each, the ellipsis one of them.
func TestRecordCutsALongEventID(t *testing.T) {
	for _, tc := range []struct{ id, want string }{
		{strings.Repeat("i", 400), strings.Repeat("i", 255) + untrusted.Ellipsis},
		{strings.Repeat("é", 200), strings.Repeat("é", 200)},
		{strings.Repeat("é", 300), strings.Repeat("é", 255) + untrusted.Ellipsis},
	} {
		h := newHarness(t, nil, answer(200, revoked, 0))
		h.handle(&fakeDelivery{id: tc.id, body: goodEvent})
		if o := onlyRecord(t, h); o.EventID != tc.want {
			t.Errorf("a %d-character id: record event_id %d characters; want %d", utf8.RuneCountInString(tc.id),
				utf8.RuneCountInString(o.EventID), utf8.RuneCountInString(tc.want))
		}
	}
}

// TestRecordWriteInTheEventsTrace: one event's spans form one trace
// (SPEC §13). A revoked event's record write, the trail's first try, by
// FirstOutcome or by Outcome, is in the event's trace.
func TestRecordWriteInTheEventsTrace(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp), sdktrace.WithIDGenerator(tracing.IDGenerator()))
	tracing.SetTracerProvider(tp)
	t.Cleanup(func() { tracing.SetTracerProvider(nil); _ = tp.Shutdown(context.Background()) })

	for _, withFirst := range []bool{false, true} {
		exp.Reset()
		h := newHarness(t, nil, answer(200, revoked, 0))
		if withFirst { // queue.Records' way: FirstOutcome
			fr := &firstRecords{fakeRecords: h.records}
			h.w = worker.New(worker.Config{
				Subjects: []string{"revoke.urgent", "revoke.scheduled"}, RetryInitial: time.Millisecond,
				RetryMaxInterval: 5 * time.Millisecond, RetryMaxElapsed: 50 * time.Millisecond, HandBackDelay: time.Millisecond, Name: "test",
			}, worker.Deps{API: h.api, Gate: h.gate, Records: fr, Ledger: h.ledger, Metrics: h.m, Ready: h.ready, Log: zap.NewNop()})
		}
		d := &fakeDelivery{body: goodEvent, delivered: 1, maxDeliver: 3}
		ctx := context.Background()
		h.w.Handle(ctx, ctx, d)
		if len(d.settled) != 1 || d.settled[0] != "ack" {
			t.Fatalf("first=%v: not acked", withFirst)
		}
		var processTrace string
		for _, s := range exp.GetSpans() {
			if !s.Parent.IsValid() && s.Name != "write outcome" {
				processTrace = s.SpanContext.TraceID().String()
			}
		}
		for _, s := range exp.GetSpans() {
			t.Logf("first=%v span %q trace %s parent %s", withFirst, s.Name, s.SpanContext.TraceID(), s.Parent.SpanID())
			if s.Name == "write outcome" && s.SpanContext.TraceID().String() != processTrace {
				t.Errorf("first=%v: span %q in trace %s, not the event's %s", withFirst, s.Name, s.SpanContext.TraceID(), processTrace)
			}
		}
	}
}
