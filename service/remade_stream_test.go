package service_test

import (
	"context"
	"encoding/json"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
	"github.com/revoker/revoker/service"
)

// TestStatusIgnoresAnOlderStreamsRecord: the work stream was made
// again, so sequence 1 is reused; the trail holds a revoked record of an
// older event for the same key at sequence 1. The new event at sequence 1
// is dead-lettered by the worker (its account is not allowed). Once it has
// left the work stream, revoker.status asked for stream/sequence/account/
// key answers its record, not the older event's. Asked for the key, it
// answers the older event's revoked record: key ids are never reused, so
// the key is gone whatever became of a later event of it.
func TestStatusIgnoresAnOlderStreamsRecord(t *testing.T) {
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
	byKey := decodeRecord(t, s.request(service.StatusSubject, `{"account_id":"acct1","key_id":"keyS"}`))
	if byKey.Outcome != event.Revoked || byKey.EventID != "old" {
		t.Fatalf("revoker.status of the key answered %s (event %s, cf_ray %s); event old revoked it",
			byKey.Outcome, byKey.EventID, byKey.CFRay)
	}
}

// TestStatusByIDAfterTheStreamIsMadeAgain: event evX is stored through
// revoker.revoke at sequence 1, revoked and recorded; the index keeps
// where and when it was stored. The work stream is made again, and evY,
// for the same key, is stored at sequence 1 and still in its call.
// revoker.status {"event_id":"evX"} answers evX's revoked record: the
// event now at sequence 1 is another (stored at another time), neither
// queued for evX nor a reason to disbelieve its record.
func TestStatusByIDAfterTheStreamIsMadeAgain(t *testing.T) {
	hold := make(chan struct{})
	var deletes atomic.Int64
	s := newStack(t, nil, cloudflaretest.WithResponder(func(r cloudflaretest.Request) (int, http.Header, string, bool) {
		if r.Method == "DELETE" && r.KeyID == "keyS" && deletes.Add(1) > 1 {
			select { // the second event's call hangs while the test looks
			case <-hold:
			case <-time.After(4 * time.Second):
			}
			return 503, nil, `{"success":false,"errors":[],"messages":[],"result":null}`, true
		}
		return 0, nil, "", false
	}))
	t.Cleanup(func() { close(hold) })
	s.api.AddKey("acct1", "keyS")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q := decodeQueued(t, s.request(service.RevokeSubject, evJSON("acct1", "keyS"), "Nats-Msg-Id", "evX"))
	if q.Sequence != 1 {
		t.Fatalf("evX stored at %d; want 1", q.Sequence)
	}
	queuetest.Eventually(t, 15*time.Second, "evX's record", func() bool {
		rs, err := queue.KeyOutcomes(ctx, s.js, s.cfg.OutcomeStream, s.cfg.OutcomeSubject, "acct1", "keyS", nil)
		return err == nil && len(rs) == 1 && rs[0].Outcome == event.Revoked
	})
	if rec := decodeRecord(t, s.request(service.StatusSubject, `{"event_id":"evX"}`)); rec.Outcome != event.Revoked {
		t.Fatalf("before the stream is made again: %+v", rec)
	}
	queuetest.Eventually(t, 15*time.Second, "evX to leave the work stream", func() bool {
		st, err := s.js.Stream(ctx, s.cfg.Stream)
		if err != nil {
			return false
		}
		_, err = st.GetMsg(ctx, 1)
		return err != nil
	})
	remakeWithEvY(ctx, t, s, func() bool { return deletes.Load() >= 2 })
	reply := s.request(service.StatusSubject, `{"event_id":"evX"}`)
	t.Logf("revoker.status {event_id: evX} answered %s", reply.Data)
	var rec event.Record
	if serviceError(reply) != "" || json.Unmarshal(reply.Data, &rec) != nil || rec.Outcome != event.Revoked || rec.EventID != "evX" {
		t.Fatalf("revoker.status of evX (revoked and recorded) answered %q (error %q): its revoked record is not believed",
			reply.Data, serviceError(reply))
	}
}

// TestStatusByIDOfAnEventDoneBeforeItWasReadBack: evX was revoked and
// left the work stream before revoker.revoke could read it back, so the
// index knows its sequence (1) but not when it was stored. The stream is
// made again and evY, for the same key, waits at sequence 1 in its call.
// revoker.status {"event_id":"evX"} answers evX's revoked record: the
// message at sequence 1 carries another Nats-Msg-Id, so it is another
// event, not evX still queued.
func TestStatusByIDOfAnEventDoneBeforeItWasReadBack(t *testing.T) {
	hold := make(chan struct{})
	var deletes atomic.Int64
	s := newStack(t, nil, cloudflaretest.WithResponder(func(r cloudflaretest.Request) (int, http.Header, string, bool) {
		if r.Method == "DELETE" && r.KeyID == "keyS" {
			deletes.Add(1)
			select { // evY's call hangs while the test looks
			case <-hold:
			case <-time.After(4 * time.Second):
			}
			return 503, nil, `{"success":false,"errors":[],"messages":[],"result":null}`, true
		}
		return 0, nil, "", false
	}))
	t.Cleanup(func() { close(hold) })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := s.js.Stream(ctx, s.cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	// What revoker.revoke kept of evX: done before it was read back.
	index := queue.NewEventIndex(s.js, s.cfg.Stream, 1, true, zap.NewNop())
	if err := index.Remember(ctx, queue.Published{EventID: "evX", AccountID: "acct1", KeyID: "keyS",
		Subject: s.cfg.Subjects[1], Stream: s.cfg.Stream, Sequence: 1, StoredAfter: st.CachedInfo().Created}); err != nil {
		t.Fatal(err)
	}
	recs := &queue.Records{JS: s.js, Log: zap.NewNop(), OutcomeStream: s.cfg.OutcomeStream, OutcomePrefix: s.cfg.OutcomeSubject, Timeout: 5 * time.Second}
	if _, err := recs.Outcome(ctx, event.Record{EventID: "evX", AccountID: "acct1", KeyID: "keyS", Outcome: event.Revoked,
		Status: 200, CFRay: "evx-ray", Stream: s.cfg.Stream, Subject: s.cfg.Subjects[1], Sequence: 1, Attempts: 1,
		PublishedAt: time.Now().UTC().Format(time.RFC3339Nano)}); err != nil {
		t.Fatal(err)
	}
	remakeWithEvY(ctx, t, s, func() bool { return deletes.Load() >= 1 })
	reply := s.request(service.StatusSubject, `{"event_id":"evX"}`)
	var rec event.Record
	if serviceError(reply) != "" || json.Unmarshal(reply.Data, &rec) != nil || rec.Outcome != event.Revoked || rec.EventID != "evX" || rec.CFRay != "evx-ray" {
		t.Fatalf("revoker.status of evX (revoked and recorded) answered %q (error %q): evY at its old sequence hides its record",
			reply.Data, serviceError(reply))
	}
}

// remakeWithEvY deletes the work stream and makes it again, stores evY for
// acct1/keyS at its sequence 1 through revoker.revoke, and waits until
// inCall says evY's call is in flight.
func remakeWithEvY(ctx context.Context, t *testing.T, s *stack, inCall func() bool) {
	t.Helper()
	if err := s.js.DeleteStream(ctx, s.cfg.Stream); err != nil {
		t.Fatal(err)
	}
	if err := queue.Ensure(ctx, s.js, s.cfg.Topology(), zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	// A store whose answer was lost is 504, and the caller repeats it
	// under the same id, as the error says (it cannot be stored twice):
	// a loaded runner's stream, just made, has once been that slow.
	reply := s.request(service.RevokeSubject, evJSON("acct1", "keyS"), "Nats-Msg-Id", "evY")
	for i := 0; i < 3 && serviceError(reply) == "504"; i++ {
		t.Logf("evY: %s; repeated", reply.Header.Get(micro.ErrorHeader))
		reply = s.request(service.RevokeSubject, evJSON("acct1", "keyS"), "Nats-Msg-Id", "evY")
	}
	qy := decodeQueued(t, reply)
	if qy.Sequence != 1 {
		t.Fatalf("evY stored at %d; want 1", qy.Sequence)
	}
	queuetest.Eventually(t, 15*time.Second, "evY's call to be in flight", inCall)
}
