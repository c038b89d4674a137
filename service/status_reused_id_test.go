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

// revoker.status asked with an event id and its key must not answer the
// record of an OLDER event of that key that happened to use the same id
// (ids can be reused, SPEC §5a): the event stored through revoker.revoke
// under that id is queued, and its state is the answer (SPEC §12).
func TestStatusOfAKeyAndIDIgnoresAnOlderEventUnderTheSameID(t *testing.T) {
	s := newStack(t, nil, cloudflaretest.WithLatency(5*time.Second)) // the new event's call is in flight while asked
	s.api.AddKey("acct1", "rkey1")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// An older revocation of the same key under the same id, dead-lettered
	// an hour ago, at a sequence the new event will not get.
	recs := &queue.Records{JS: s.js, Log: zap.NewNop(), OutcomeStream: s.cfg.OutcomeStream, OutcomePrefix: s.cfg.OutcomeSubject, Timeout: 5 * time.Second}
	at := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339Nano)
	old := event.Record{EventID: "inc-reused", AccountID: "acct1", KeyID: "rkey1", Outcome: event.DeadLettered, Reason: event.Unauthorized,
		Status: 403, Stream: s.cfg.Stream, Subject: s.cfg.Subjects[1], Sequence: 1000, Attempts: 1, PublishedAt: at, CompletedAt: at}
	if _, err := recs.Outcome(ctx, old); err != nil {
		t.Fatal(err)
	}
	q := decodeQueued(t, s.request(service.RevokeSubject, evJSON("acct1", "rkey1"), jetstream.MsgIDHeader, "inc-reused"))

	reply := s.request(service.StatusSubject, `{"event_id":"inc-reused","account_id":"acct1","key_id":"rkey1"}`)
	if code := serviceError(reply); code != "" {
		t.Fatalf("status of event inc-reused of acct1/rkey1: error %s; want its state (queued)", code)
	}
	var probe struct {
		Outcome  string `json:"outcome"`
		State    string `json:"state"`
		Sequence uint64 `json:"sequence"`
	}
	if err := json.Unmarshal(reply.Data, &probe); err != nil {
		t.Fatal(err)
	}
	if probe.State != service.StateQueued || probe.Sequence != q.Sequence {
		t.Fatalf("status of event inc-reused (queued at sequence %d) answered %s", q.Sequence, reply.Data)
	}
}
