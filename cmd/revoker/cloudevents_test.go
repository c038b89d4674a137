package main

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestCloudEventsRevoked: CloudEvents as Dapr and Knative publish them
// (structured mode, recorded in testdata) are revoked, with the
// CloudEvent's id as the event's id (no Nats-Msg-Id) and Dapr's
// traceparent as the trace; one breaking the CloudEvents rules, or whose
// data breaks §2, is dead-lettered invalid_event with no call (SPEC §14).
func TestCloudEventsRevoked(t *testing.T) {
	s := hStack(t, nil)
	s.startWorker()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	publish := func(body []byte) {
		t.Helper()
		m := nats.NewMsg(s.cfg().LowestPriority())
		m.Data = body
		m.Header.Set("Content-Type", "application/cloudevents+json")
		if _, err := s.js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct{ file, key, id, trace string }{
		{"dapr.json", "daprkey1", "5929aaac-a5e2-4ca1-859c-edfe73f11565", "0af7651916cd43dd8448eb211c80319c"},
		{"knative.json", "knativekey1", "c4b3fbb1-0a8e-4d5e-9b7e-2d1f0e6a7b21", ""},
	} {
		body, err := os.ReadFile("testdata/cloudevents/" + tc.file)
		if err != nil {
			t.Fatal(err)
		}
		publish(body)
		queuetest.Eventually(t, 10*time.Second, tc.key+" recorded", func() bool { return len(s.outcomes(tc.key)) == 1 })
		o := s.outcomes(tc.key)[0]
		if o.Outcome != event.Revoked || o.EventID != tc.id || s.okDeletes(tc.key) != 1 {
			t.Fatalf("%s: record %+v after %d deletes; want revoked, event id %s", tc.file, o, s.okDeletes(tc.key), tc.id)
		}
		if tc.trace != "" && o.TraceID != tc.trace {
			t.Fatalf("%s: trace_id %q, want the CloudEvent's %s", tc.file, o.TraceID, tc.trace)
		}
	}

	publish([]byte(`{"id":"x1","source":"s","type":"t","data":{"account_id":"acct","key_id":"badce1"}}`))                      // no specversion
	publish([]byte(`{"specversion":"1.0","id":"x2","source":"s","type":"t","data":{"account_id":"acct","key_id":"bad/ce2"}}`)) // data breaks §2
	queuetest.Eventually(t, 10*time.Second, "two invalid CloudEvents dead-lettered", func() bool {
		return s.msgs(s.cfg().DLQStream) == 2
	})
	for _, r := range trailDeadLetters(t, s) {
		if r.Reason != string(event.InvalidEvent) || r.Attempts != 0 {
			t.Fatalf("dead letter %+v; want invalid_event with no call", r)
		}
	}
	if n := s.okDeletes("badce1"); n != 0 {
		t.Fatalf("%d calls for an invalid CloudEvent", n)
	}
}
