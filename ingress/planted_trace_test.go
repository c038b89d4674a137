package ingress

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go"
)

// TestPlantedIDLogNamesTheTrace: a request whose idempotency key makes an
// id another event already holds in the work stream is stored under an id
// of its own, and logged: that log line is about the event, so it names the
// event's trace, the caller's traceparent (SPEC §13: "the trace id goes
// into ... every log line about the event").
func TestPlantedIDLogNamesTheTrace(t *testing.T) {
	const tid = "4bf92f3577b34da6a3ce929d0e0e4736"
	h := newHarness(t)
	planted := nats.NewMsg(h.topo.Subjects[len(h.topo.Subjects)-1])
	planted.Data = []byte(evBody(tAccount, "otherkey"))
	planted.Header.Set("Nats-Msg-Id", "ingress:soar:plant-1")
	if _, err := h.js.PublishMsg(context.Background(), planted); err != nil {
		t.Fatal(err)
	}
	r := h.do(h.post(evBody(tAccount, "plantedkey"), hdrs(bearer(tToken),
		[]string{"Idempotency-Key", "plant-1", "traceparent", "00-" + tid + "-00f067aa0ba902b7-01"})...))
	r.want(t, 202)
	if got := r.Header.Get(HeaderTraceID); got != tid {
		t.Fatalf("answered trace id %q, want %s", got, tid)
	}
	lines := h.logs.FilterMessageSnippet("another event holds the id").All()
	if len(lines) != 1 {
		t.Fatalf("logged %d lines about the planted id, want 1:\n%s", len(lines), h.logged())
	}
	if got := lines[0].ContextMap()["trace_id"]; got != tid {
		t.Fatalf("%q: trace_id %v, want %s", lines[0].Message, got, tid)
	}
}
