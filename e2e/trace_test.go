package e2e

import (
	"context"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue/queuetest"
)

// collector plays an OTLP/HTTP receiver: it decodes the protobuf the
// exporters send and keeps each span with its process's instance id.
type collector struct {
	mu    sync.Mutex
	spans []exported
}

type exported struct {
	instance string
	span     *tracepb.Span
}

func (c *collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
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
	c.mu.Lock()
	for _, rs := range req.GetResourceSpans() {
		var instance string
		for _, a := range rs.GetResource().GetAttributes() {
			if a.GetKey() == "service.instance.id" {
				instance = a.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				c.spans = append(c.spans, exported{instance, s})
			}
		}
	}
	c.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-protobuf")
	out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
	_, _ = w.Write(out)
}

// consumers returns, by instance, the consumer spans of trace tid and
// their parents.
func (c *collector) consumers(tid string) map[string][]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string][]string{}
	for _, e := range c.spans {
		if hex.EncodeToString(e.span.GetTraceId()) == tid && e.span.GetKind() == tracepb.Span_SPAN_KIND_CONSUMER {
			out[e.instance] = append(out[e.instance], hex.EncodeToString(e.span.GetParentSpanId()))
		}
	}
	return out
}

// TestRedeliveryOnAnotherReplicaJoinsTheTrace: an event published with a
// lower-case traceparent is answered 503 on replica one, which gives it
// back and stops; replica two, another process, takes the next delivery
// and revokes the key. Both processes' consumer spans reach the receiver
// in the publisher's trace, children of the publisher's span, and the
// record names that trace (SPEC §13: one trace across deliveries and
// replicas).
func TestRedeliveryOnAnotherReplicaJoinsTheTrace(t *testing.T) {
	srv := queuetest.Server(t)
	api := cloudflaretest.NewServer(cloudflaretest.WithToken(token))
	t.Cleanup(api.Close)
	rc := &collector{}
	otlp := httptest.NewServer(rc)
	t.Cleanup(otlp.Close)
	env := func(instance string) []string {
		return []string{
			"REVOKER_STREAM_REPLICAS=1",
			"REVOKER_RETRY_MAX_ELAPSED=1ms", // one call a delivery
			"REVOKER_RETRY_MAX_INTERVAL=3s", // the give-back's delay
			"REVOKER_MAX_DELIVER=5",
			"OTEL_EXPORTER_OTLP_ENDPOINT=" + otlp.URL,
			"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
			"OTEL_TRACES_SAMPLER=parentbased_always_on",
			"OTEL_BSP_SCHEDULE_DELAY=100",
			"OTEL_RESOURCE_ATTRIBUTES=service.instance.id=" + instance,
		}
	}
	const key = "traced00001"
	api.Script(key, http.StatusServiceUnavailable)

	one := startWorker(t, "replica-one", srv.ClientURL(), api, env("one")...)
	one.waitReady(30 * time.Second)
	_, js := queuetest.ConnectURL(t, srv.ClientURL())
	const tid, publisherSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	m := nats.NewMsg("revoke.scheduled")
	m.Data = []byte(`{"account_id":"` + account + `","key_id":"` + key + `"}`)
	m.Header.Set("traceparent", "00-"+tid+"-"+publisherSpan+"-01")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "replica one giving the event back after its 503", func() bool {
		return one.logContains(`"event requeued"`) && api.Count() >= 1
	})
	one.stop()

	two := startWorker(t, "replica-two", srv.ClientURL(), api, env("two")...)
	two.waitReady(30 * time.Second)
	var rec event.Record
	waitUntil(t, 30*time.Second, "the key's record", func() bool {
		recs, err := keyRecords(js, key)
		if err != nil || len(recs) == 0 {
			return false
		}
		rec = recs[0].Record
		return true
	})
	if rec.Outcome != event.Revoked || rec.TraceID != tid || rec.Attempts != 2 {
		t.Fatalf("record %+v; want revoked after 2 calls, trace_id %s", rec, tid)
	}
	waitUntil(t, 20*time.Second, "both replicas' consumer spans in the trace", func() bool {
		c := rc.consumers(tid)
		return len(c["one"]) > 0 && len(c["two"]) > 0
	})
	for instance, parents := range rc.consumers(tid) {
		for _, p := range parents {
			if p != publisherSpan {
				t.Errorf("replica %s: a consumer span's parent is %s, want the publisher's span %s", instance, p, publisherSpan)
			}
		}
	}
}
