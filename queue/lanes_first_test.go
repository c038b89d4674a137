package queue_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestFirstOnlyForEventsAfterTheConsumer: a first delivery may go straight
// to its call only when no older consumer can have delivered the event.
// Of a consumer revoker made, that is every event stored after it; of one
// made otherwise, every event stored well after it was made (here: none).
func TestFirstOnlyForEventsAfterTheConsumer(t *testing.T) {
	_, nc, js := queuetest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := config.Default()
	subj := cfg.LowestPriority()
	if _, err := js.CreateStream(ctx, queue.WorkStream(cfg.Topology())); err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(subj, []byte("before")); err != nil {
		t.Fatal(err)
	}
	if err := queue.Ensure(ctx, js, cfg.Topology(), zaptest.NewLogger(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, subj, []byte("after")); err != nil {
		t.Fatal(err)
	}
	cons, err := js.Consumer(ctx, cfg.Stream, cfg.Durable(subj))
	if err != nil {
		t.Fatal(err)
	}
	if got := firsts(t, ctx, cons, subj, 2); !got["after"] || got["before"] {
		t.Fatalf("first deliveries %v; want only the event stored after revoker made the consumer", got)
	}

	// A consumer made by hand carries no mark: nothing stored around its
	// making counts as a first delivery.
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s"}}); err != nil {
		t.Fatal(err)
	}
	hand, err := js.CreateConsumer(ctx, "S", jetstream.ConsumerConfig{Durable: "by-hand", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "s", []byte("later")); err != nil {
		t.Fatal(err)
	}
	if got := firsts(t, ctx, hand, "s", 1); got["later"] {
		t.Fatal("an event stored just after a consumer made by hand counts as a first delivery")
	}
}

// firsts runs a lane over cons until it has handed over n deliveries, and
// returns First() of each by body.
func firsts(t *testing.T, ctx context.Context, cons jetstream.Consumer, subj string, n int) map[string]bool {
	t.Helper()
	got := make(chan *queue.Delivery, n)
	lane := queue.NewLane(cons, subj, 0, n, 1, 200*time.Millisecond)
	run, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- lane.Run(run, ctx, queue.Hooks{
			Handle:   func(_ context.Context, d *queue.Delivery) { got <- d; _ = d.Ack() },
			GiveBack: func(d *queue.Delivery) { _ = d.GiveBack(0) },
			Pending:  func(uint64) {},
			NoNews:   func() {},
		}, zap.NewNop())
	}()
	defer func() { stop(); <-done }()
	out := map[string]bool{}
	for range n {
		select {
		case d := <-got:
			out[string(d.Body())] = d.First()
		case <-ctx.Done():
			t.Fatalf("%d of %d deliveries", len(out), n)
		}
	}
	return out
}
