package main

import (
	"context"
	"testing"
	"time"

	"github.com/revoker/revoker/queue"
)

// TestHeadersOnlyConsumerLosesNoEvent: an existing lane consumer
// that delivers headers only gives the worker no bodies. SPEC §3: such a
// difference makes the work impossible and stops the start (exit 2); it
// must never turn a valid revocation into an invalid_event dead letter
// with an empty body, the event acked away.
func TestHeadersOnlyConsumerLosesNoEvent(t *testing.T) {
	s := hStack(t, map[string]string{"REVOKER_LOG_LEVEL": "error"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	top := s.cfg().Topology()
	if _, err := s.js.CreateStream(ctx, queue.WorkStream(top)); err != nil {
		t.Fatal(err)
	}
	for _, subj := range top.Subjects {
		c := queue.LaneConsumer(top, subj)
		c.HeadersOnly = true
		if _, err := s.js.CreateConsumer(ctx, top.Stream, c); err != nil {
			t.Fatal(err)
		}
	}
	// A valid event waits in the work stream.
	s.run("publish", "--account", "acc1", "--key", "k1").want(t, exitOK, "published")

	type result struct {
		code           int
		stdout, stderr string
	}
	done := make(chan result, 1)
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		code, out, errb := runCmd(sctx, s.env, "serve")
		done <- result{code, out, errb}
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case r := <-done:
			if r.code != exitUsage {
				t.Fatalf("serve exited %d, want 2; stderr:\n%s", r.code, r.stderr)
			}
			if n := s.msgs(top.Stream); n != 1 {
				t.Fatalf("work stream holds %d events, want the 1 published", n)
			}
			return
		case <-time.After(50 * time.Millisecond):
		}
		if n := s.msgs(top.DLQStream); n > 0 {
			recs, err := queue.ListDeadLetters(ctx, s.js, top.DLQStream, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			stop()
			<-done
			t.Fatalf("a valid event was dead-lettered through a headers-only consumer: reason %q, detail %q, body %q; work stream now holds %d",
				recs[0].Reason, recs[0].Detail, recs[0].Body, s.msgs(top.Stream))
		}
		if time.Now().After(deadline) {
			stop()
			r := <-done
			t.Fatalf("serve neither stopped (exit 2) nor dead-lettered within 20s; exit %d stderr:\n%s", r.code, r.stderr)
		}
	}
}
