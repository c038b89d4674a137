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

// storeRecord writes rec to the key's subject of the trail, as the worker
// does.
func storeRecord(ctx context.Context, t *testing.T, s *stack, rec event.Record) {
	t.Helper()
	recs := &queue.Records{JS: s.js, Log: zap.NewNop(), OutcomeStream: s.cfg.OutcomeStream, OutcomePrefix: s.cfg.OutcomeSubject, Timeout: 5 * time.Second}
	if _, err := recs.Outcome(ctx, rec); err != nil {
		t.Fatal(err)
	}
}

// deadLetteredThenQueued is a stack where key of acct1 has an older
// event's dead letter (old-1, unauthorized, an hour ago) and a newer event
// id stored through revoker.revoke, whose call the stand-in holds 8 s.
func deadLetteredThenQueued(t *testing.T, key, id string) (*stack, context.Context) {
	t.Helper()
	s := newStack(t, nil, cloudflaretest.WithLatency(8*time.Second))
	s.api.AddKey("acct1", key)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	at := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339Nano)
	storeRecord(ctx, t, s, event.Record{EventID: "old-1", AccountID: "acct1", KeyID: key, Outcome: event.DeadLettered, Reason: event.Unauthorized,
		Status: 403, Stream: s.cfg.Stream, Subject: s.cfg.Subjects[1], Sequence: 1000, Attempts: 3, PublishedAt: at, CompletedAt: at})
	q := decodeQueued(t, s.request(service.RevokeSubject, evJSON("acct1", key), jetstream.MsgIDHeader, id))
	if q.State != service.StateQueued {
		t.Fatalf("revoke: %+v; want queued (the call is held 8 s)", q)
	}
	return s, ctx
}

// A key whose earlier event was dead-lettered (say, unauthorized before a
// token was fixed) is asked for again through revoker.revoke; while that
// new event is still queued (its call in flight), revoker.status by key
// must answer the state of the key's latest event, not the older event's
// dead letter, which tells the caller the revocation failed.
func TestStatusOfKeyAnswersItsQueuedEventOverAnOlderDeadLetter(t *testing.T) {
	s, _ := deadLetteredThenQueued(t, "rkey1", "inc-new")
	reply := s.request(service.StatusSubject, `{"account_id":"acct1","key_id":"rkey1"}`)
	if code := serviceError(reply); code != "" {
		t.Fatalf("status by key: error %s", code)
	}
	t.Logf("status by key answered: %s", reply.Data)
	if got := decodeQueued(t, reply); got.State != service.StateQueued || got.EventID != "inc-new" {
		t.Fatalf("status by key while event inc-new is queued answered %s; want inc-new queued", reply.Data)
	}
}

// TestStatusOfKeyWhoseNewerEventLeftWithoutARecord: status by key answers
// the state of the key's latest event stored through the service while
// that event has no record. When that event has left the work stream
// without one (the stream purged by an operator, or deleted and made
// again), the key, which has a record, is answered its believed record,
// never 404 (SPEC §12: the believed record, or the state).
func TestStatusOfKeyWhoseNewerEventLeftWithoutARecord(t *testing.T) {
	s, ctx := deadLetteredThenQueued(t, "pkey1", "inc-purged")
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
