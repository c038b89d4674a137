package queue_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/metrics"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/worker"
)

type budgetRoutes map[string]worker.Route

func (r budgetRoutes) Route(account string) (worker.Route, bool) {
	rt, ok := r[account]
	return rt, ok
}

// runRouted is stack.run with two budgets of their own (a credentials
// file): account acctA on budget a, acctB on budget b, each with its own
// gate at rate perSecond, and the shared gate bounding the calls in flight.
func (s *stack) runRouted(ctx context.Context, done chan<- error, perSecond float64) (*metrics.Metrics, *throttle.Gate, *throttle.Gate) {
	s.t.Helper()
	client, err := cloudflare.New(cloudflare.Config{
		BaseURL: s.cfg.BaseURL, Credential: cloudflare.Token(s.cfg.APIToken),
		Timeout: s.cfg.HTTPTimeout, UserAgent: "revoker/test",
	})
	if err != nil {
		s.t.Fatal(err)
	}
	log := zap.NewNop()
	m := metrics.New(prometheus.NewRegistry(), metrics.Labels{
		Subjects: s.cfg.Subjects, Outcomes: event.Names(event.Outcomes), Reasons: event.Names(event.Reasons),
	}, metrics.Build{Version: "test"})
	ready := metrics.NewReadiness(prometheus.NewRegistry(), queue.ReadyConsumers)
	shared := throttle.New(throttle.Config{Priorities: len(s.cfg.Subjects), Concurrency: s.cfg.Concurrency})
	ga := throttle.New(throttle.Config{Priorities: len(s.cfg.Subjects), Concurrency: throttle.Unbounded, Rate: perSecond})
	gb := throttle.New(throttle.Config{Priorities: len(s.cfg.Subjects), Concurrency: throttle.Unbounded, Rate: perSecond})
	s.t.Cleanup(func() { shared.Close(); ga.Close(); gb.Close() })
	routes := budgetRoutes{
		"acctA": {Credential: "cred-a", Identity: "a", Gate: ga, Budget: m.Budget("a"), Rate: perSecond},
		"acctB": {Credential: "cred-b", Identity: "b", Gate: gb, Budget: m.Budget("b"), Rate: perSecond},
	}
	ledger := &queue.Ledger{}
	c := &queue.Consumer{
		JS: s.js, Cfg: s.cfg.Topology(), ShutdownTimeout: s.cfg.ShutdownTimeout, Gate: shared, Ledger: ledger,
		Metrics: m, Ready: ready, Log: log, FetchWait: 200 * time.Millisecond,
	}
	w := worker.New(worker.Config{
		Subjects: s.cfg.Subjects, RateLimit: perSecond,
		RetryInitial: s.cfg.RetryInitial, RetryMaxInterval: s.cfg.RetryMaxInterval,
		RetryMaxElapsed: s.cfg.RetryMaxElapsed, HandBackDelay: c.HandBackDelay(), Name: "test-host",
	}, worker.Deps{
		API: client, Gate: shared, Routes: routes, Ledger: ledger, Metrics: m, Ready: ready, Log: log,
		Records: &queue.Records{
			JS: s.js, Log: log, Timeout: 5 * time.Second,
			DLQStream: s.cfg.DLQStream, DLQSubject: s.cfg.DLQSubject,
			OutcomeStream: s.cfg.OutcomeStream, OutcomePrefix: s.cfg.OutcomeSubject,
		},
	})
	c.Handle = w.Handle
	go func() { done <- c.Run(ctx) }()
	s.waitFor("consumers bound", func() bool { ok, _ := ready.Ready(); return ok })
	return m, ga, gb
}

// TestUrgentNotBehindAnotherBudgetsRetries: two budgets of their
// own (SPEC §6), one call in flight at most (the urgent lane holds 2).
// Account A's budget runs at 1 call a second and has a backlog of urgent
// events, each of whose first call met a 503 (the API's passing trouble):
// they wait for A's rate slots to call again. An urgent event of account
// B, whose budget is idle, must not wait behind A's backlog beyond what
// the shared concurrency imposes (SPEC §9: "an incident in one account
// never waits behind another account's hold or backlog beyond what the
// shared concurrency and address limit impose"; §6: the shared slots go to
// waiting events in priority order, whatever their budget). It must be
// called before A's backlog is worked off: at most a couple of A's calls
// (the one in flight, one whose slot is due) come between its publication
// and its call.
func TestUrgentNotBehindAnotherBudgetsRetries(t *testing.T) {
	s := newStack(t, func(c *config.Config) {
		c.Concurrency = 1 // the urgent lane holds 2
		c.RetryInitial = 10 * time.Millisecond
		c.RetryMaxInterval = 20 * time.Millisecond
		c.RetryMaxElapsed = time.Minute
		c.AckWait = 60 * time.Second
		c.MaxDeliver = 5
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	s.runRouted(ctx, done, 1)
	t.Cleanup(func() { cancel(); <-done })

	const n = 10
	var aKeys []string
	for i := 0; i < n; i++ {
		k := "a" + string(rune('0'+i))
		aKeys = append(aKeys, k)
		s.api.Script(k, http.StatusServiceUnavailable)
	}
	for _, k := range aKeys {
		s.publish(s.cfg.HighestPriority(), eventJSON("acctA", k), "")
	}
	// Every A event has met its 503: they all wait for A's slots.
	s.waitFor("every A event's first call answered 503", func() bool {
		for _, k := range aKeys {
			if s.deletes(k) == 0 {
				return false
			}
		}
		return true
	})
	published := time.Now()
	s.publish(s.cfg.HighestPriority(), eventJSON("acctB", "b0"), "")
	s.waitFor("b0 called", func() bool { return s.deletes("b0") > 0 })

	var bAt time.Time
	aBetween := 0
	for _, r := range s.api.Requests() {
		if r.KeyID == "b0" && bAt.IsZero() {
			bAt = r.At
		}
	}
	for _, r := range s.api.Requests() {
		if r.AccountID == "acctA" && r.Method == http.MethodDelete && r.At.After(published) {
			if r.At.Before(bAt) {
				aBetween++
			}
		}
	}
	t.Logf("b0 called %v after its publication; %d calls of budget A came between", bAt.Sub(published).Round(time.Millisecond), aBetween)
	if aBetween > 2 {
		t.Errorf("%d calls of budget A (1/s) came between b0's publication and its first call (%v): the urgent event of budget B waited behind budget A's backlog, not only for the call in flight",
			aBetween, bAt.Sub(published).Round(time.Millisecond))
	}
}
