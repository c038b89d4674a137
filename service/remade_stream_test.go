package service_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
	"github.com/revoker/revoker/service"
)

// TestStatusBySequenceIgnoresAnOlderStreamsRecord: the work stream
// was made again, so sequence 1 is reused; the trail holds a revoked
// record of an older event for the same key at sequence 1. The new event
// at sequence 1 is dead-lettered by the worker (its account is not
// allowed). Once it has left the work stream, revoker.status asked for
// stream/sequence/account/key answers its record, not the older event's.
func TestStatusBySequenceIgnoresAnOlderStreamsRecord(t *testing.T) {
	s := newStack(t, func(c *config.Config) { c.AllowedAccounts = []string{"acctother"} })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	recs := &queue.Records{JS: s.js, Log: zap.NewNop(), OutcomeStream: s.cfg.OutcomeStream, OutcomePrefix: s.cfg.OutcomeSubject, Timeout: 5 * time.Second}
	old := event.Record{EventID: "old", AccountID: "acct1", KeyID: "keyS", Outcome: event.Revoked, Status: 200, CFRay: "old-ray",
		Stream: s.cfg.Stream, Subject: s.cfg.Subjects[1], Sequence: 1, Attempts: 1,
		PublishedAt: time.Now().Add(-time.Hour).UTC().Format(time.RFC3339Nano)}
	if _, err := recs.Outcome(ctx, old); err != nil {
		t.Fatal(err)
	}
	q := decodeQueued(t, s.request(service.RevokeSubject, evJSON("acct1", "keyS")))
	if q.Sequence != 1 {
		t.Fatalf("stored at %d; want sequence 1", q.Sequence)
	}
	queuetest.Eventually(t, 15*time.Second, "the new event's record", func() bool {
		rs, err := queue.KeyOutcomes(ctx, s.js, s.cfg.OutcomeStream, s.cfg.OutcomeSubject, "acct1", "keyS", nil)
		return err == nil && len(rs) == 2
	})
	queuetest.Eventually(t, 15*time.Second, "the event to leave the work stream", func() bool {
		st, err := s.js.Stream(ctx, s.cfg.Stream)
		if err != nil {
			return false
		}
		_, err = st.GetMsg(ctx, 1)
		return err != nil
	})
	rec := decodeRecord(t, s.request(service.StatusSubject,
		`{"stream":"`+s.cfg.Stream+`","sequence":1,"account_id":"acct1","key_id":"keyS"}`))
	if rec.Outcome != event.DeadLettered || rec.EventID != q.EventID {
		t.Fatalf("revoker.status of the event at sequence 1 answered %s (event %s, cf_ray %s); the event there is %s, dead-lettered: the older event's record",
			rec.Outcome, rec.EventID, rec.CFRay, q.EventID)
	}
}
