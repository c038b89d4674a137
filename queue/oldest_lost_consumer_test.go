package queue_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/revoker/revoker/queue/queuetest"
)

// TestOldestWaitingWithLostConsumer (SPEC §8): revoker_oldest_waiting_seconds
// is the age of the subject's oldest event with no final outcome, "whether
// still in the stream or held by this replica". An urgent event stored
// while the urgent consumer is gone (deleted by hand, not made again
// without REVOKER_CREATE_STREAMS) is in the stream with no outcome: the
// gauge must rise, or RevokerUrgentWaiting cannot see it.
func TestOldestWaitingWithLostConsumer(t *testing.T) {
	s := newStack(t, nil)
	s.start() // makes what is missing
	s.stop()
	s.cfg.CreateStreams = false
	s.start()
	urgent := s.cfg.Subjects[0]
	if err := s.js.DeleteConsumer(context.Background(), s.cfg.Stream, s.cfg.Durable(urgent)); err != nil {
		t.Fatal(err)
	}
	s.waitFor("not ready, naming the urgent lane", func() bool {
		ok, why := s.ready.Ready()
		return !ok && strings.Contains(why, urgent)
	})
	s.publish(urgent, eventJSON(acct, "lost1"), "id-lost1")
	if n := s.count(s.cfg.Stream); n != 1 {
		t.Fatalf("%d messages in %s; want the urgent event", n, s.cfg.Stream)
	}
	// The watch looks every second; give it five.
	queuetest.Eventually(t, 5*time.Second, "revoker_oldest_waiting_seconds{priority=\"0\"} > 0 with an urgent event in the stream", func() bool {
		return testutil.ToFloat64(s.m.Lane(urgent, 0).OldestWaiting) > 0
	})
	queuetest.Eventually(t, 5*time.Second, "revoker_consumer_pending_messages{priority=\"0\"} = 1 with an urgent event in the stream", func() bool {
		return testutil.ToFloat64(s.m.Lane(urgent, 0).Pending) == 1
	})
}
