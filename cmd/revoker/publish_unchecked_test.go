package main

import (
	"context"
	"strings"
	"testing"
)

// TestPublishUncheckedDuplicateIsNotALostAcknowledgement: the stream
// answered that the id names an event it could not check (done, and
// outcome records off). That answer was heard: publishing again under the
// same id stores nothing, so publish must not advise it, but say to use
// another id.
func TestPublishUncheckedDuplicateIsNotALostAcknowledgement(t *testing.T) {
	s := hStack(t, map[string]string{"REVOKER_OUTCOME_SUBJECT": ""})
	s.ensure()
	cfg := s.cfg()
	ctx := context.Background()
	if r := s.run("publish", "--account", "acc1", "--key", "key1", "--id", "incident-9"); r.code != exitOK {
		t.Fatalf("first publish: exit %d %q", r.code, r.stderr)
	}
	st, err := s.js.Stream(ctx, cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	// The event is taken out of the stream (as a worker's ack does).
	if err := st.DeleteMsg(ctx, 1); err != nil {
		t.Fatal(err)
	}
	r := s.run("publish", "--account", "acc1", "--key", "key1", "--id", "incident-9")
	t.Logf("exit %d, stderr %q", r.code, r.stderr)
	// Following the advice printed:
	again := s.run("publish", "--account", "acc1", "--key", "key1", "--id", "incident-9")
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after following the advice: exit %d, stream holds %d messages", again.code, info.State.Msgs)
	if r.code != exitFailed || !strings.Contains(r.stderr, "publish it under another id") ||
		strings.Contains(r.stderr, "acknowledgement not heard") || strings.Contains(r.stderr, "publish it again with --id incident-9") {
		t.Fatalf("a duplicate answer that could not be checked is reported as a lost acknowledgement, with advice to repeat the same id (which stores nothing: %d messages)", info.State.Msgs)
	}
}
