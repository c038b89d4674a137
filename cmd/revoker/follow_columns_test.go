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
	out := follow(t, []event.Record{
		{EventID: "e1", AccountID: "a", KeyID: "k", Outcome: event.Revoked, Status: 200, CFRay: "r", Attempts: 1},
		{EventID: "a-much-longer-event-id", AccountID: "023e105f4ecef8ad9ca31a8372d0c353", KeyID: "k0123456789abcdef",
			Outcome: event.DeadLettered, Reason: event.RetriesExhausted, Status: 503, CFRay: "8c3f0d5f9b2a1e77-AMS", Attempts: 12},
		{EventID: "e3", AccountID: "b", KeyID: "q", Outcome: event.NotFound, Status: 404, CFRay: "x", Attempts: 2},
	})
	wantColumns(t, out, 3)
}

// TestFollowKeepsItsColumnsWithACorrection: a record that supersedes another
// (SPEC §4, point 3) is one the worker writes; under --follow its columns
// still start under the header's, and it says what it corrects.
func TestFollowKeepsItsColumnsWithACorrection(t *testing.T) {
	out := follow(t, []event.Record{
		{EventID: "e1", AccountID: "a", KeyID: "k", Outcome: event.NotFound, Status: 404, CFRay: "r", Attempts: 1},
		{EventID: "e1", AccountID: "a", KeyID: "k", Outcome: event.Revoked, Status: 200, CFRay: "r2", Attempts: 2, Supersedes: 1},
	})
	if !strings.Contains(out, "(supersedes record 1)") {
		t.Fatalf("the correction does not say what it corrects:\n%s", out)
	}
	wantColumns(t, out, 2)
}

// follow runs `outcomes --follow`, stores recs one by one, each once the
// one before is printed (a live feed), and returns what it printed.
func follow(t *testing.T, recs []event.Record) string {
	t.Helper()
	s := hStack(t, nil)
	s.ensure()
	cfg := s.cfg()
	trail := &queue.Records{JS: s.js, Log: zap.NewNop(), OutcomeStream: cfg.OutcomeStream, OutcomePrefix: cfg.OutcomeSubject, Timeout: 5 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errb lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"outcomes", "--follow"},
			env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, lookup: func(k string) (string, bool) { v, ok := s.env[k]; return v, ok }})
	}()
	for i, rec := range recs {
		rec.Stream, rec.Sequence, rec.Subject = cfg.Stream, uint64(i+1), cfg.Subjects[0]
		rec.PublishedAt = time.Now().UTC().Format(time.RFC3339Nano)
		rec.CompletedAt = rec.PublishedAt
		if _, err := trail.Outcome(ctx, rec); err != nil {
			t.Fatal(err)
		}
		lines := i + 2 // the header and the records so far
		queuetest.Eventually(t, 10*time.Second, "record "+rec.EventID+" printed", func() bool {
			return strings.Count(out.String(), "\n") >= lines
		})
	}
	cancel()
	<-done
	return out.String()
}

// wantColumns checks that out is a header and n records, each value
// starting where its column's name does.
func wantColumns(t *testing.T, out string, n int) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != n+1 {
		t.Fatalf("printed %d lines, want a header and %d records:\n%s", len(lines), n, out)
	}
	for _, col := range []string{"OUTCOME", "REASON", "ACCOUNT", "KEY", "STATUS", "CF-RAY", "EVENT ID"} {
		at := strings.Index(lines[0], col)
		for _, l := range lines[1:] {
			if at >= len(l) || l[at-1] != ' ' || l[at] == ' ' {
				t.Fatalf("column %s (at %d) is not where a record's value starts:\n%s", col, at, out)
			}
		}
	}
}
