package tracing_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/revoker/revoker/tracing"
	"github.com/revoker/revoker/untrusted"
)

const (
	remoteTraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	remoteSpanID  = "00f067aa0ba902b7"
	remoteParent  = "00-" + remoteTraceID + "-" + remoteSpanID + "-01"
)

// install makes an in-memory exporter receive every span this package
// starts until the test ends.
func install(t testing.TB, opts ...sdktrace.TracerProviderOption) *tracetest.InMemoryExporter {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	opts = append([]sdktrace.TracerProviderOption{
		sdktrace.WithSyncer(exp),
		sdktrace.WithIDGenerator(tracing.IDGenerator()),
	}, opts...)
	tp := sdktrace.NewTracerProvider(opts...)
	tracing.SetTracerProvider(tp)
	t.Cleanup(func() {
		tracing.SetTracerProvider(nil)
		_ = tp.Shutdown(context.Background())
	})
	return exp
}

func attrs(s tracetest.SpanStub) map[attribute.Key]attribute.Value {
	m := make(map[attribute.Key]attribute.Value, len(s.Attributes))
	for _, kv := range s.Attributes {
		m[kv.Key] = kv.Value
	}
	return m
}

func only(t *testing.T, exp *tracetest.InMemoryExporter) tracetest.SpanStub {
	t.Helper()
	spans := exp.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("got %d spans, want 1: %v", len(spans), spans)
	}
	return spans[0]
}

func TestStartProcessContinuesTheEventsTrace(t *testing.T) {
	for _, name := range []string{"traceparent", "Traceparent", "TRACEPARENT", "TraceParent"} {
		t.Run(name, func(t *testing.T) {
			exp := install(t)
			h := map[string][]string{name: {remoteParent}, "Nats-Msg-Id": {"ev-1"}}

			ctx := tracing.Extract(context.Background(), tracing.HeaderGetter(h))
			ctx, span := tracing.StartProcess(ctx, "revoke.urgent",
				tracing.MessageID("ev-1"), tracing.ConsumerGroup("revoker-revoke_urgent"), tracing.Delivery(2))
			if got := tracing.TraceID(ctx); got != remoteTraceID {
				t.Errorf("TraceID = %q, want %q", got, remoteTraceID)
			}
			span.End()

			s := only(t, exp)
			if s.Name != "process revoke.urgent" {
				t.Errorf("name = %q", s.Name)
			}
			if s.SpanKind != trace.SpanKindConsumer {
				t.Errorf("kind = %v, want consumer", s.SpanKind)
			}
			if s.SpanContext.TraceID().String() != remoteTraceID || s.Parent.SpanID().String() != remoteSpanID || !s.Parent.IsRemote() {
				t.Errorf("trace %s parent %s (remote %v), want %s %s remote",
					s.SpanContext.TraceID(), s.Parent.SpanID(), s.Parent.IsRemote(), remoteTraceID, remoteSpanID)
			}
			a := attrs(s)
			for k, want := range map[attribute.Key]string{
				"messaging.system":              "nats",
				"messaging.destination.name":    "revoke.urgent",
				"messaging.operation.type":      "process",
				"messaging.message.id":          "ev-1",
				"messaging.consumer.group.name": "revoker-revoke_urgent",
			} {
				if got := a[k].AsString(); got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
			if got := a[tracing.DeliveryKey].AsInt64(); got != 2 {
				t.Errorf("delivery = %d, want 2", got)
			}
		})
	}
}

// A record written in one process and read in another (a replay, a second
// replica) continues the same trace, as a child of the write.
func TestInjectExtractAcrossReplicas(t *testing.T) {
	exp := install(t)

	ctx := tracing.FromTraceParent(context.Background(), remoteParent, "vendor=abc")
	ctx, process := tracing.StartProcess(ctx, "revoke.urgent")
	wctx, write := tracing.StartRecordWrite(ctx, "dead_letter")
	header := map[string][]string{"Traceparent": {"00-11111111111111111111111111111111-2222222222222222-01"}}
	tracing.Inject(wctx, tracing.HeaderSetter(header))
	write.End()
	process.End()

	if _, ok := header["Traceparent"]; ok {
		t.Errorf("the old Traceparent was kept beside the new one: %v", header)
	}
	if len(header["traceparent"]) != 1 || header["tracestate"][0] != "vendor=abc" {
		t.Fatalf("injected %v, want lower-case traceparent and the tracestate", header)
	}

	// The other side.
	ctx2 := tracing.Extract(context.Background(), tracing.HeaderGetter(header))
	_, replay := tracing.StartProcess(ctx2, "revoke.urgent")
	replay.End()

	spans := exp.GetSpans()
	if len(spans) != 3 {
		t.Fatalf("got %d spans, want 3", len(spans))
	}
	w, p, r := spans[0], spans[1], spans[2]
	if w.Name != "write dead_letter" || w.SpanKind != trace.SpanKindProducer {
		t.Errorf("write span: %q %v", w.Name, w.SpanKind)
	}
	if attrs(w)[tracing.RecordKey].AsString() != "dead_letter" {
		t.Errorf("write span lacks %s", tracing.RecordKey)
	}
	if w.Parent.SpanID() != p.SpanContext.SpanID() {
		t.Errorf("write's parent = %s, want the process span %s", w.Parent.SpanID(), p.SpanContext.SpanID())
	}
	if r.Parent.SpanID() != w.SpanContext.SpanID() {
		t.Errorf("replay's parent = %s, want the write span %s", r.Parent.SpanID(), w.SpanContext.SpanID())
	}
	for _, s := range spans {
		if s.SpanContext.TraceID().String() != remoteTraceID {
			t.Errorf("%s: trace %s, want %s", s.Name, s.SpanContext.TraceID(), remoteTraceID)
		}
	}
	if got := r.SpanContext.TraceState().String(); got != "vendor=abc" {
		t.Errorf("tracestate = %q", got)
	}
}

func TestHeaderGetter(t *testing.T) {
	h := map[string][]string{"TRACEPARENT": {remoteParent}, "tracestate": {"a=1", "b=2"}}
	get := tracing.HeaderGetter(h)
	if got := get("traceparent"); got != remoteParent {
		t.Errorf("traceparent = %q", got)
	}
	if got := get("TraceState"); got != "a=1,b=2" {
		t.Errorf("tracestate = %q, want both lines joined", got)
	}
	if got := get("nothing"); got != "" {
		t.Errorf("missing = %q", got)
	}

	// Two trace contexts in two letter cases: neither is believed.
	h = map[string][]string{
		"traceparent": {remoteParent},
		"Traceparent": {"00-11111111111111111111111111111111-2222222222222222-01"},
	}
	for range 10 {
		if ctx := tracing.Extract(context.Background(), tracing.HeaderGetter(h)); tracing.TraceID(ctx) != "" {
			t.Fatalf("conflicting headers gave trace %s", tracing.TraceID(ctx))
		}
	}
}

func TestExtractIgnoresWhatIsNotATraceContext(t *testing.T) {
	for _, tp := range []string{"", "garbage", "00-" + remoteTraceID + "-0000000000000000-01", "00-00000000000000000000000000000000-" + remoteSpanID + "-01"} {
		ctx := tracing.FromTraceParent(context.Background(), tp, "")
		if id := tracing.TraceID(ctx); id != "" {
			t.Errorf("%q: trace id %q, want none", tp, id)
		}
		if l := tracing.ExemplarLabels(ctx); l != nil {
			t.Errorf("%q: exemplar %v, want nil", tp, l)
		}
	}
	if ctx := tracing.Extract(context.Background(), nil); tracing.TraceID(ctx) != "" {
		t.Error("a nil getter gave a trace")
	}
}

func TestExemplarLabels(t *testing.T) {
	ctx := tracing.FromTraceParent(context.Background(), remoteParent, "")
	if got := tracing.ExemplarLabels(ctx); got["trace_id"] != remoteTraceID || len(got) != 1 {
		t.Errorf("sampled: %v", got)
	}
	unsampled := "00-" + remoteTraceID + "-" + remoteSpanID + "-00"
	ctx = tracing.FromTraceParent(context.Background(), unsampled, "")
	if got := tracing.ExemplarLabels(ctx); got != nil {
		t.Errorf("unsampled: %v, want nil", got)
	}
	if tracing.TraceID(ctx) != remoteTraceID {
		t.Error("an unsampled trace still names its id in the records")
	}
}

// Tracing off: the context passes through, the span does nothing, and a
// span the caller's context holds is not the one handed back.
func TestStartWhileOff(t *testing.T) {
	tracing.SetTracerProvider(nil)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	parentCtx, parent := tp.Tracer("caller").Start(context.Background(), "caller's")

	ctx, span := tracing.StartProcess(parentCtx, "revoke.urgent")
	if ctx != parentCtx || span.IsRecording() || span.SpanContext().IsValid() {
		t.Fatalf("off: got a new context or a live span")
	}
	span.End()
	_, w := tracing.StartRecordWrite(parentCtx, "outcome")
	w.End()
	if !parent.IsRecording() {
		t.Fatal("ending the returned span ended the caller's")
	}
	if tracing.TraceID(ctx) != parent.SpanContext().TraceID().String() {
		t.Error("TraceID does not read the caller's trace")
	}
}

func TestForEventGivesEveryDeliveryOneTrace(t *testing.T) {
	exp := install(t)
	identity := "REVOCATIONS/42/1764064800000000000"

	var ids []string
	for range 3 { // three deliveries, as on three replicas
		ctx := tracing.ForEvent(context.Background(), identity)
		ctx, span := tracing.StartProcess(ctx, "revoke.urgent")
		ids = append(ids, tracing.TraceID(ctx))
		span.End()
	}
	want := tracing.EventTraceID(identity).String()
	for i, id := range ids {
		if id != want {
			t.Errorf("delivery %d: trace %s, want %s", i, id, want)
		}
	}
	spans := exp.GetSpans()
	if spans[0].SpanContext.SpanID() == spans[1].SpanContext.SpanID() {
		t.Error("two deliveries share a span id")
	}

	other := tracing.EventTraceID("REVOCATIONS/42/1764064800000000001")
	if other.String() == want {
		t.Error("a stream made again (same sequence, new time) shares the old event's trace")
	}

	// A trace context the event carries wins.
	ctx := tracing.ForEvent(tracing.FromTraceParent(context.Background(), remoteParent, ""), identity)
	ctx, span := tracing.StartProcess(ctx, "revoke.urgent")
	span.End()
	if got := tracing.TraceID(ctx); got != remoteTraceID {
		t.Errorf("with a traceparent: trace %s, want %s", got, remoteTraceID)
	}
}

func TestEndMarksFailure(t *testing.T) {
	exp := install(t)
	_, span := tracing.StartRecordWrite(context.Background(), "outcome")
	tracing.End(span, errors.New("outcome stream: no responders"))
	s := only(t, exp)
	if s.Status.Code != codes.Error || s.Status.Description != "outcome stream: no responders" {
		t.Errorf("status = %+v", s.Status)
	}
}

// TestConflictingTraceparentsMakeNone: two traceparent headers that
// disagree make no trace context, whichever comes first and whatever
// version the other claims (a future version may carry more fields, so
// the two joined could parse as the first).
func TestConflictingTraceparentsMakeNone(t *testing.T) {
	const other = "01-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbb-01-x"
	for _, h := range []map[string][]string{
		{"traceparent": {remoteParent}, "Traceparent": {other}},
		{"traceparent": {other, remoteParent}},
	} {
		if ctx := tracing.Extract(context.Background(), tracing.HeaderGetter(h)); tracing.TraceID(ctx) != "" {
			t.Errorf("%v: conflicting headers gave trace %s", h, tracing.TraceID(ctx))
		}
	}
}

// The event id on a span is cut as the records cut it (SPEC §5: 256
// characters, a visible ellipsis), so a trace store searched by a
// record's event_id finds the span, and an id of kilobytes does not swell
// every export.
func TestMessageIDCutAsRecordsCutIt(t *testing.T) {
	long := strings.Repeat("é", 300)
	got := tracing.MessageID(long).Value.AsString()
	if want := untrusted.Chars(long, 256); got != want {
		t.Fatalf("messaging.message.id of a 300-character id: %d characters %q…, want the record's cut (%d characters)",
			utf8.RuneCountInString(got), got[:16], utf8.RuneCountInString(want))
	}
	if short := "incident-42"; tracing.MessageID(short).Value.AsString() != short {
		t.Fatal("a short id was changed")
	}
}
