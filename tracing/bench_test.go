package tracing_test

import (
	"context"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/revoker/revoker/tracing"
)

// BenchmarkStartProcess is the cost a delivery pays for its span: nothing
// worth counting while tracing is off.
func BenchmarkStartProcess(b *testing.B) {
	parent := tracing.FromTraceParent(context.Background(), remoteParent, "")

	b.Run("off", func(b *testing.B) {
		tracing.SetTracerProvider(nil)
		b.ReportAllocs()
		for b.Loop() {
			_, span := tracing.StartProcess(parent, "revoke.urgent", tracing.MessageID("ev-1"), tracing.Delivery(1))
			span.End()
		}
	})
	b.Run("on", func(b *testing.B) {
		tp := sdktrace.NewTracerProvider(
			sdktrace.WithBatcher(tracetest.NewNoopExporter()),
			sdktrace.WithIDGenerator(tracing.IDGenerator()),
		)
		tracing.SetTracerProvider(tp)
		b.Cleanup(func() {
			tracing.SetTracerProvider(nil)
			_ = tp.Shutdown(context.Background())
		})
		b.ReportAllocs()
		for b.Loop() {
			_, span := tracing.StartProcess(parent, "revoke.urgent", tracing.MessageID("ev-1"), tracing.Delivery(1))
			span.End()
		}
	})
}
