package queue_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/queue"
)

// publishMany queues one event per key without waiting for each ack.
func (s *stack) publishMany(subject string, keys []string) {
	s.t.Helper()
	js, err := jetstream.New(s.nc, jetstream.WithPublishAsyncMaxPending(1024))
	if err != nil {
		s.t.Fatal(err)
	}
	var acks []jetstream.PubAckFuture
	for _, k := range keys {
		m := nats.NewMsg(subject)
		m.Data = []byte(eventJSON(acct, k))
		f, err := js.PublishMsgAsync(m, jetstream.WithStallWait(30*time.Second))
		if err != nil {
			s.t.Fatal(err)
		}
		acks = append(acks, f)
	}
	for _, f := range acks {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			s.t.Fatalf("publish: %v", err)
		case <-time.After(30 * time.Second):
			s.t.Fatal("publish acks did not arrive")
		}
	}
}

// ensure creates the streams and consumers before anything is published.
func (s *stack) ensure() {
	s.t.Helper()
	if err := queue.Ensure(context.Background(), s.js, s.cfg.Topology(), zap.NewNop()); err != nil {
		s.t.Fatal(err)
	}
}

func keyList(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%05d", prefix, i)
	}
	return out
}

// TestUrgentOvertakesBacklog: with a scheduled backlog of thousands and a
// low rate limit, urgent events published later are revoked before every
// scheduled event that was not already in flight when they arrived — with
// one replica and with two sharing the consumers.
func TestUrgentOvertakesBacklog(t *testing.T) {
	for _, replicas := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d replicas", replicas), func(t *testing.T) {
			const rate, backlog, urgent = 50, 2000, 10
			s := newStack(t, func(c *config.Config) { c.RateLimit = rate })
			s.ensure()
			s.publishMany(s.cfg.LowestPriority(), keyList("s", backlog))
			s.start()
			for range replicas - 1 {
				s.startReplica()
			}
			s.waitFor("the backlog being worked", func() bool { return s.api.Count() >= 2*rate })

			arrived := time.Now()
			s.publishMany(s.cfg.HighestPriority(), keyList("u", urgent))
			s.waitFor("every urgent event revoked", func() bool { return s.revokedCount("u") == urgent })

			var lastUrgent time.Time
			for _, r := range s.api.Requests() {
				if strings.HasPrefix(r.KeyID, "u") && r.At.After(lastUrgent) {
					lastUrgent = r.At
				}
			}
			// Scheduled calls that started after the urgent events arrived
			// and before the last of them was revoked: only those already
			// holding a permit (in flight) may be among them, plus one
			// rate interval's grant per replica.
			overtook := 0
			for _, r := range s.api.Requests() {
				if strings.HasPrefix(r.KeyID, "s") && r.At.After(arrived) && r.At.Before(lastUrgent) {
					overtook++
				}
			}
			if allowed := replicas * (s.cfg.Concurrency + 1); overtook > allowed {
				t.Fatalf("%d scheduled calls started after the urgent events arrived and before they were done; at most %d were in flight", overtook, allowed)
			}
			took := lastUrgent.Sub(arrived)
			scheduledLeft := backlog - s.revokedCount("s")
			t.Logf("%d urgent events revoked %v after arriving; %d scheduled calls in between; %d scheduled events still waiting",
				urgent, took.Round(time.Millisecond), overtook, scheduledLeft)
			if scheduledLeft < backlog/2 {
				t.Fatalf("only %d scheduled events were still waiting: the test did not have a backlog", scheduledLeft)
			}
		})
	}
}

// revokedCount counts keys with prefix that got a 200.
func (s *stack) revokedCount(prefix string) int {
	n := 0
	for _, r := range s.api.Requests() {
		if strings.HasPrefix(r.KeyID, prefix) && r.Status == http.StatusOK {
			n++
		}
	}
	return n
}

// TestRateLimit429PausesEveryCall: a 429 with Retry-After: 2 stops every
// call of the worker for 2 s, then calls resume — read from the stand-in's
// request log.
func TestRateLimit429PausesEveryCall(t *testing.T) {
	const pause = 2 * time.Second
	var (
		mu  sync.Mutex
		hit time.Time
		n   int
	)
	s := newStack(t, func(c *config.Config) { c.RateLimit = 20 },
		cloudflaretest.WithResponder(func(r cloudflaretest.Request) (int, http.Header, string, bool) {
			mu.Lock()
			defer mu.Unlock()
			if n++; n != 10 {
				return 0, nil, "", false
			}
			hit = r.At
			return 429, http.Header{"Retry-After": {"2"}}, envelope(971, "Rate limited"), true
		}))
	at429 := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return hit
	}
	s.ensure()
	s.publishMany(s.cfg.LowestPriority(), keyList("k", 60))
	s.start()
	s.waitFor("calls resumed after the pause", func() bool {
		hit := at429()
		for _, r := range s.api.Requests() {
			if !hit.IsZero() && r.At.After(hit.Add(pause)) {
				return true
			}
		}
		return false
	})
	hit = at429()
	var during []time.Duration
	for _, r := range s.api.Requests() {
		if d := r.At.Sub(hit); d > 0 && d < pause {
			during = append(during, d)
		}
	}
	if len(during) > 0 {
		t.Fatalf("%d calls started inside the 2s pause, at %v after the 429", len(during), during)
	}
	s.waitFor("the key that got the 429 revoked", func() bool { return s.revokedCount("k") >= 10 })
	s.waitFor("pause over", func() bool { return testutil.ToFloat64(s.m.APIPaused) == 0 })
	if got := testutil.ToFloat64(s.m.APIRequests.WithLabelValues("429")); got != 1 {
		t.Errorf("api_requests{429} = %v", got)
	}
	if testutil.CollectAndCount(s.m.RateLimitWaits) != 1 {
		t.Error("rate-limit wait histogram missing")
	}
}

// TestRateLimitHeadersSlowDownBeforeTheBudgetRunsOut: when the API says few
// calls are left for a long window, calls are spread over the rest of it
// instead of spending the budget and meeting a 429.
func TestRateLimitHeadersSlowDownBeforeTheBudgetRunsOut(t *testing.T) {
	s := newStack(t, func(c *config.Config) { c.RateLimit = 20 },
		cloudflaretest.WithResponder(func(r cloudflaretest.Request) (int, http.Header, string, bool) {
			// 5 calls left in a window that resets in 6 s: one every second
			// at most, though our own limit would allow 20.
			return 200, http.Header{"Ratelimit": {`"default";r=5;t=6`}}, okBody, true
		}))
	s.ensure()
	s.publishMany(s.cfg.LowestPriority(), keyList("h", 3))
	s.start()
	s.waitFor("three calls", func() bool { return s.api.Count() == 3 })
	reqs := s.api.Requests()
	for i := 1; i < len(reqs); i++ {
		if gap := reqs[i].At.Sub(reqs[i-1].At); gap < 900*time.Millisecond {
			t.Fatalf("calls %d and %d %v apart; the headers asked for about 1s", i-1, i, gap)
		}
	}
}
