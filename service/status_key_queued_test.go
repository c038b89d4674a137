package service_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/service"
)

// A key whose earlier event was dead-lettered (say, unauthorized before a
// token was fixed) is asked for again through revoker.revoke; while that
// new event is still queued (its call in flight), revoker.status by key
// must answer the state of the key's latest event, not the older event's
// dead letter, which tells the caller the revocation failed.
func TestStatusOfKeyAnswersItsQueuedEventOverAnOlderDeadLetter(t *testing.T) {
	s := newStack(t, nil, cloudflaretest.WithLatency(8*time.Second))
	s.api.AddKey("acct1", "rkey1")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	recs := &queue.Records{JS: s.js, Log: zap.NewNop(), OutcomeStream: s.cfg.OutcomeStream, OutcomePrefix: s.cfg.OutcomeSubject, Timeout: 5 * time.Second}
	at := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339Nano)
	old := event.Record{EventID: "old-1", AccountID: "acct1", KeyID: "rkey1", Outcome: event.DeadLettered, Reason: event.Unauthorized,
		Status: 403, Stream: s.cfg.Stream, Subject: s.cfg.Subjects[1], Sequence: 1000, Attempts: 3, PublishedAt: at, CompletedAt: at}
	if _, err := recs.Outcome(ctx, old); err != nil {
		t.Fatal(err)
	}
	q := decodeQueued(t, s.request(service.RevokeSubject, evJSON("acct1", "rkey1"), jetstream.MsgIDHeader, "inc-new"))
	if q.State != service.StateQueued {
		t.Fatalf("revoke: %+v; want queued (the call is held 8 s)", q)
	}
	reply := s.request(service.StatusSubject, `{"account_id":"acct1","key_id":"rkey1"}`)
	if code := serviceError(reply); code != "" {
		t.Fatalf("status by key: error %s", code)
	}
	t.Logf("status by key answered: %s", reply.Data)
	if got := decodeQueued(t, reply); got.State != service.StateQueued || got.EventID != "inc-new" {
		t.Fatalf("status by key while event inc-new is queued answered %s; want inc-new queued", reply.Data)
	}
}
