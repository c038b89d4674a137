package queue_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
)

// A dead letter's write that JetStream calls a duplicate is not taken as
// written when the stored record, under the same id, counts other calls,
// another status or another detail: a record planted with none must not
// stand in for the worker's (SPEC §5).
func TestPlantedDeadLetterWithOtherCountsNotTaken(t *testing.T) {
	js, cfg := dlqTSetup(t)
	body := `{"account_id":"a","key_id":"k"}`
	real := event.DeadLetter{Reason: event.APIRejected, Detail: "HTTP 400: 1234 bad request", Status: 400, Called: true, Attempts: 3,
		EventID: "ev-1", Stream: cfg.Stream, Subject: "revoke.urgent", Sequence: 9, FailedAt: time.Now()}
	for _, plant := range []struct {
		name   string
		change func(*event.DeadLetter)
	}{
		{"no calls", func(d *event.DeadLetter) { d.Status, d.Called, d.Attempts = 0, false, 0 }},
		{"fewer calls", func(d *event.DeadLetter) { d.Attempts = 1 }},
		{"another status", func(d *event.DeadLetter) { d.Status = 404 }},
		{"another detail", func(d *event.DeadLetter) { d.Detail = "no call was made; nothing to see" }},
	} {
		t.Run(plant.name, func(t *testing.T) {
			js, cfg := dlqTSetup(t)
			planted := real
			plant.change(&planted)
			dlqTWrite(t, js, cfg, planted, body)

			got := writeDeadLetter(t, js, cfg, real, body, 1)
			if len(got) != 2 {
				t.Fatalf("%d dead letters stored, want the planted one and the worker's", len(got))
			}
			if r := got[1]; r.Attempts != 3 || r.Status != "400" || r.Detail != real.Detail {
				t.Errorf("the worker's record says attempts %d, status %q, detail %q; want 3, 400, %q", r.Attempts, r.Status, r.Detail, real.Detail)
			}
		})
	}

	// A retried write of the same record, later, is still one record.
	if got := writeDeadLetter(t, js, cfg, real, body, 2); len(got) != 1 {
		t.Errorf("a retried write of one record stored %d records", len(got))
	}
}

// writeDeadLetter writes d through Records n times, each with a new
// failure time, and returns the dead letters stored then.
func writeDeadLetter(t *testing.T, js jetstream.JetStream, cfg config.Config, d event.DeadLetter, body string, n int) []queue.DeadLetterRecord {
	t.Helper()
	recs := &queue.Records{JS: js, Log: zap.NewNop(), DLQStream: cfg.DLQStream, DLQSubject: cfg.DLQSubject,
		OutcomeStream: cfg.OutcomeStream, OutcomePrefix: cfg.OutcomeSubject, Timeout: 5 * time.Second}
	for range n {
		d.FailedAt = time.Now()
		if err := recs.DeadLetter(dlqTCtx(t), d, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := queue.ListDeadLetters(dlqTCtx(t), js, cfg.DLQStream, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// An event dead-lettered on one delivery whose outcome record could not
// be written is called for again on the next (the trail has no record),
// within the dead letters' duplicate window: its dead letter must count
// both calls, not stand as the first delivery wrote it (SPEC §5:
// Revoker-Attempts is every call, all deliveries together).
func TestDeadLetterOfALaterDeliveryCountsItsCalls(t *testing.T) {
	rej := answer{status: 400, body: envelope(1234, "bad request")}
	s := newStack(t, nil, answers(map[string][]answer{"krej": {rej, rej}}))
	s.start()
	ctx := context.Background()
	// The outcome stream stays readable but refuses every record.
	oc := queue.OutcomeStream(s.cfg.Topology())
	small := oc
	small.MaxMsgSize = 16
	if _, err := s.js.UpdateStream(ctx, small); err != nil {
		t.Fatal(err)
	}
	s.publish(s.cfg.LowestPriority(), eventJSON(acct, "krej"), "")
	s.waitFor("the first dead letter stored", func() bool { return s.count(s.cfg.DLQStream) == 1 })
	s.waitFor("the outcome record refused", func() bool {
		return s.logs.FilterMessageSnippet("outcome record not written").Len() >= 1
	})
	s.stop()
	if _, err := s.js.UpdateStream(ctx, oc); err != nil {
		t.Fatal(err)
	}
	s.start()
	s.waitFor("the outcome recorded", func() bool { return len(s.outcomes()) == 1 })
	o := s.outcomes()[0]
	calls := s.deletes("krej")
	if o.Outcome != event.DeadLettered || o.Attempts != calls {
		t.Fatalf("outcome %s with attempts %d; want dead_lettered with the %d calls made", o.Outcome, o.Attempts, calls)
	}
	var counts []int
	for _, m := range s.msgs(s.cfg.DLQStream) {
		n, _ := strconv.Atoi(m.Header.Get(queue.HeaderAttempts))
		counts = append(counts, n)
	}
	if len(counts) == 0 || counts[len(counts)-1] != calls {
		t.Fatalf("the dead letters count %v calls; the last must count the %d made", counts, calls)
	}
}
