package main

import (
	"bytes"
	"context"
	"os"
	"strings"
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

// TestCloudEventDeadLetterReplayedAsCloudEvent: a dead-lettered CloudEvent
// keeps its Content-Type, so `dlq list` shows its account and key and a
// replay is read as a CloudEvent again, and revokes the key in the event's
// own trace; a plain event's replay keeps its trace too (SPEC §5, §13, §14).
func TestCloudEventDeadLetterReplayedAsCloudEvent(t *testing.T) {
	s := hStack(t, nil)
	s.startWorker()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	body, err := os.ReadFile("testdata/cloudevents/dapr.json")
	if err != nil {
		t.Fatal(err)
	}
	body = bytes.ReplaceAll(body, []byte("daprkey1"), []byte("cereplay1"))
	s.api.Script("cereplay1", 400)
	m := nats.NewMsg(s.cfg().LowestPriority())
	m.Data = body
	m.Header.Set("Content-Type", "application/cloudevents+json")
	if _, err := s.js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	s.api.Script("plainreplay1", 400)
	s.run("publish", "--account", "acct", "--key", "plainreplay1", "--wait", "--timeout", "20s").want(t, exitFailed, "dead_lettered")
	queuetest.Eventually(t, 10*time.Second, "both dead-lettered", func() bool { return s.msgs(s.cfg().DLQStream) == 2 })

	r := s.run("dlq", "list")
	r.want(t, exitOK, "acct")
	shown := 0
	for _, line := range hLines(r.stdout)[1:] {
		if row := strings.Fields(line); row[4] == "acct" && (row[5] == "cereplay1" || row[5] == "plainreplay1") {
			shown++
		}
	}
	if shown != 2 {
		t.Fatalf("dlq list shows the account and key of %d of the two events:\n%s", shown, r.stdout)
	}

	s.run("dlq", "replay", "--all").want(t, exitOK, "replayed 1:", "replayed 2:")
	for _, key := range []string{"cereplay1", "plainreplay1"} {
		queuetest.Eventually(t, 10*time.Second, key+" revoked by its replay", func() bool { return len(s.outcomes(key)) == 2 })
		o := s.outcomes(key)
		if o[0].Outcome != event.DeadLettered || o[1].Outcome != event.Revoked || !s.api.Deleted("acct", key) {
			t.Fatalf("%s: outcomes %+v; want dead_lettered, then revoked by the replay", key, o)
		}
		if o[0].TraceID == "" || o[1].TraceID != o[0].TraceID {
			t.Fatalf("%s: the replay's trace %q is not the event's %q", key, o[1].TraceID, o[0].TraceID)
		}
	}
	if o := s.outcomes("cereplay1"); o[0].TraceID != "0af7651916cd43dd8448eb211c80319c" {
		t.Fatalf("the CloudEvent's trace is %q, want its traceparent's", o[0].TraceID)
	}
}
