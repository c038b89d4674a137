package queue_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestConsumerMadeAgainBeforeTheFirstFetch: a lane's consumer delivers
// events elsewhere (another replica holds one), and is deleted and made
// again before the lane's first fetch. The new consumer's delivery of the
// held event is numbered 1: it must not be taken for the event's first
// delivery by the old consumer's rules, whether the lane was bound after
// those deliveries (1 is below its last) or before them (1 is above its
// last, 0: the numbers tell nothing).
func TestConsumerMadeAgainBeforeTheFirstFetch(t *testing.T) {
	for _, bindFirst := range []bool{false, true} {
		name := "bound after the deliveries elsewhere"
		if bindFirst {
			name = "bound before them"
		}
		t.Run(name, func(t *testing.T) { testMadeAgainBeforeTheFirstFetch(t, bindFirst) })
	}
}

func testMadeAgainBeforeTheFirstFetch(t *testing.T, bindFirst bool) {
	_, nc, js := queuetest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s"}, Retention: jetstream.WorkQueuePolicy}); err != nil {
		t.Fatal(err)
	}
	consCfg := func(from string) jetstream.ConsumerConfig {
		return jetstream.ConsumerConfig{Durable: "d", AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Minute,
			Metadata: map[string]string{queue.MetaFreshFrom: from}}
	}
	cons, err := js.CreateConsumer(ctx, "S", consCfg("1"))
	if err != nil {
		t.Fatal(err)
	}
	var lane *queue.Lane
	bind := func() {
		bound, err := js.Consumer(ctx, "S", "d")
		if err != nil {
			t.Fatal(err)
		}
		lane = queue.NewLane(bound, "s", 0, 2, 1, 200*time.Millisecond)
	}
	if bindFirst {
		bind()
	}
	for _, body := range []string{"e1", "e2"} {
		if err := nc.Publish("s", []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	// Elsewhere: e1 delivered and acked, e2 delivered and held.
	batch, err := cons.Fetch(2, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for m := range batch.Messages() {
		if n++; n == 1 {
			if err := m.DoubleAck(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n != 2 {
		t.Fatalf("fetched %d; want 2", n)
	}
	if !bindFirst {
		bind()
	}

	// Made again, as a replica binding it again makes it: fresh from the
	// next sequence.
	if err := js.DeleteConsumer(ctx, "S", "d"); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateConsumer(ctx, "S", consCfg("3")); err != nil {
		t.Fatal(err)
	}

	if d, first := firstDelivery(t, ctx, lane); string(d.Body()) != "e2" || first {
		t.Fatalf("delivered %s, first %v; want e2, not first: the consumer that delivered it before was lost", d.Body(), first)
	}
}

// firstDelivery runs lane until its first delivery is handled, and
// returns it with what First said in the handler, as the worker asks it.
func firstDelivery(t *testing.T, ctx context.Context, lane *queue.Lane) (*queue.Delivery, bool) {
	t.Helper()
	type handled struct {
		d     *queue.Delivery
		first bool
	}
	got := make(chan handled, 1)
	defer runLane(ctx, lane, func(run context.Context, d *queue.Delivery) {
		got <- handled{d, d.First()}
		<-run.Done()
		_ = d.GiveBack(0)
	})()
	select {
	case h := <-got:
		return h.d, h.first
	case <-ctx.Done():
		t.Fatal("no delivery")
		return nil, false
	}
}

// runLane runs lane with handle for its deliveries (given the lane's run
// context) until the returned stop is called.
func runLane(ctx context.Context, lane *queue.Lane, handle func(run context.Context, d *queue.Delivery)) (stop func()) {
	return runLaneHearing(ctx, lane, handle, func(uint64) {})
}

// runLaneHearing is runLane, with pending hearing the lane's news of the
// events left in the stream.
func runLaneHearing(ctx context.Context, lane *queue.Lane, handle func(run context.Context, d *queue.Delivery), pending func(uint64)) (stop func()) {
	run, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- lane.Run(run, ctx, queue.Hooks{
			Handle:   func(_ context.Context, d *queue.Delivery) { handle(run, d) },
			GiveBack: func(d *queue.Delivery) { _ = d.GiveBack(0) },
			Pending:  pending,
			NoNews:   func() {},
		}, zap.NewNop())
	}()
	return func() { cancel(); <-done }
}
