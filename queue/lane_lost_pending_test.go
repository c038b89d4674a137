package queue_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// fullUrgentLane runs a worker without REVOKER_CREATE_STREAMS (its streams
// made first) whose urgent lane is full: of four urgent events, one is in
// a call the API holds, one waits for the permit, and two wait in the
// stream. free answers the held calls.
func fullUrgentLane(t *testing.T) (s *stack, free func()) {
	t.Helper()
	var (
		held    atomic.Int32
		release = make(chan struct{})
		once    sync.Once
	)
	free = func() { once.Do(func() { close(release) }) }
	s = newStack(t, func(c *config.Config) {
		c.HTTPTimeout = time.Minute
		c.Concurrency = 1 // the urgent lane holds 2: one in a call, one waiting
	}, holdKeys("uh", &held, release))
	s.start() // makes what is missing
	s.stop()
	s.cfg.CreateStreams = false
	s.start()
	t.Cleanup(free)
	for _, k := range []string{"uh1", "uh2", "uh3", "uh4"} {
		s.publish(s.cfg.Subjects[0], eventJSON(acct, k), "id-"+k)
	}
	s.waitFor("the urgent lane full: one call held, one event waiting", func() bool {
		return held.Load() == 1 && testutil.ToFloat64(s.m.Inflight) == 2
	})
	return s, free
}

// scheduledGoesOn frees the urgent lane's held calls, and checks that once
// they finish a scheduled event is called within 5 s, while the urgent
// consumer is not there to deliver what waits (as why says).
func scheduledGoesOn(t *testing.T, s *stack, free func(), why string) {
	t.Helper()
	free()
	s.waitFor("the events in hand finished", func() bool { return s.revoked("uh1", "uh2") })
	s.publish(s.cfg.LowestPriority(), eventJSON(acct, "sched1"), "id-sched1")
	queuetest.Eventually(t, 5*time.Second, "the scheduled lane calls while the urgent consumer is "+why, func() bool {
		return s.revoked("sched1")
	})
}

// TestLostUrgentConsumerLeavesNoStalePending (SPEC §4, "The proof", point
// 7): the urgent lane is full (one call held, one event waiting for a
// permit) and more urgent events wait in the stream, so the gate hears
// that urgent work is pending. Its consumer is deleted, and without
// REVOKER_CREATE_STREAMS it is not made again. Once the events in hand
// finish, the scheduled lane must go on calling: urgent events that no
// consumer can deliver must not hold every lower lane back for ever.
func TestLostUrgentConsumerLeavesNoStalePending(t *testing.T) {
	s, free := fullUrgentLane(t)
	urgent := s.cfg.Subjects[0]
	s.waitFor("the urgent events waiting in the stream known", func() bool {
		return testutil.ToFloat64(s.m.Lane(urgent, 0).Pending) > 0
	})
	if err := s.js.DeleteConsumer(context.Background(), s.cfg.Stream, s.cfg.Durable(urgent)); err != nil {
		t.Fatal(err)
	}
	s.waitFor("not ready, naming the urgent lane", func() bool {
		ok, why := s.ready.Ready()
		return !ok && strings.Contains(why, urgent) && strings.Contains(why, "REVOKER_CREATE_STREAMS is false")
	})
	scheduledGoesOn(t, s, free, "gone")
}

// TestUrgentConsumerMadeAgainIncompatibleLeavesNoStalePending: as above,
// but the urgent consumer is made again by hand in a form revoker cannot
// use (headers only) while the lane is full. The watch reads that
// consumer's waiting events; they are not the lane's to fetch, and must
// not hold the lower lanes back once the events in hand finish.
func TestUrgentConsumerMadeAgainIncompatibleLeavesNoStalePending(t *testing.T) {
	s, free := fullUrgentLane(t)
	ctx := context.Background()
	urgent := s.cfg.Subjects[0]
	if err := s.js.DeleteConsumer(ctx, s.cfg.Stream, s.cfg.Durable(urgent)); err != nil {
		t.Fatal(err)
	}
	bad := queue.LaneConsumer(s.cfg.Topology(), urgent)
	bad.HeadersOnly = true
	if _, err := s.js.CreateConsumer(ctx, s.cfg.Stream, bad); err != nil {
		t.Fatal(err)
	}
	s.waitFor("not ready, naming the urgent consumer", func() bool {
		ok, why := s.ready.Ready()
		return !ok && strings.Contains(why, "headers only")
	})
	// Two looks of the watch at the full lane, with the consumer made again.
	for i := range 2 {
		s.waitFor(fmt.Sprintf("look %d", i+1), func() bool { return testutil.ToFloat64(s.m.Lane(urgent, 0).Pending) > 0 })
		s.m.Lane(urgent, 0).Pending.Set(0)
	}
	scheduledGoesOn(t, s, free, "unusable")
}
