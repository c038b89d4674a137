// Package tracingtest plays an OpenTelemetry collector in tests: an
// OTLP/HTTP endpoint that decodes the protobuf the exporters really send,
// so a test sees the spans a real backend would.
package tracingtest

import (
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// Span is one exported span and the resource that sent it.
type Span struct {
	*tracepb.Span
	// Service and Instance are the resource's service.name and
	// service.instance.id.
	Service, Instance string
}

// TraceID is the span's trace id in hex.
func (s Span) TraceID() string { return hex.EncodeToString(s.GetTraceId()) }

// ParentID is the span's parent span id in hex ("" for a root).
func (s Span) ParentID() string { return hex.EncodeToString(s.GetParentSpanId()) }

// Attr returns the string and integer values of the span's attribute key.
func (s Span) Attr(key string) (str string, n int64, ok bool) {
	for _, a := range s.GetAttributes() {
		if a.GetKey() == key {
			return a.GetValue().GetStringValue(), a.GetValue().GetIntValue(), true
		}
	}
	return "", 0, false
}

// Receiver is the collector: it serves POST /v1/traces and keeps every
// span.
type Receiver struct {
	// URL is where it listens: the value of OTEL_EXPORTER_OTLP_ENDPOINT.
	URL string

	mu       sync.Mutex
	requests int
	spans    []Span
}

// NewReceiver starts a receiver, stopped when the test ends.
func NewReceiver(t testing.TB) *Receiver {
	rc := &Receiver{}
	srv := httptest.NewServer(rc)
	t.Cleanup(srv.Close)
	rc.URL = srv.URL
	return rc
}

// Export points the standard OTEL variables at rc, as an operator would,
// sampling every trace a parent asks for.
func (rc *Receiver) Export(t testing.TB) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rc.URL)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	t.Setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
}

// Env is Export's variables as KEY=value, for a process the test starts.
func (rc *Receiver) Env() []string {
	return []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT=" + rc.URL,
		"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
		"OTEL_TRACES_SAMPLER=parentbased_always_on",
	}
}

// ServeHTTP takes one export request.
func (rc *Receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" {
		http.NotFound(w, r)
		return
	}
	body, _ := io.ReadAll(r.Body)
	var req collectortrace.ExportTraceServiceRequest
	if err := proto.Unmarshal(body, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rc.mu.Lock()
	rc.requests++
	for _, rs := range req.GetResourceSpans() {
		var service, instance string
		for _, a := range rs.GetResource().GetAttributes() {
			switch a.GetKey() {
			case "service.name":
				service = a.GetValue().GetStringValue()
			case "service.instance.id":
				instance = a.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				rc.spans = append(rc.spans, Span{Span: s, Service: service, Instance: instance})
			}
		}
	}
	rc.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-protobuf")
	out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
	_, _ = w.Write(out)
}

// Requests is how many export requests arrived.
func (rc *Receiver) Requests() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.requests
}

// Spans returns every span received.
func (rc *Receiver) Spans() []Span {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]Span(nil), rc.spans...)
}

// Of returns the spans of trace tid (hex).
func (rc *Receiver) Of(tid string) []Span {
	var out []Span
	for _, s := range rc.Spans() {
		if s.TraceID() == tid {
			out = append(out, s)
		}
	}
	return out
}
