package queue_test

import (
	"context"
	"testing"
	"time"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
)

// TestFollowOutcomes: the records stored, then each new one as it is
// stored, until the context ends.
func TestFollowOutcomes(t *testing.T) {
	js, cfg := dlqTSetup(t)
	pub := func(key string) {
		t.Helper()
		m := queue.OutcomeMsg(cfg.OutcomeSubject, event.Record{EventID: "e-" + key, AccountID: "a", KeyID: key,
			Outcome: event.Revoked, Stream: cfg.Stream, Sequence: uint64(len(key))})
		if _, err := js.PublishMsg(dlqTCtx(t), m); err != nil {
			t.Fatal(err)
		}
	}
	pub("k1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan string, 4)
	done := make(chan error, 1)
	go func() {
		done <- queue.FollowOutcomes(ctx, js, cfg.OutcomeStream, cfg.OutcomeSubject+".a.*", time.Time{}, func(r event.Record) error {
			got <- r.KeyID
			return nil
		}, nil)
	}()
	want := func(key string) {
		t.Helper()
		select {
		case k := <-got:
			if k != key {
				t.Fatalf("followed %s, want %s", k, key)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no record %s", key)
		}
	}
	want("k1")
	pub("k22")
	want("k22")
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("follow did not end with its context")
	}
}
