package tracing

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// The standard variables Setup reads itself; the exporter reads the rest
// (headers, timeout, compression, certificates) and the SDK reads the
// sampler and resource ones.
const (
	envDisabled       = "OTEL_SDK_DISABLED"
	envExporter       = "OTEL_TRACES_EXPORTER"
	envEndpoint       = "OTEL_EXPORTER_OTLP_ENDPOINT"
	envTracesEndpoint = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	envProtocol       = "OTEL_EXPORTER_OTLP_PROTOCOL"
	envTracesProtocol = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
	envSampler        = "OTEL_TRACES_SAMPLER"
	envSamplerArg     = "OTEL_TRACES_SAMPLER_ARG"
)

// Protocols Setup can export with.
const (
	ProtocolGRPC = "grpc"
	ProtocolHTTP = "http/protobuf"
)

// ErrInvalidSetting is wrapped by every error about a bad OTEL variable.
var ErrInvalidSetting = errors.New("invalid setting")

// settings is what the standard variables ask for.
type settings struct {
	on       bool
	protocol string
}

// Setup installs a tracer provider that exports to the OTLP endpoint the
// standard variables name (OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; OTEL_EXPORTER_OTLP_PROTOCOL grpc or
// http/protobuf, the default), through a batch span processor, with the W3C
// trace context propagator, and makes it the global provider as well. The
// SDK honours OTEL_TRACES_SAMPLER (default parentbased_always_on),
// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; service and version are
// the defaults of service.name and service.version.
//
// With no endpoint set, OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none
// it installs nothing and tracing costs nothing. A bad value is an error
// naming the variable (wrapping ErrInvalidSetting); an unreachable collector
// is not: spans it cannot take are dropped and reported to otel's error
// handler.
//
// shutdown flushes the spans still queued, within ctx, and turns tracing
// off; it is never nil.
func Setup(ctx context.Context, service, version string) (shutdown func(context.Context) error, err error) {
	nothing := func(context.Context) error { return nil }
	s, err := readSettings(os.Getenv)
	if err != nil {
		return nothing, err
	}
	if !s.on {
		return nothing, nil
	}

	var exp sdktrace.SpanExporter
	switch s.protocol {
	case ProtocolGRPC:
		exp, err = otlptracegrpc.New(ctx)
	default:
		exp, err = otlptracehttp.New(ctx)
	}
	if err != nil {
		return nothing, fmt.Errorf("trace exporter: %w", err)
	}

	// Later options win: the variables override the program's defaults.
	res, err := resource.New(ctx,
		resource.WithSchemaURL(semconv.SchemaURL),
		resource.WithAttributes(semconv.ServiceName(service), semconv.ServiceVersion(version)),
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithFromEnv(),
	)
	if err != nil {
		// A malformed OTEL_RESOURCE_ATTRIBUTES leaves a partial resource,
		// which is still worth using; anything else is not.
		if res == nil {
			_ = exp.Shutdown(ctx)
			return nothing, fmt.Errorf("trace resource: %w", err)
		}
		otel.Handle(err)
	}

	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(res),
		sdktrace.WithIDGenerator(IDGenerator()),
	)
	SetTracerProvider(tp)
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})

	installed := current.Load()
	return func(ctx context.Context) error {
		// Stop starting spans first, so none is started on a provider
		// that is shutting down; leave a provider installed since alone.
		current.CompareAndSwap(installed, nil)
		return tp.Shutdown(ctx)
	}, nil
}

// readSettings reads and checks the variables Setup decides on. Values are
// never quoted in errors: an endpoint may hold credentials.
func readSettings(getenv func(string) string) (settings, error) {
	get := func(name string) string { return strings.TrimSpace(getenv(name)) }

	if strings.EqualFold(get(envDisabled), "true") {
		return settings{}, nil
	}
	switch strings.ToLower(get(envExporter)) {
	case "", "otlp":
	case "none":
		return settings{}, nil
	default:
		return settings{}, invalid(envExporter, "want otlp or none")
	}

	endpointVar := envTracesEndpoint
	if get(endpointVar) == "" {
		endpointVar = envEndpoint
	}
	if get(endpointVar) == "" {
		return settings{}, nil
	}

	s := settings{on: true, protocol: ProtocolHTTP}
	protocolVar := envTracesProtocol
	if get(protocolVar) == "" {
		protocolVar = envProtocol
	}
	switch p := get(protocolVar); p {
	case "":
	case ProtocolGRPC, ProtocolHTTP:
		s.protocol = p
	default:
		return settings{}, invalid(protocolVar, "want grpc or http/protobuf")
	}

	u, err := url.Parse(get(endpointVar))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return settings{}, invalid(endpointVar, "want an http:// or https:// URL with a host")
	}

	if err := checkSampler(get(envSampler), get(envSamplerArg)); err != nil {
		return settings{}, err
	}
	return s, nil
}

// checkSampler refuses what the SDK would otherwise replace, with only a
// logged complaint, by sampling everything.
func checkSampler(name, arg string) error {
	switch strings.ToLower(name) {
	case "", "always_on", "always_off", "parentbased_always_on", "parentbased_always_off":
		return nil
	case "traceidratio", "parentbased_traceidratio":
		if arg == "" {
			return nil
		}
		r, err := strconv.ParseFloat(arg, 64)
		if err != nil || !(r >= 0 && r <= 1) { // NaN fails both
			return invalid(envSamplerArg, "want a ratio from 0 to 1")
		}
		return nil
	default:
		return invalid(envSampler, "want always_on, always_off, traceidratio or their parentbased_ forms")
	}
}

func invalid(name, want string) error {
	return fmt.Errorf("%s: %w: %s", name, ErrInvalidSetting, want)
}
