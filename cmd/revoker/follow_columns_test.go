package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestFollowKeepsItsColumns: `outcomes --follow` prints each record as it
// is stored; records of different widths, printed one by one, still line
// up under the header's columns (an operator reads the feed live).
func TestFollowKeepsItsColumns(t *testing.T) {
	s := hStack(t, nil)
	s.ensure()
	cfg := s.cfg()
	recs := &queue.Records{JS: s.js, Log: zap.NewNop(), OutcomeStream: cfg.OutcomeStream, OutcomePrefix: cfg.OutcomeSubject, Timeout: 5 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errb lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"outcomes", "--follow"},
			env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, lookup: func(k string) (string, bool) { v, ok := s.env[k]; return v, ok }})
	}()
	store := []event.Record{
		{EventID: "e1", AccountID: "a", KeyID: "k", Outcome: event.Revoked, Status: 200, CFRay: "r", Attempts: 1},
		{EventID: "a-much-longer-event-id", AccountID: "023e105f4ecef8ad9ca31a8372d0c353", KeyID: "k0123456789abcdef",
			Outcome: event.DeadLettered, Reason: event.RetriesExhausted, Status: 503, CFRay: "8c3f0d5f9b2a1e77-AMS", Attempts: 12},
		{EventID: "e3", AccountID: "b", KeyID: "q", Outcome: event.NotFound, Status: 404, CFRay: "x", Attempts: 2},
	}
	for i, rec := range store {
		rec.Stream, rec.Sequence, rec.Subject = cfg.Stream, uint64(i+1), cfg.Subjects[0]
		rec.PublishedAt = time.Now().UTC().Format(time.RFC3339Nano)
		rec.CompletedAt = rec.PublishedAt
		if _, err := recs.Outcome(ctx, rec); err != nil {
			t.Fatal(err)
		}
		// Each printed before the next is stored: a live feed.
		queuetest.Eventually(t, 10*time.Second, "record "+rec.EventID+" printed", func() bool {
			return strings.Contains(out.String(), rec.EventID)
		})
	}
	cancel()
	<-done
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("printed %d lines, want a header and 3 records:\n%s", len(lines), out.String())
	}
	for _, col := range []string{"OUTCOME", "ACCOUNT", "STATUS", "CF-RAY", "EVENT ID"} {
		at := strings.Index(lines[0], col)
		for _, l := range lines[1:] {
			if at >= len(l) || l[at-1] != ' ' || l[at] == ' ' {
				t.Fatalf("column %s (at %d) is not where a record's value starts:\n%s", col, at, out.String())
			}
		}
	}
}
