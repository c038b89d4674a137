package service_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/service"
)

// TestStatusOfKeyWhoseNewerEventLeftWithoutARecord: status by key answers
// the state of the key's latest event stored through the service while
// that event has no record. When that event has left the work stream
// without one (the stream purged by an operator, or deleted and made
// again), the key, which has a record, is answered its believed record,
// never 404 (SPEC §12: the believed record, or the state).
func TestStatusOfKeyWhoseNewerEventLeftWithoutARecord(t *testing.T) {
	s := newStack(t, nil, cloudflaretest.WithLatency(8*time.Second))
	s.api.AddKey("acct1", "pkey1")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	recs := &queue.Records{JS: s.js, Log: zap.NewNop(), OutcomeStream: s.cfg.OutcomeStream, OutcomePrefix: s.cfg.OutcomeSubject, Timeout: 5 * time.Second}
	at := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339Nano)
	old := event.Record{EventID: "old-1", AccountID: "acct1", KeyID: "pkey1", Outcome: event.DeadLettered, Reason: event.Unauthorized,
		Status: 403, Stream: s.cfg.Stream, Subject: s.cfg.Subjects[1], Sequence: 1000, Attempts: 3, PublishedAt: at, CompletedAt: at}
	if _, err := recs.Outcome(ctx, old); err != nil {
		t.Fatal(err)
	}
	q := decodeQueued(t, s.request(service.RevokeSubject, evJSON("acct1", "pkey1"), jetstream.MsgIDHeader, "inc-purged"))
	if q.State != service.StateQueued {
		t.Fatalf("revoke: %+v; want queued", q)
	}
	st, err := s.js.Stream(ctx, s.cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(ctx); err != nil { // `nats stream purge REVOCATIONS`
		t.Fatal(err)
	}
	reply := s.request(service.StatusSubject, `{"account_id":"acct1","key_id":"pkey1"}`)
	if code := serviceError(reply); code != "" {
		t.Fatalf("status by key of a key with a dead-letter record: error %s %q; want its record (or a state)", code, reply.Header.Get("Nats-Service-Error"))
	}
	var got event.Record
	if err := json.Unmarshal(reply.Data, &got); err != nil || got.EventID != "old-1" || got.Outcome != event.DeadLettered {
		t.Fatalf("status by key answered %s (%v); want the record of old-1", reply.Data, err)
	}
}
