package service_test

// A record naming another key is not believed by the service.

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/service"
)

// TestTrailStatusOfKeyIgnoresARecordOfAnotherKey: keyD's only true
// record says dead_lettered (unauthorized: the key is alive). A body on
// keyD's subject names keyOther in "key_id" and says revoked; it repeats
// the key as "KEY_ID":"keyD". Read by exact field names it is a record of
// keyOther: reported, never believed (SPEC §4 point 8). encoding/json
// folds case, so revoker.status answers that keyD was revoked.
func TestTrailStatusOfKeyIgnoresARecordOfAnotherKey(t *testing.T) {
	s := newStack(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	recs := &queue.Records{JS: s.js, Log: zap.NewNop(), OutcomeStream: s.cfg.OutcomeStream, OutcomePrefix: s.cfg.OutcomeSubject, Timeout: 5 * time.Second}
	at := time.Now().UTC().Format(time.RFC3339Nano)
	real := event.Record{EventID: "d1", AccountID: "acctR", KeyID: "keyD", Outcome: event.DeadLettered, Reason: event.Unauthorized,
		Status: 403, Stream: s.cfg.Stream, Subject: s.cfg.Subjects[1], Sequence: 1, Attempts: 10, PublishedAt: at, CompletedAt: at}
	if _, err := recs.Outcome(ctx, real); err != nil {
		t.Fatal(err)
	}
	other := event.Record{EventID: "d2", AccountID: "acctR", KeyID: "keyOther", Outcome: event.Revoked, Status: 200, CFRay: "ray-x",
		Stream: s.cfg.Stream, Subject: s.cfg.Subjects[1], Sequence: 2, Attempts: 1, PublishedAt: at, CompletedAt: at}
	b := other.AppendJSON(nil)
	m := nats.NewMsg(queue.OutcomeSubject(s.cfg.OutcomeSubject, "acctR", "keyD"))
	m.Data = append(b[:len(b)-1], `,"KEY_ID":"keyD"}`...)
	if _, err := s.js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	got := decodeRecord(t, s.request(service.StatusSubject, `{"account_id":"acctR","key_id":"keyD"}`))
	if got.Outcome == event.Revoked {
		t.Errorf("revoker.status of acctR/keyD answered %s (event %s, cf_ray %s), from a body whose key_id is keyOther; keyD's only record says %s %s",
			got.Outcome, got.EventID, got.CFRay, real.Outcome, real.Reason)
	}
}
