package config_test

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestDollarSubjectsAStreamHolds (be97fda): storedSubjectProblem
// refuses every subject whose first token starts with '$' (and _INBOX,
// _R_), saying "no stream can hold them". NATS reserves $JS, $KV, $O,
// $SYS, $SRV...; a stream holds "$APP.revoke" (the server makes it), so a
// deployment using such subjects no longer starts (exit 2).
func TestDollarSubjectsAStreamHolds(t *testing.T) {
	_, _, js := queuetest.JetStream(t)
	const subject = "$APP.revoke"
	if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "HOLDS", Subjects: []string{subject},
		Retention: jetstream.WorkQueuePolicy}); err != nil {
		t.Skipf("the server refuses a stream on %s: %v", subject, err)
	}
	e := baseEnv()
	e["REVOKER_SUBJECTS"] = subject + ",revoke.scheduled"
	if _, err := load(t, config.All, e); err != nil {
		t.Errorf("REVOKER_SUBJECTS with %s (a stream holds it) refused: %v", subject, err)
	}
}
