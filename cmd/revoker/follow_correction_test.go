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

// TestFollowKeepsItsColumnsWithACorrection: a record that supersedes another
// (SPEC §4, point 3) is one the worker writes; under --follow its columns
// still start under the header's, and it says what it corrects.
func TestFollowKeepsItsColumnsWithACorrection(t *testing.T) {
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
		{EventID: "e1", AccountID: "a", KeyID: "k", Outcome: event.NotFound, Status: 404, CFRay: "r", Attempts: 1},
		{EventID: "e1", AccountID: "a", KeyID: "k", Outcome: event.Revoked, Status: 200, CFRay: "r2", Attempts: 2, Supersedes: 1},
	}
	for i, rec := range store {
		rec.Stream, rec.Sequence, rec.Subject = cfg.Stream, uint64(i+1), cfg.Subjects[0]
		rec.PublishedAt = time.Now().UTC().Format(time.RFC3339Nano)
		rec.CompletedAt = rec.PublishedAt
		if _, err := recs.Outcome(ctx, rec); err != nil {
			t.Fatal(err)
		}
		want := i + 2
		queuetest.Eventually(t, 10*time.Second, "record printed", func() bool {
			return strings.Count(out.String(), "\n") >= want
		})
	}
	cancel()
	<-done
	if !strings.Contains(out.String(), "(supersedes record 1)") {
		t.Fatalf("the correction does not say what it corrects:\n%s", out.String())
	}
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	for _, col := range []string{"REASON", "ACCOUNT", "STATUS", "CF-RAY", "EVENT ID"} {
		at := strings.Index(lines[0], col)
		for _, l := range lines[1:] {
			if at >= len(l) || l[at-1] != ' ' || l[at] == ' ' {
				t.Fatalf("column %s (at %d) is not where a record's value starts:\n%s", col, at, out.String())
			}
		}
	}
}
