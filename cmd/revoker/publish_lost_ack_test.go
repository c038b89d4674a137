package main

import (
	"context"
	"strings"
	"testing"

	"github.com/revoker/revoker/queue/queuetest"
)

// A single publish whose event was stored and whose acknowledgement was
// lost (the connection cut, NATS away after it) cannot say it was not
// published: it says the event may be stored, and how to publish it again
// without storing it twice (its --id), as --from-file does for a line.
func TestPublishLostAcknowledgementSaysHowToRepeat(t *testing.T) {
	s := hStack(t, nil)
	s.ensure()
	cfg := s.cfg()
	subject := cfg.Subjects[len(cfg.Subjects)-1]
	stored := func() bool {
		st, err := s.js.Stream(context.Background(), cfg.Stream)
		if err != nil {
			return false
		}
		info, err := st.Info(context.Background())
		return err == nil && info.State.Msgs == 1
	}
	p := &queuetest.AnswerEater{Target: s.ns.Addr().String(), Publish: []byte("PUB " + subject + " ")}
	p.Stored = func() bool {
		if stored() {
			p.Away.Store(true) // and NATS stays away until the publish gives up
			return true
		}
		return false
	}
	s.env["REVOKER_NATS_URL"] = "nats://" + p.Listen(t)
	r := s.run("publish", "--account", "acc1", "--key", "key1", "--id", "incident-7")
	if !stored() {
		t.Fatalf("the event was not stored (exit %d, stderr %q): the test did not lose an acknowledgement", r.code, r.stderr)
	}
	if r.code != exitFailed || !strings.Contains(r.stderr, "may have been stored") || !strings.Contains(r.stderr, "--id incident-7") {
		t.Fatalf("exit %d, stderr %q; want 1 and a line saying the event may have been stored and to publish it again with --id incident-7", r.code, r.stderr)
	}
}
