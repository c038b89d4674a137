package worker_test

import (
	"context"
	"testing"
	"time"
)

// TestGiveBackAfterAnsweredCallEndsWithinTheShutdownTimeout: SIGTERM comes
// while a DELETE is out; its 503 arrives just as the shutdown timeout ends,
// and the ledger has stopped answering. The event must be given back within
// the shutdown timeout (SPEC §7), not after a ledger write of its own.
func TestGiveBackAfterAnsweredCallEndsWithinTheShutdownTimeout(t *testing.T) {
	h := newHarness(t, nil, answer(503, nil, 0))
	stop, cancelStop := context.WithCancel(context.Background())
	const timeout = 300 * time.Millisecond
	var work context.Context
	var cancelWork context.CancelFunc
	h.api.onCall = func() {
		cancelStop() // SIGTERM while the call is out
		h.ledger.mu.Lock()
		h.ledger.hang = true // NATS stops answering
		h.ledger.mu.Unlock()
		<-work.Done() // the answer comes as the shutdown timeout ends
	}
	work, cancelWork = context.WithCancel(context.Background())
	defer cancelWork()
	d := &fakeDelivery{body: goodEvent, delivered: 1, maxDeliver: 3}
	start := time.Now()
	context.AfterFunc(stop, func() { time.AfterFunc(timeout, cancelWork) })
	h.w.Handle(stop, work, d)
	took := time.Since(start)
	if len(d.settled) != 1 || d.settled[0] != "giveback" {
		t.Fatalf("settled %v, want [giveback]", d.settled)
	}
	if took > timeout+1500*time.Millisecond { // the old wait was 2 s past it
		t.Fatalf("Handle returned %v after shutdown began; the shutdown timeout is %v", took, timeout)
	}
}
