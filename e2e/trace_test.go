package e2e

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue/queuetest"
	"github.com/revoker/revoker/tracing/tracingtest"
)

// consumers returns, by process instance, the parents of the consumer
// spans of trace tid.
func consumers(rc *tracingtest.Receiver, tid string) map[string][]string {
	out := map[string][]string{}
	for _, s := range rc.Of(tid) {
		if s.GetKind() == tracepb.Span_SPAN_KIND_CONSUMER {
			out[s.Instance] = append(out[s.Instance], s.ParentID())
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
	skipShort(t) // it runs the built binary, which -short does not build
	srv := queuetest.Server(t)
	api := cloudflaretest.NewServer(cloudflaretest.WithToken(token))
	t.Cleanup(api.Close)
	rc := tracingtest.NewReceiver(t)
	env := func(instance string) []string {
		return append(rc.Env(),
			"REVOKER_STREAM_REPLICAS=1",
			"REVOKER_RETRY_MAX_ELAPSED=1ms",  // one call a delivery
			"REVOKER_RETRY_MAX_INTERVAL=10s", // the give-back's delay: replica one is stopped well before it
			"REVOKER_MAX_DELIVER=5",
			"OTEL_BSP_SCHEDULE_DELAY=100",
			"OTEL_RESOURCE_ATTRIBUTES=service.instance.id="+instance,
		)
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
		c := consumers(rc, tid)
		return len(c["one"]) > 0 && len(c["two"]) > 0
	})
	for instance, parents := range consumers(rc, tid) {
		for _, p := range parents {
			if p != publisherSpan {
				t.Errorf("replica %s: a consumer span's parent is %s, want the publisher's span %s", instance, p, publisherSpan)
			}
		}
	}
}
