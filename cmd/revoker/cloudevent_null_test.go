package main

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestCloudEventWithNullAttributesRevoked: the CloudEvents JSON format
// lets a publisher encode unset optional attributes as null ("When
// decoding attributes and a null value is encountered, it MUST be treated
// as the equivalent of unset or omitted"), as the Java SDK does. Such an
// event keeps the CloudEvents rules, so (SPEC §14) its data is revoked
// like any event, not dead-lettered invalid_event; with no trace context
// it is simply untraced.
func TestCloudEventWithNullAttributesRevoked(t *testing.T) {
	s := hStack(t, nil)
	s.startWorker()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := nats.NewMsg(s.cfg().LowestPriority())
	m.Data = []byte(`{"specversion":"1.0","id":"ce-null-1","source":"/soar","type":"com.example.revoke",` +
		`"subject":null,"time":null,"datacontenttype":null,"traceparent":null,"tracestate":null,` +
		`"data":{"account_id":"acct","key_id":"cenull1"}}`)
	m.Header.Set("Content-Type", "application/cloudevents+json")
	if _, err := s.js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	queuetest.Eventually(t, 10*time.Second, "the record of cenull1", func() bool { return len(s.outcomes("cenull1")) == 1 })
	if o := s.outcomes("cenull1")[0]; o.Outcome != event.Revoked || o.EventID != "ce-null-1" || s.okDeletes("cenull1") != 1 {
		t.Fatalf("record %+v after %d deletes; want revoked under the CloudEvent's id ce-null-1", o, s.okDeletes("cenull1"))
	}
}
