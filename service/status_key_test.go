package service_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/service"
	"github.com/revoker/revoker/untrusted"
)

// revoker.status asked for a key answers a revoked record of any of its
// events: key ids are never reused, so a key once revoked stays gone, and
// a later event's dead letter (a token rotated, say) must not bury the
// confirmation. Without one, the last event's record is the answer.
func TestStatusOfAKeyBelievesAnyRevokedRecord(t *testing.T) {
	s := newStack(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	recs := &queue.Records{JS: s.js, Log: zap.NewNop(), OutcomeStream: s.cfg.OutcomeStream, OutcomePrefix: s.cfg.OutcomeSubject, Timeout: 5 * time.Second}
	now := time.Now().UTC()
	record := func(id, key string, seq uint64, outcome event.Outcome, reason event.Reason) {
		t.Helper()
		at := now.Add(time.Duration(seq) * time.Minute).Format(time.RFC3339Nano)
		rec := event.Record{EventID: id, AccountID: "acctR", KeyID: key, Outcome: outcome, Reason: reason, Status: 200, CFRay: "ray-" + id,
			Stream: s.cfg.Stream, Subject: s.cfg.Subjects[1], Sequence: seq, Attempts: 1, PublishedAt: at, CompletedAt: at}
		if _, err := recs.Outcome(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	record("a1", "keyA", 1, event.Revoked, "")
	record("a2", "keyA", 2, event.DeadLettered, event.Unauthorized)
	record("b1", "keyB", 3, event.DeadLettered, event.Unauthorized)
	record("b2", "keyB", 4, event.Revoked, "")
	record("c1", "keyC", 5, event.NotFound, "")
	record("c2", "keyC", 6, event.DeadLettered, event.APIRejected)

	for key, want := range map[string]string{"keyA": "a1", "keyB": "b2", "keyC": "c2"} {
		got := decodeRecord(t, s.request(service.StatusSubject, `{"account_id":"acctR","key_id":"`+key+`"}`))
		if got.EventID != want {
			t.Errorf("revoker.status of %s answered event %s (%s %s); want event %s", key, got.EventID, got.Outcome, got.Reason, want)
		}
	}
}

// revoker.status asked for a key and an event id over 256 characters
// finds the event's record, which keeps the id cut to 256 characters: the
// request's id is cut alike before it is compared.
func TestStatusOfAKeyWithALongEventID(t *testing.T) {
	s := newStack(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	recs := &queue.Records{JS: s.js, Log: zap.NewNop(), OutcomeStream: s.cfg.OutcomeStream, OutcomePrefix: s.cfg.OutcomeSubject, Timeout: 5 * time.Second}
	id := strings.Repeat("é", 300)
	at := time.Now().UTC().Format(time.RFC3339Nano)
	rec := event.Record{EventID: untrusted.Chars(id, event.MaxRecordedID), AccountID: "acctR", KeyID: "keyL", Outcome: event.Revoked,
		Status: 200, CFRay: "ray-l", Stream: s.cfg.Stream, Subject: s.cfg.Subjects[1], Sequence: 1, Attempts: 1, PublishedAt: at, CompletedAt: at}
	if _, err := recs.Outcome(ctx, rec); err != nil {
		t.Fatal(err)
	}
	reply := s.request(service.StatusSubject, `{"account_id":"acctR","key_id":"keyL","event_id":"`+id+`"}`)
	if code := reply.Header.Get("Nats-Service-Error-Code"); code != "" {
		t.Fatalf("revoker.status of a revoked key, asked with its event's id, answered %s %s", code, reply.Header.Get("Nats-Service-Error"))
	}
}

// revoker.status asked for a key with no record yet answers the state of
// its latest event stored through revoker.revoke (SPEC §12: the believed
// record, or the state): queued, not 404, which would invite a second
// request.
func TestStatusOfAKeyWhileItsEventIsQueued(t *testing.T) {
	s := newStack(t, nil, cloudflaretest.WithLatency(5*time.Second)) // the call is in flight while asked
	s.api.AddKey("acct1", "qkey1")
	q := decodeQueued(t, s.request(service.RevokeSubject, evJSON("acct1", "qkey1"), jetstream.MsgIDHeader, "inc-q1"))
	reply := s.request(service.StatusSubject, `{"account_id":"acct1","key_id":"qkey1"}`)
	if code := serviceError(reply); code != "" {
		t.Fatalf("status by key of the stored event %s: error %s %q; want its state", q.EventID, code, reply.Header.Get(micro.ErrorHeader))
	}
	if got := decodeQueued(t, reply); got.State != service.StateQueued || got.Sequence != q.Sequence || got.EventID != "inc-q1" {
		t.Fatalf("status by key: %+v; want event inc-q1 queued at sequence %d", got, q.Sequence)
	}
}
