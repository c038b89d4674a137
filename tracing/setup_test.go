package tracing_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/revoker/revoker/tracing"
	"github.com/revoker/revoker/tracing/tracingtest"
)

// cleanEnv unsets every OTEL variable for the test, so the machine's own
// cannot change what Setup sees.
func cleanEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, "OTEL_") {
			t.Setenv(name, "")
		}
	}
}

// setup runs Setup and undoes what it installs when the test ends.
func setup(t *testing.T) func(context.Context) error {
	t.Helper()
	shutdown, err := tracing.Setup(context.Background(), "revoker", "v1.2.3")
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	if shutdown == nil {
		t.Fatal("Setup returned a nil shutdown")
	}
	t.Cleanup(func() {
		_ = shutdown(context.Background())
		tracing.SetTracerProvider(nil)
		otel.SetTracerProvider(noop.NewTracerProvider())
	})
	return shutdown
}

func TestSetupWithoutVariablesInstallsNothing(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
	}{
		{"nothing set", nil},
		{"only a protocol and a sampler", map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_TRACES_SAMPLER": "always_on"}},
		{"SDK disabled", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_SDK_DISABLED": "TRUE"}},
		{"exporter none", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_TRACES_EXPORTER": "none"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cleanEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			before := otel.GetTracerProvider()
			if _, ok := before.(*sdktrace.TracerProvider); ok {
				t.Fatal("a provider was installed before the test")
			}
			shutdown := setup(t)

			if otel.GetTracerProvider() != before {
				t.Error("the global tracer provider changed")
			}
			if tracing.Enabled() {
				t.Error("tracing is on")
			}
			_, span := tracing.StartProcess(context.Background(), "revoke.urgent")
			if span.IsRecording() {
				t.Error("StartProcess made a recording span")
			}
			if _, s := otel.Tracer("x").Start(context.Background(), "x"); s.IsRecording() {
				t.Error("the global tracer records")
			}
			if err := shutdown(context.Background()); err != nil {
				t.Errorf("shutdown: %v", err)
			}
		})
	}
}

func TestSetupRefusesBadValues(t *testing.T) {
	endpoint := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
	for _, tc := range []struct {
		env  map[string]string
		name string // the variable the error must name
	}{
		{map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"}, "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "udp"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"},
		{map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "ftp://user:pw@collector/"}, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"},
		{map[string]string{"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"},
		{map[string]string{"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"}, "OTEL_TRACES_SAMPLER_ARG"},
		{map[string]string{"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "NaN"}, "OTEL_TRACES_SAMPLER_ARG"},
		{map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cleanEnv(t)
			for k, v := range endpoint {
				t.Setenv(k, v)
			}
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			shutdown, err := tracing.Setup(context.Background(), "revoker", "test")
			if err == nil {
				_ = shutdown(context.Background())
				t.Fatal("Setup accepted it")
			}
			if !strings.HasPrefix(err.Error(), tc.name+":") || !errors.Is(err, tracing.ErrInvalidSetting) {
				t.Errorf("error %q does not start with %s or wrap ErrInvalidSetting", err, tc.name)
			}
			if strings.Contains(err.Error(), "pw") {
				t.Errorf("error %q quotes the value", err)
			}
			if tracing.Enabled() {
				t.Error("tracing turned on")
			}
		})
	}
}

func TestSetupExportsOverOTLPHTTP(t *testing.T) {
	rc := tracingtest.NewReceiver(t)

	cleanEnv(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rc.URL)
	t.Setenv("OTEL_TRACES_SAMPLER", "always_on")
	shutdown := setup(t)
	if !tracing.Enabled() {
		t.Fatal("tracing is off")
	}
	if _, ok := otel.GetTracerProvider().(*sdktrace.TracerProvider); !ok {
		t.Error("the global tracer provider is not the SDK's")
	}

	ctx := tracing.ForEvent(context.Background(), "REVOCATIONS/7/1")
	ctx, span := tracing.StartProcess(ctx, "revoke.urgent")
	_, w := tracing.StartRecordWrite(ctx, "outcome")
	w.End()
	span.End()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := shutdown(ctx); err != nil { // flushes the batch
		t.Fatalf("shutdown: %v", err)
	}
	if tracing.Enabled() {
		t.Error("tracing still on after shutdown")
	}

	if rc.Requests() == 0 {
		t.Fatal("the collector got nothing")
	}
	var names []string
	for _, s := range rc.Spans() {
		names = append(names, s.GetName())
		if s.Service != "revoker" {
			t.Errorf("span %q from service.name %q", s.GetName(), s.Service)
		}
	}
	got := strings.Join(names, ",")
	if !strings.Contains(got, "process revoke.urgent") || !strings.Contains(got, "write outcome") {
		t.Errorf("spans received: %s", got)
	}
}

// The gRPC exporter connects lazily: Setup succeeds with no collector, and
// an unreachable collector is not a bad value.
func TestSetupGRPCWithoutCollector(t *testing.T) {
	cleanEnv(t)
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:1")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
	t.Setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "200")
	shutdown := setup(t)
	if !tracing.Enabled() {
		t.Fatal("tracing is off")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = shutdown(ctx) // nothing to flush; only that it returns
}
