package main

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/revoker/revoker/queue/queuetest"
)

// TestDuplicatePublishOfACloudEventPrintsItsTrace: a CloudEvent stored
// under Nats-Msg-Id X, carrying its trace in its traceparent extension
// (as Dapr publishes), then `revoker publish --id X` for the same key: the
// stream drops the second as a duplicate, and the trace id publish prints
// must be the stored event's, the one its record carries (SPEC §13, §14),
// not the fresh one of a publish that stored nothing.
func TestDuplicatePublishOfACloudEventPrintsItsTrace(t *testing.T) {
	const tid = "0af7651916cd43dd8448eb211c80319c"
	s := hStack(t, nil)
	s.ensure()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := nats.NewMsg(s.cfg().LowestPriority())
	m.Data = []byte(`{"specversion":"1.0","id":"ce-1","source":"/soar","type":"com.example.revoke",` +
		`"traceparent":"00-` + tid + `-b7ad6b7169203331-01","data":{"account_id":"acct","key_id":"cedup1"}}`)
	m.Header.Set("Content-Type", "application/cloudevents+json")
	m.Header.Set("Nats-Msg-Id", "incident-ce-dup-1")
	if _, err := s.js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	r := s.run("publish", "--account", "acct", "--key", "cedup1", "--id", "incident-ce-dup-1")
	r.want(t, exitOK, "published")
	if s.msgs(s.cfg().Stream) != 1 {
		t.Fatalf("the work stream holds %d events, want the one", s.msgs(s.cfg().Stream))
	}
	printed := printedTrace.FindStringSubmatch(r.stdout)
	if printed == nil {
		t.Fatalf("no trace printed:\n%s", r.stdout)
	}

	s.startWorker()
	queuetest.Eventually(t, 10*time.Second, "the record of cedup1", func() bool { return len(s.outcomes("cedup1")) == 1 })
	if o := s.outcomes("cedup1")[0]; o.TraceID != tid {
		t.Fatalf("record trace_id %q, want the CloudEvent's %s", o.TraceID, tid)
	}
	if printed[1] != tid {
		t.Fatalf("the duplicate publish printed trace %s; the one stored event (and its record) is in trace %s", printed[1], tid)
	}
}

// TestDuplicatePublishOfAnUntracedEventPrintsNoForeignTrace: an event
// stored by another publisher under Nats-Msg-Id X with no trace context,
// then `revoker publish --id X` for the same key (dropped as a
// duplicate). With tracing off the event has no trace, and its record
// carries none; the trace id publish prints must not be a fresh one that
// nothing carries (SPEC §13: publish prints the trace id of what it
// publishes; the existing duplicate test's own words: "not a fresh one
// nothing carries").
func TestDuplicatePublishOfAnUntracedEventPrintsNoForeignTrace(t *testing.T) {
	s := hStack(t, nil)
	s.ensure()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := nats.NewMsg(s.cfg().LowestPriority())
	m.Data = []byte(`{"account_id":"acct","key_id":"untraced1"}`)
	m.Header.Set("Nats-Msg-Id", "incident-untraced-1")
	if _, err := s.js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	r := s.run("publish", "--account", "acct", "--key", "untraced1", "--id", "incident-untraced-1")
	r.want(t, exitOK, "published")
	s.startWorker()
	queuetest.Eventually(t, 10*time.Second, "the record of untraced1", func() bool { return len(s.outcomes("untraced1")) == 1 })
	rec := s.outcomes("untraced1")[0]
	if printed := printedTrace.FindStringSubmatch(r.stdout); printed != nil && printed[1] != rec.TraceID {
		t.Fatalf("the duplicate publish printed trace %s; the one stored event's record carries trace %q", printed[1], rec.TraceID)
	}
}
