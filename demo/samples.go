package demo

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
)

// Sample is one sample event and what the stand-in does with it.
type Sample struct {
	// ID names the event: its Nats-Msg-Id is "demo-" + ID.
	ID string
	// Urgent events go to the highest-priority subject, the others to
	// the lowest.
	Urgent bool
	// Body is the event as published, valid or not.
	Body string
	// Script is what the stand-in answers, in order, for the key named ID
	// before it succeeds (cloudflaretest.Server.Script).
	Script []int
	// What says in words what the stand-in does with the event.
	What string
}

// Samples are the events of `revoker demo`: scheduled ones first, then
// urgent ones, earning every outcome and every dead-letter reason the
// stand-in can provoke.
func Samples() []Sample {
	rot := func(id, what string, script ...int) Sample {
		return Sample{ID: id, Body: eventBody(id, "rotation"), Script: script, What: what}
	}
	leak := func(id, what string, script ...int) Sample {
		return Sample{ID: id, Urgent: true, Body: eventBody(id, "leaked in a public repo"), Script: script, What: what}
	}
	return []Sample{
		rot("rot01", "success"),
		rot("rot02", "success"),
		rot("rot03", "two 503s, then success", 503, 503), // a flaky edge
		rot("rot04", "success"),
		rot("rot05", "429 Retry-After: 1 (pauses every call)", 429), // the account's rate limit
		rot("rot06", "already deleted (404)", 404),                  // deleted earlier by someone else
		rot("rot07", "400: refused by the API", 400),                // dead-lettered at once
		{ID: "rot08", Body: `{"account_id":"demoacct","key_id":"../../etc"}`, What: "invalid key id"},
		rot("rot09", "503 on every call", repeat(503, 100)...), // retried, then dead-lettered
		{ID: "bad01", Body: `revoke demoacct rot10 please`, What: "not JSON"},
		leak("leak01", "urgent, success"),
		leak("leak02", "urgent, success"),
		leak("leak03", "urgent, one 503", 503),
	}
}

// Result is what became of one sample.
type Result struct {
	Sample
	// Subject is the subject the sample was published on.
	Subject string
	// Record is its outcome record (the last one, when a record
	// supersedes another).
	Record event.Record
}

// TimeToOutcome is the time from the stream storing the event to its
// outcome; false when the record does not say.
func (r Result) TimeToOutcome() (time.Duration, bool) {
	p, err1 := time.Parse(time.RFC3339Nano, r.Record.PublishedAt)
	c, err2 := time.Parse(time.RFC3339Nano, r.Record.CompletedAt)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return c.Sub(p), true
}

// Report is what Run saw.
type Report struct {
	// Results are in the order their outcomes arrived.
	Results []Result
	// Elapsed is from the first publish to the last outcome.
	Elapsed time.Duration
	// Overtaken counts the scheduled events, all published before every
	// urgent one, that finished after the last urgent one: what priority
	// bought.
	Overtaken int
	// APICalls is how many calls the stand-in answered, RateLimited how
	// many of them with 429.
	APICalls, RateLimited int
	// DeadLetterStream holds DeadLetters, in the order stored; when they
	// could not be read, DeadLettersErr says why.
	DeadLetterStream string
	DeadLetters      []queue.DeadLetterRecord
	DeadLettersErr   error
}

// Run scripts the stand-in for samples, publishes them in order and waits,
// up to timeout, until every one has an outcome record.
func (s *Stack) Run(ctx context.Context, samples []Sample, timeout time.Duration) (*Report, error) {
	sched, urgent := s.cfg.LowestPriority(), s.cfg.HighestPriority()
	byID := make(map[string]Result, len(samples))
	for _, sm := range samples {
		if len(sm.Script) > 0 {
			s.api.Script(sm.ID, sm.Script...)
		}
		subject := sched
		if sm.Urgent {
			subject = urgent
		}
		byID[sm.ID] = Result{Sample: sm, Subject: subject}
	}

	// Listen for outcomes before publishing, so that none can be missed.
	outcomes := make(chan event.Record, len(samples)+16)
	sub, err := s.subscribeOutcomes(func(o event.Record) {
		select {
		case outcomes <- o:
		case <-ctx.Done():
		}
	})
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe() //nolint:errcheck // the connection closes with the stack

	start := time.Now()
	for _, sm := range samples {
		if err := s.publish(ctx, byID[sm.ID].Subject, "demo-"+sm.ID, sm.Body); err != nil {
			return nil, fmt.Errorf("publish %s: %w", sm.ID, err)
		}
	}

	var order []string
	seen := map[string]bool{}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for len(order) < len(samples) {
		select {
		case o := <-outcomes:
			id, ours := strings.CutPrefix(o.EventID, "demo-")
			r, known := byID[id]
			if !ours || !known {
				continue
			}
			if !seen[id] {
				seen[id] = true
				order = append(order, id)
			}
			r.Record = o
			byID[id] = r
		case <-deadline.C:
			return nil, fmt.Errorf("only %d of %d events accounted for after %v", len(order), len(samples), timeout)
		case <-s.workerDone:
			return nil, s.stopped()
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}

	rep := &Report{Elapsed: time.Since(start), DeadLetterStream: s.cfg.DLQStream}
	for _, id := range order {
		rep.Results = append(rep.Results, byID[id])
	}
	rep.Overtaken = overtaken(rep.Results)
	for _, q := range s.api.Requests() {
		rep.APICalls++
		if q.Status == http.StatusTooManyRequests {
			rep.RateLimited++
		}
	}
	rep.DeadLetters, rep.DeadLettersErr = queue.ListDeadLetters(ctx, s.js, s.cfg.DLQStream, nil, 0)
	sort.Slice(rep.DeadLetters, func(i, j int) bool { return rep.DeadLetters[i].Sequence < rep.DeadLetters[j].Sequence })
	return rep, nil
}

// overtaken counts the scheduled events in results (in order of outcome)
// that finished after the last urgent one.
func overtaken(results []Result) int {
	behind := 0
	for _, r := range results {
		switch {
		case r.Urgent:
			behind = 0
		default:
			behind++
		}
	}
	return behind
}
