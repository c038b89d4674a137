package queue_test

import (
	"testing"

	"github.com/revoker/revoker/queue"
)

// A work stream deleted and made again numbers its messages from 1 again.
// A message planted there under the replay's id, at the sequence where an
// earlier run's republish was stored, is not the replay: SPEC §5, "a
// republish that JetStream reports as a duplicate counts as done only if
// the stored message is this replay (the same body and Revoker-Replay-Of)".
func TestReplayNotSuppressedAtAReusedSequence(t *testing.T) {
	js, cfg := dlqTSetup(t)
	ctx := dlqTCtx(t)
	const body = `{"account_id":"a","key_id":"k"}`
	rec, first := replayedOrig1(t, js, cfg, body)

	// The work stream is lost before a worker took the replay, and made
	// again as the worker makes it.
	if err := js.DeleteStream(ctx, cfg.Stream); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, queue.WorkStream(cfg.Topology())); err != nil {
		t.Fatal(err)
	}
	planted := dlqTPlant(t, js, "revoke.urgent", queue.ReplayMsgID(1), `{"account_id":"a","key_id":"decoy"}`, "orig-1")
	if planted != first.WorkSequence {
		t.Fatalf("planted at %d, the first replay was at %d: premise not met", planted, first.WorkSequence)
	}

	res, err := replayer(t, js, cfg).Republish(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range dlqTStored(t, js, cfg.Stream) {
		if string(m.Data) == body && m.Header.Get(queue.HeaderReplayOf) == "orig-1" {
			return // republished
		}
	}
	t.Fatalf("the replay was suppressed by the planted message: result %+v, nothing with the dead letter's body in the work stream", res)
}
