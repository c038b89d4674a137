package queue_test

import (
	"context"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
)

// TestConsumerMadeAgainUnnoticedIsNoFirstDelivery: a full lane (not fetching)
// does not notice that its consumer was deleted and made again elsewhere
// (another replica's rebind, within the watch's 1 s tick). The lane keeps
// the old consumer's freshness and delivery counts, so the new consumer's
// redelivery of an event that the lane itself delivered and gave back is
// numbered 1: it must not be taken for the event's first delivery (no
// recall, a blind write-ahead), or its record's attempts miss the earlier
// call.
func TestConsumerMadeAgainUnnoticedIsNoFirstDelivery(t *testing.T) {
	var (
		kCalls   atomic.Int32
		held     atomic.Int32
		releaseK = make(chan struct{})
		releaseH = make(chan struct{})
	)
	s := newStack(t, func(c *config.Config) {
		c.Concurrency = 1 // the lane holds 2
		c.RetryMaxElapsed = time.Millisecond
		c.HTTPTimeout = time.Minute
	}, cloudflaretest.WithResponder(func(r cloudflaretest.Request) (int, http.Header, string, bool) {
		if r.Method != http.MethodDelete {
			return 0, nil, "", false
		}
		switch r.KeyID {
		case "kstale":
			if kCalls.Add(1) == 1 {
				held.Add(1)
				<-releaseK
				return 500, nil, `<html>oops</html>`, true
			}
		case "khold":
			held.Add(1)
			<-releaseH
		}
		return 0, nil, "", false
	}))
	s.start()
	t.Cleanup(func() {
		select {
		case <-releaseK:
		default:
			close(releaseK)
		}
		select {
		case <-releaseH:
		default:
			close(releaseH)
		}
	})
	subj := s.cfg.LowestPriority()
	s.publish(subj, eventJSON(acct, "kstale"), "id-kstale") // seq 1
	s.waitFor("kstale's call held", func() bool { return held.Load() == 1 })
	s.publish(subj, eventJSON(acct, "khold"), "id-khold") // seq 2, waits for the one permit
	s.waitFor("the lane full", func() bool { return testutil.ToFloat64(s.m.Inflight) == 2 })

	// Another replica (or an operator) deletes the consumer and makes it
	// again, as ensureConsumer does, within a few milliseconds.
	remakeConsumer(t, s, subj)

	// The held call of kstale answers 500; its delivery's budget is
	// spent; it is given back, and the new consumer delivers it again.
	close(releaseK)
	s.waitFor("khold's call held (kstale's delivery gave its permit back)", func() bool { return held.Load() == 2 })
	close(releaseH)
	s.waitFor("kstale recorded", func() bool { return len(s.outcomesOf("kstale")) > 0 })

	calls := s.deletes("kstale")
	var rec event.Record
	for _, o := range s.outcomes() {
		if o.KeyID == "kstale" {
			rec = o
		}
	}
	for _, e := range s.logs.FilterField(zap.String("key", "kstale")).All() {
		t.Logf("log: %s delivery=%v", e.Message, e.ContextMap()["delivery"])
	}
	t.Logf("kstale: %d DELETE calls; record outcome=%s attempts=%d unanswered=%d", calls, rec.Outcome, rec.Attempts, rec.UnansweredCalls)
	if rec.Attempts != calls {
		t.Fatalf("record says attempts=%d, but %d DELETE calls were made for the event", rec.Attempts, calls)
	}
}

// TestConsumerMadeAgainUnnoticedCallsNotAgain: as
// TestConsumerMadeAgainUnnoticedIsNoFirstDelivery, but the held call
// revokes the key and its record is stored; the ack, sent for the lost
// consumer's delivery, does not remove the event, and the new consumer
// delivers it again, numbered 1: no second DELETE for an event already
// recorded revoked (SPEC §4: such a delivery "makes no call").
func TestConsumerMadeAgainUnnoticedCallsNotAgain(t *testing.T) {
	var (
		held     atomic.Int32
		releaseK = make(chan struct{})
		releaseH = make(chan struct{})
	)
	s := newStack(t, func(c *config.Config) {
		c.Concurrency = 1
		c.HTTPTimeout = time.Minute
	}, cloudflaretest.WithResponder(func(r cloudflaretest.Request) (int, http.Header, string, bool) {
		if r.Method != http.MethodDelete {
			return 0, nil, "", false
		}
		switch r.KeyID {
		case "kagain":
			if held.Load() == 0 {
				held.Add(1)
				<-releaseK
			}
		case "khold2":
			held.Add(1)
			<-releaseH
		}
		return 0, nil, "", false
	}))
	s.start()
	t.Cleanup(func() {
		for _, c := range []chan struct{}{releaseK, releaseH} {
			select {
			case <-c:
			default:
				close(c)
			}
		}
	})
	subj := s.cfg.LowestPriority()
	s.publish(subj, eventJSON(acct, "kagain"), "id-kagain")
	s.waitFor("kagain's call held", func() bool { return held.Load() == 1 })
	s.publish(subj, eventJSON(acct, "khold2"), "id-khold2")
	s.waitFor("the lane full", func() bool { return testutil.ToFloat64(s.m.Inflight) == 2 })

	remakeConsumer(t, s, subj)
	close(releaseK)
	s.waitFor("kagain recorded", func() bool { return len(s.outcomesOf("kagain")) > 0 })
	s.waitFor("khold2's call held", func() bool { return held.Load() == 2 })
	close(releaseH)
	s.waitFor("work stream empty", func() bool { return s.count(s.cfg.Stream) == 0 })
	t.Logf("kagain outcomes %v, DELETE calls %d", s.outcomesOf("kagain"), s.deletes("kagain"))
	if n := s.deletes("kagain"); n != 1 {
		t.Fatalf("%d DELETE calls for an event whose first call revoked the key and was recorded; want 1", n)
	}
}

// remakeConsumer deletes subj's consumer and makes it again at once, as a
// replica binding it again does.
func remakeConsumer(t *testing.T, s *stack, subj string) {
	t.Helper()
	ctx := context.Background()
	if err := s.js.DeleteConsumer(ctx, s.cfg.Stream, s.cfg.Durable(subj)); err != nil {
		t.Fatal(err)
	}
	st, err := s.js.Stream(ctx, s.cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	want := queue.LaneConsumer(s.cfg.Topology(), subj)
	want.Metadata = map[string]string{queue.MetaFreshFrom: strconv.FormatUint(st.CachedInfo().State.LastSeq+1, 10)}
	if _, err := s.js.CreateConsumer(ctx, s.cfg.Stream, want); err != nil {
		t.Fatal(err)
	}
}
