package demo

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
)

// Sample is one sample event and what the stand-in does with it.
type Sample struct {
	// ID names the event: its Nats-Msg-Id is "demo-" + ID.
	ID string
	// Account is the account the event names ("" when it names none
	// that can be read).
	Account string
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
// urgent ones, spread over both accounts, earning every outcome and every
// dead-letter reason the stand-in can provoke, and one for an account no
// credential serves.
func Samples() []Sample {
	accts := Accounts()
	a, b := accts[0].ID, accts[1].ID
	rot := func(id, account, what string, script ...int) Sample {
		return Sample{ID: id, Account: account, Body: eventBody(account, id, "rotation"), Script: script, What: what}
	}
	leak := func(id, account, what string, script ...int) Sample {
		return Sample{ID: id, Account: account, Urgent: true, Body: eventBody(account, id, "leaked in a public repo"), Script: script, What: what}
	}
	return []Sample{
		rot("rot01", a, "success"),
		rot("rot02", b, "success"),
		rot("rot03", a, "two 503s, then success", 503, 503), // a flaky edge
		rot("rot04", b, "success"),
		rot("rot05", a, "429 Retry-After: 1 (holds this token's calls)", 429), // the token's rate limit: the other token goes on
		rot("rot06", b, "already deleted (404)", 404),                         // deleted earlier by someone else
		rot("rot07", a, "400: refused by the API", 400),                       // dead-lettered at once
		{ID: "rot08", Account: b, Body: fmt.Sprintf(`{"account_id":%q,"key_id":"../../etc"}`, b), What: "invalid key id"},
		rot("rot09", b, "503 on every call", repeat(503, 100)...), // retried, then dead-lettered
		rot("rot10", Unserved, "none: no credential for the account"),
		{ID: "bad01", Body: `revoke demoacct rot11 please`, What: "not JSON"},
		leak("leak01", a, "urgent, success"),
		leak("leak02", b, "urgent, success"),
		leak("leak03", a, "urgent, one 503", 503),
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
	// Budgets are the stand-in's calls by the budget they were charged
	// to, by name; a call no credential matched has the budget "".
	Budgets []BudgetCalls
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
	reqs := s.api.Requests()
	for _, q := range reqs {
		rep.APICalls++
		if q.Status == http.StatusTooManyRequests {
			rep.RateLimited++
		}
	}
	rep.Budgets = byBudget(reqs)
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

// BudgetCalls is what the stand-in saw of one rate budget.
type BudgetCalls struct {
	// Budget is the budget's name.
	Budget string
	// Credentials name the credentials whose calls were charged to it,
	// sorted.
	Credentials []string
	// Calls counts every call charged to it: Deletes, Lists (key lists,
	// proving 404s), Checks (token checks) and any other.
	Calls, Deletes, Lists, Checks int
	// RateLimited counts its calls answered 429, scripted or not.
	RateLimited int
}

// byBudget sums the request log by budget, sorted by name.
func byBudget(reqs []cloudflaretest.Request) []BudgetCalls {
	by := map[string]*BudgetCalls{}
	var names []string
	for _, q := range reqs {
		b := by[q.Budget]
		if b == nil {
			b = &BudgetCalls{Budget: q.Budget}
			by[q.Budget] = b
			names = append(names, q.Budget)
		}
		b.Calls++
		switch {
		case strings.HasSuffix(q.Path, "/tokens/verify"):
			b.Checks++
		case q.Method == http.MethodDelete:
			b.Deletes++
		case q.Method == http.MethodGet && q.AccountID != "" && q.KeyID == "":
			b.Lists++
		}
		if q.Status == http.StatusTooManyRequests {
			b.RateLimited++
		}
		if !slices.Contains(b.Credentials, q.Credential) {
			b.Credentials = append(b.Credentials, q.Credential)
		}
	}
	sort.Strings(names)
	out := make([]BudgetCalls, 0, len(names))
	for _, n := range names {
		sort.Strings(by[n].Credentials)
		out = append(out, *by[n])
	}
	return out
}
