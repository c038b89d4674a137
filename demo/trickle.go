package demo

import (
	"context"
	"fmt"
	"maps"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
)

// Defaults of Trickle: one event every TrickleEvery, a report every
// TrickleReport.
const (
	TrickleEvery  = 400 * time.Millisecond
	TrickleReport = 10 * time.Second
)

// trickleKind is one kind of event in the trickle: what the stand-in does
// with it and which outcome it earns.
type trickleKind struct {
	urgent  bool
	account string                  // the account the event names
	script  []int                   // the stand-in's answers for the event's key
	body    func(key string) string // nil: a well-formed event for key
}

// trickle is one cycle of the trickle's events, two of every four for each
// account: every outcome (revoked, not_found, requeued, dead_lettered for
// invalid_event, api_rejected, retries_exhausted and account_not_allowed),
// urgent work, a 429 that pauses one token's calls for a second. At one
// event every TrickleEvery, about 3 API calls a second in all, under the
// Rate of either token alone, so nothing backs up; the key that never
// succeeds answers 408 rather than 5xx, so the API-error alert stays quiet
// while retries, requeues and dead letters still show.
var trickle = func() []trickleKind {
	accts := Accounts()
	c := make([]trickleKind, 40)
	for i := range c {
		c[i].urgent = i%5 == 0
		c[i].account = accts[i/2%len(accts)].ID
	}
	c[3].script = []int{404}                                             // deleted earlier by someone else
	c[11].script = []int{503, 503}                                       // a flaky edge
	c[17].script = []int{429}                                            // the token's limit: Retry-After: 1
	c[23].script = []int{400}                                            // refused: dead-lettered at once
	c[29].body = func(string) string { return "revoke demoacct please" } // not JSON
	c[33].body = func(string) string { return `{"account_id":"demoacct","key_id":"../../etc"}` }
	c[37].script = repeat(408, 100) // never succeeds: requeued, then dead-lettered
	c[39].account = Unserved        // no credential: dead-lettered, no call
	return c
}()

// Progress is what Trickle has done so far.
type Progress struct {
	// Published counts the events stored.
	Published int
	// Outcomes counts the outcome records seen, by outcome.
	Outcomes map[event.Outcome]int
}

// Trickle publishes a steady trickle of sample events, one every every
// (TrickleEvery when 0), until ctx ends (nil) or the worker stops (an
// error): a local system with live metrics and no Cloudflare account. Every
// reportEvery (TrickleReport when 0) it gives report what it has done.
// A failed publish is logged, and the trickle goes on.
func (s *Stack) Trickle(ctx context.Context, every, reportEvery time.Duration, report func(Progress)) error {
	if every <= 0 {
		every = TrickleEvery
	}
	if reportEvery <= 0 {
		reportEvery = TrickleReport
	}
	var mu sync.Mutex
	counts := map[event.Outcome]int{}
	sub, err := s.subscribeOutcomes(func(o event.Record) {
		mu.Lock()
		counts[o.Outcome]++
		mu.Unlock()
	})
	if err != nil {
		return err
	}
	defer sub.Unsubscribe() //nolint:errcheck // the connection closes with the stack

	sched, urgent := s.cfg.LowestPriority(), s.cfg.HighestPriority()
	tick := time.NewTicker(every)
	defer tick.Stop()
	rep := time.NewTicker(reportEvery)
	defer rep.Stop()
	published, failed := 0, 0
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return nil
		case <-s.workerDone:
			return s.stopped()
		case <-rep.C:
			if report != nil {
				mu.Lock()
				p := Progress{Published: published, Outcomes: maps.Clone(counts)}
				mu.Unlock()
				report(p)
			}
			n-- // no event this turn
			continue
		case <-tick.C:
		}
		k := trickle[n%len(trickle)]
		key := fmt.Sprintf("key%07d", n)
		if len(k.script) > 0 {
			s.api.Script(key, k.script...)
		}
		subject, body := sched, eventBody(k.account, key, "scheduled rotation")
		if k.urgent {
			subject, body = urgent, eventBody(k.account, key, "leaked")
		}
		if k.body != nil {
			body = k.body(key)
		}
		// Ids unique to this run: a restart begins with an empty store.
		if err := s.publish(ctx, subject, fmt.Sprintf("demo-%d-%d", os.Getpid(), n), body); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if failed++; failed == 1 || failed%100 == 0 {
				s.log.Warn("demo: publish failed", zap.Int("failures", failed), zap.Error(err))
			}
			continue
		}
		published++
	}
}
