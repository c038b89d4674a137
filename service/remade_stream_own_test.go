package service_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
	"github.com/revoker/revoker/service"
)

// TestStatusBySequenceAfterStreamMadeAgain: an event is revoked and
// recorded and leaves the work stream; the work stream is then deleted and
// made again at once. revoker.status asked for the event by
// stream/sequence/account/key (the reader does not know when it was
// stored) must still answer its own revoked record: it was stored within
// the minute left for the servers' clocks before the stream was made (a
// sequence asked for is otherwise the stream's as it is now).
func TestStatusBySequenceAfterStreamMadeAgain(t *testing.T) {
	s := newStack(t, nil)
	s.api.AddKey("acct1", "keyR")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q := decodeQueued(t, s.request(service.RevokeSubject, evJSON("acct1", "keyR")))
	queuetest.Eventually(t, 15*time.Second, "the event's record", func() bool {
		rs, err := queue.KeyOutcomes(ctx, s.js, s.cfg.OutcomeStream, s.cfg.OutcomeSubject, "acct1", "keyR", nil)
		return err == nil && len(rs) == 1
	})
	queuetest.Eventually(t, 15*time.Second, "the event to leave the work stream", func() bool {
		st, err := s.js.Stream(ctx, s.cfg.Stream)
		if err != nil {
			return false
		}
		_, err = st.GetMsg(ctx, q.Sequence)
		return err != nil
	})
	body := `{"stream":"` + s.cfg.Stream + `","sequence":1,"account_id":"acct1","key_id":"keyR"}`
	if rec := decodeRecord(t, s.request(service.StatusSubject, body)); rec.Outcome != event.Revoked {
		t.Fatalf("before the stream is made again: %+v", rec)
	}
	if err := s.js.DeleteStream(ctx, s.cfg.Stream); err != nil {
		t.Fatal(err)
	}
	if err := queue.Ensure(ctx, s.js, s.cfg.Topology(), zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	reply := s.request(service.StatusSubject, body)
	rec := decodeRecord(t, reply)
	if rec.Outcome != event.Revoked || rec.EventID != q.EventID {
		t.Fatalf("revoker.status of event %s (revoked, recorded) after the work stream was made again answered %s", q.EventID, reply.Data)
	}
}
