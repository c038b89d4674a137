// Package tracing gives revoker OpenTelemetry traces (the contract's §13):
// it carries the W3C trace context an event brings, starts the spans of a
// delivery, its API calls and its record writes, and names the trace in
// records, log lines and exemplars.
//
// Tracing is off until Setup (or SetTracerProvider) installs a provider.
// While it is off every Start function returns the context it was given and
// a span that does nothing, without allocating, so call sites need no
// switch of their own.
//
// Trace context travels whether or not spans are exported: Extract, Inject
// and FromTraceParent always speak W3C trace context, so an event that
// arrives with a traceparent names its trace in the records even on a
// replica that exports nothing.
package tracing

import (
	"context"
	"crypto/rand"
	"slices"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/untrusted"
)

// ScopeName names revoker's spans' instrumentation scope.
const ScopeName = "github.com/revoker/revoker"

// Attribute keys revoker adds beyond the semantic conventions.
const (
	// CFRayKey holds the API answer's CF-Ray header: what Cloudflare
	// support asks for about one call, and what the records carry.
	CFRayKey = attribute.Key("cf_ray")
	// RecordKey names what a record write writes (outcome, dead_letter, …).
	RecordKey = attribute.Key("revoker.record")
	// DeliveryKey is the delivery count of the message being processed.
	DeliveryKey = attribute.Key("revoker.delivery")
)

// state is what SetTracerProvider installs; nil means tracing is off.
type state struct {
	tp     trace.TracerProvider
	tracer trace.Tracer
}

var current atomic.Pointer[state]

// w3c is the only propagation revoker speaks (§13): no baggage, no vendor
// formats.
var w3c = propagation.TraceContext{}

// off is the span returned while tracing is off. It is never the span in
// the caller's context, so ending it cannot end someone else's span.
var off = trace.SpanFromContext(context.Background())

// SetTracerProvider makes tp the provider of every span this package starts;
// nil turns tracing off. Setup calls it; tests and programs that build their
// own provider call it directly (build it with IDGenerator so that events
// without a trace context still get one trace across deliveries).
func SetTracerProvider(tp trace.TracerProvider) {
	if tp == nil {
		current.Store(nil)
		return
	}
	current.Store(&state{tp: tp, tracer: tp.Tracer(ScopeName)})
}

// Enabled reports whether a provider is installed.
func Enabled() bool { return current.Load() != nil }

// HeaderGetter returns a lookup in h that ignores letter case, for Extract:
// NATS headers are case-sensitive maps, and publishers write Traceparent as
// often as traceparent. Two traceparent values that disagree make none
// (ignored, as W3C asks) rather than a random pick, and two that agree
// make that one; tracestate's values are joined with commas in a fixed
// order, each once, as list-members split over headers are.
func HeaderGetter(h map[string][]string) func(name string) string {
	return func(name string) string {
		var keys []string
		for k := range h {
			if strings.EqualFold(k, name) {
				keys = append(keys, k)
			}
		}
		if len(keys) == 0 {
			return ""
		}
		sort.Strings(keys)
		var vals []string
		var seen map[string]bool // past a few values: linear, whatever their number
		for _, k := range keys {
			for _, v := range h[k] {
				// The same value twice (two spellings, a header sent twice)
				// is one: only values that disagree make no context.
				if seen != nil {
					if !seen[v] {
						seen[v] = true
						vals = append(vals, v)
					}
					continue
				}
				if !slices.Contains(vals, v) {
					vals = append(vals, v)
				}
				if len(vals) == 8 {
					seen = make(map[string]bool)
					for _, x := range vals {
						seen[x] = true
					}
				}
			}
		}
		if len(vals) > 1 && !strings.EqualFold(name, "tracestate") {
			// Joined, two traceparents that disagree could still parse
			// (a future version may carry more fields after the flags):
			// they make none.
			return ""
		}
		return strings.Join(vals, ",")
	}
}

// HeaderSetter returns a setter into h for Inject: it stores name exactly
// as given and removes any other letter case of it, so a republished message
// never carries two trace contexts.
func HeaderSetter(h map[string][]string) func(name, value string) {
	return func(name, value string) {
		for k := range h {
			if k != name && strings.EqualFold(k, name) {
				delete(h, k)
			}
		}
		h[name] = []string{value}
	}
}

// Extract continues the W3C trace context found through get (traceparent,
// tracestate); a missing or malformed one leaves ctx as it is.
func Extract(ctx context.Context, get func(name string) string) context.Context {
	if get == nil {
		return ctx
	}
	return w3c.Extract(ctx, carrier{get: get})
}

// Inject writes ctx's trace context through set, as lower-case traceparent
// and (when not empty) tracestate; nothing when ctx carries none.
func Inject(ctx context.Context, set func(name, value string)) {
	if set == nil {
		return
	}
	w3c.Inject(ctx, carrier{set: set})
}

// FromTraceParent continues the trace context of a CloudEvent's traceparent
// and tracestate extensions (§14).
func FromTraceParent(ctx context.Context, traceparent, tracestate string) context.Context {
	if traceparent == "" {
		return ctx
	}
	return Extract(ctx, func(name string) string {
		switch name {
		case "traceparent":
			return traceparent
		case "tracestate":
			return tracestate
		}
		return ""
	})
}

// carrier adapts a getter or a setter to propagation.TextMapCarrier.
type carrier struct {
	get func(string) string
	set func(string, string)
}

var _ propagation.TextMapCarrier = carrier{}

func (c carrier) Get(key string) string {
	if c.get == nil {
		return ""
	}
	return c.get(key)
}

func (c carrier) Set(key, value string) {
	if c.set != nil {
		c.set(key, value)
	}
}

// Keys is not needed by the W3C propagator, which asks for its two names.
func (c carrier) Keys() []string { return nil }

// MessageID is the messaging.message.id attribute (the event id).
// The id is cut as records and logs cut it, so that a search by a record's
// event_id finds the span, and an id of kilobytes does not swell exports.
func MessageID(id string) attribute.KeyValue {
	return semconv.MessagingMessageID(untrusted.Chars(id, event.MaxRecordedID))
}

// ConsumerGroup is the messaging.consumer.group.name attribute (the durable
// consumer's name).
func ConsumerGroup(name string) attribute.KeyValue { return semconv.MessagingConsumerGroupName(name) }

// Delivery is the revoker.delivery attribute (JetStream's delivery count).
func Delivery(n uint64) attribute.KeyValue { return DeliveryKey.Int64(int64(n)) }

var natsSystem = semconv.MessagingSystemKey.String("nats")

// StartProcess starts the consumer span of one delivery from subject,
// named "process <subject>", as a child of the trace context in ctx (see
// Extract and ForEvent). attrs adds to the messaging attributes (MessageID,
// ConsumerGroup, Delivery). Never put account or key ids in attrs: they
// belong to the records, not to a trace store.
func StartProcess(ctx context.Context, subject string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	st := current.Load()
	if st == nil {
		return ctx, off
	}
	// A copy, so that attrs does not escape and callers' variadic slices
	// stay on the stack while tracing is off.
	kv := make([]attribute.KeyValue, 0, 4+len(attrs))
	kv = append(kv,
		natsSystem,
		semconv.MessagingDestinationName(subject),
		semconv.MessagingOperationTypeProcess,
		semconv.MessagingOperationName("process"),
	)
	kv = append(kv, attrs...)
	return st.tracer.Start(ctx, "process "+subject,
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(kv...))
}

// StartRecordWrite starts the producer span of one record write, named
// "write <what>" (what: outcome, dead_letter, ledger, …). Inject its context
// into the record's headers so that whoever reads or replays the record
// continues the event's trace.
func StartRecordWrite(ctx context.Context, what string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	st := current.Load()
	if st == nil {
		return ctx, off
	}
	kv := make([]attribute.KeyValue, 0, 4+len(attrs))
	kv = append(kv,
		natsSystem,
		semconv.MessagingOperationTypeSend,
		semconv.MessagingOperationName("write"),
		RecordKey.String(what),
	)
	kv = append(kv, attrs...)
	return st.tracer.Start(ctx, "write "+what,
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(kv...))
}

// End ends span, marking it failed with err's text when err is not nil.
// err must be fit for a trace store: no secrets (revoker's errors never
// carry any).
func End(span trace.Span, err error) {
	if err != nil && span.IsRecording() {
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// TraceID returns ctx's trace id as 32 lower-case hex digits, or "" when
// ctx carries no valid span context. It is what the records' trace_id and
// Revoker-Trace-Id hold, and what log lines about the event name.
func TraceID(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return ""
	}
	return sc.TraceID().String()
}

// ValidTraceID reports whether id is a trace id as revoker writes one: 32
// lower-case hex digits, not all zero. A trace id read back from a record
// is shown only if it is one.
func ValidTraceID(id string) bool {
	t, err := trace.TraceIDFromHex(id)
	return err == nil && t.IsValid() && t.String() == id
}

// ExemplarLabels returns the exemplar labels for an observation made in ctx,
// {"trace_id": id}, for prometheus.ExemplarObserver's ObserveWithExemplar;
// nil when ctx carries no sampled trace, since an exemplar pointing at a
// trace nobody kept leads nowhere.
//
//	if eo, ok := hist.(prometheus.ExemplarObserver); ok && labels != nil {
//		eo.ObserveWithExemplar(v, labels)
//	}
func ExemplarLabels(ctx context.Context) prometheus.Labels {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() || !sc.IsSampled() {
		return nil
	}
	return prometheus.Labels{"trace_id": sc.TraceID().String()}
}

// StartPublish starts the producer span of an event a command publishes,
// named "publish <subject>", continuing the trace in ctx if there is one.
// While tracing is off it still gives the event a trace of its own (random
// ids, marked sampled), so that the id the command prints is the one the
// worker's records and spans carry.
func StartPublish(ctx context.Context, subject string) (context.Context, trace.Span) {
	if st := current.Load(); st != nil {
		return st.tracer.Start(ctx, "publish "+subject,
			trace.WithSpanKind(trace.SpanKindProducer),
			trace.WithAttributes(natsSystem, semconv.MessagingDestinationName(subject), semconv.MessagingOperationTypeSend))
	}
	if trace.SpanContextFromContext(ctx).IsValid() {
		return ctx, off
	}
	var tid trace.TraceID
	var sid trace.SpanID
	_, _ = rand.Read(tid[:])
	_, _ = rand.Read(sid[:])
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled})
	return trace.ContextWithSpanContext(ctx, sc), off
}
