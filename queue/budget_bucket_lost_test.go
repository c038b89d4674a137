package queue_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap/zaptest"

	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
	"github.com/revoker/revoker/throttle"
)

// TestBudgetBucketLostIsMadeAgain: the budget's bucket disappears
// while a replica runs (deleted by hand, lost with the storage of a
// one-node server). With Create set (REVOKER_CREATE_STREAMS, the
// default), the worker makes what it needs again (SPEC §3; §4 point 7:
// a lost consumer is made again within 5 s) and calls go on. The budget
// kept its old handle and reserved nothing for ever: every call of every
// replica stopped.
func TestBudgetBucketLostIsMadeAgain(t *testing.T) {
	srv := queuetest.Server(t)
	_, js := queuetest.Connect(t, srv)
	b, err := queue.NewBudget(js, queue.BudgetConfig{
		ID: func() string { return "token:0a1b2c3d" }, Rate: 10, Create: true, Log: zaptest.NewLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	queuetest.Eventually(t, 10*time.Second, "a first reservation", func() bool {
		_, ok, err := b.Reserve(ctx, 0)
		return err == nil && ok
	})
	if err := js.DeleteKeyValue(ctx, queue.BudgetBucket); err != nil && err != jetstream.ErrBucketNotFound {
		t.Fatal(err)
	}
	// A call of the replica, through its gate, as the worker makes it.
	g := throttle.New(throttle.Config{Priorities: 1, Concurrency: 1, Rate: 10, Budget: b})
	t.Cleanup(g.Close)
	actx, acancel := context.WithTimeout(ctx, 10*time.Second)
	defer acancel()
	pm, err := g.Acquire(actx, 0)
	if err != nil {
		_, _, reserveErr := b.Reserve(ctx, 0)
		t.Fatalf("no permit within 10 s of the budget's bucket being lost (Create set): %v; the budget says: %v", err, reserveErr)
	}
	pm.Release()
}
