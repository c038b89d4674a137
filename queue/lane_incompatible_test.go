package queue_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestConsumerMadeAgainIncompatibleStopsOnlyItsLane (SPEC §4, "The proof",
// point 7): while the worker runs, the scheduled lane's consumer is deleted
// and made again by someone else in a form revoker cannot use (headers
// only). That lane waits, naming why; the urgent lane goes on revoking,
// and the worker does not stop: one tampered consumer must not take every
// replica's urgent revocations down with it. Once the consumer is made
// right, the lane is bound again and its events are revoked.
func TestConsumerMadeAgainIncompatibleStopsOnlyItsLane(t *testing.T) {
	s := newStack(t, nil)
	s.start() // makes what is missing
	s.stop()
	// Not made again by the worker: the test makes each consumer itself.
	s.cfg.CreateStreams = false
	s.start()
	ctx := context.Background()
	urgent, scheduled := s.cfg.Subjects[0], s.cfg.LowestPriority()
	durable := s.cfg.Durable(scheduled)

	if err := s.js.DeleteConsumer(ctx, s.cfg.Stream, durable); err != nil {
		t.Fatal(err)
	}
	bad := queue.LaneConsumer(s.cfg.Topology(), scheduled)
	bad.HeadersOnly = true
	if _, err := s.js.CreateConsumer(ctx, s.cfg.Stream, bad); err != nil {
		t.Fatal(err)
	}
	s.waitFor("not ready, naming the scheduled lane's consumer", func() bool {
		ok, why := s.ready.Ready()
		return !ok && strings.Contains(why, durable) && strings.Contains(why, "headers only")
	})

	s.publish(urgent, eventJSON(acct, "urg1"), "id-urg1")
	s.waitFor("the urgent event revoked", func() bool { return s.revoked("urg1") })
	select {
	case err := <-s.done:
		t.Fatalf("the worker stopped: %v", err)
	default:
	}

	s.publish(scheduled, eventJSON(acct, "sch1"), "id-sch1")
	if err := s.js.DeleteConsumer(ctx, s.cfg.Stream, durable); err != nil {
		t.Fatal(err)
	}
	if _, err := s.js.CreateConsumer(ctx, s.cfg.Stream, queue.LaneConsumer(s.cfg.Topology(), scheduled)); err != nil {
		t.Fatal(err)
	}
	queuetest.Eventually(t, 30*time.Second, "the scheduled event revoked once the consumer is fixed", func() bool {
		return s.revoked("sch1")
	})
	if ok, why := s.ready.Ready(); !ok {
		t.Fatalf("not ready after the consumer was made again: %s", why)
	}
}
