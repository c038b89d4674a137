package queue_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestDeliveredCountsDeliveriesOfALostConsumer: a consumer made again
// counts deliveries from 1, but an event the lost one delivered is not new:
// the worker must look for what its earlier delivery left. An event of a
// stream made again at a reused sequence is new.
func TestDeliveredCountsDeliveriesOfALostConsumer(t *testing.T) {
	_, _, js := queuetest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	streamCfg := jetstream.StreamConfig{Name: "S", Subjects: []string{"s"}, Retention: jetstream.WorkQueuePolicy}
	consCfg := jetstream.ConsumerConfig{Durable: "d", AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Minute}
	if _, err := js.CreateStream(ctx, streamCfg); err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateConsumer(ctx, "S", consCfg)
	if err != nil {
		t.Fatal(err)
	}

	type seen struct {
		body      string
		seq       uint64
		delivered int
		d         *queue.Delivery
	}
	got := make(chan seen, 10)
	var rebindOK atomic.Bool
	lane := queue.NewLane(cons, "s", 0, 4, 1, 200*time.Millisecond)
	run, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- lane.Run(run, ctx, queue.Hooks{
			// Each delivery stays in hand until the test settles it.
			Handle: func(_ context.Context, d *queue.Delivery) {
				got <- seen{string(d.Body()), d.Sequence(), d.Delivered(), d}
				<-run.Done()
				_ = d.GiveBack(0)
			},
			GiveBack: func(d *queue.Delivery) { _ = d.GiveBack(0) },
			Pending:  func(uint64) {},
			NoNews:   func() {},
			// The consumer is made again once the test has finished what
			// it deletes: a stream or consumer made while the server is
			// still deleting it may be left half made.
			Rebind: func(ctx context.Context) (queue.Binding, error) {
				if !rebindOK.Load() {
					return queue.Binding{}, errors.New("not yet")
				}
				c, err := js.CreateOrUpdateConsumer(ctx, "S", consCfg)
				return queue.Binding{Consumer: c}, err
			},
		}, zap.NewNop())
	}()
	defer func() { stop(); <-done }()
	next := func(what string) seen {
		t.Helper()
		select {
		case s := <-got:
			return s
		case <-ctx.Done():
			t.Fatalf("no delivery: %s", what)
			return seen{}
		}
	}

	if _, err := js.Publish(ctx, "s", []byte("one")); err != nil {
		t.Fatal(err)
	}
	first := next("the event")
	if first.delivered != 1 {
		t.Fatalf("first delivery counted %d", first.delivered)
	}
	if err := js.DeleteConsumer(ctx, "S", "d"); err != nil {
		t.Fatal(err)
	}
	rebindOK.Store(true)
	again := next("the event, by the consumer made again")
	if again.seq != first.seq || again.delivered != 2 {
		t.Fatalf("delivery by the new consumer: seq %d counted %d, want seq %d counted 2", again.seq, again.delivered, first.seq)
	}
	if err := again.d.Ack(); err != nil {
		t.Fatal(err)
	}

	// The stream made again reuses sequence 1 for another event.
	rebindOK.Store(false)
	if err := js.DeleteStream(ctx, "S"); err != nil {
		t.Fatal(err)
	}
	// The server may still be removing the old stream's store: making it
	// again fails until it is gone.
	queuetest.Eventually(t, 10*time.Second, "the stream made again", func() bool {
		_, err := js.CreateStream(ctx, streamCfg)
		return err == nil
	})
	rebindOK.Store(true)
	queuetest.Eventually(t, 10*time.Second, "the consumer made again", func() bool {
		_, err := js.Consumer(ctx, "S", "d")
		return err == nil
	})
	if _, err := js.Publish(ctx, "s", []byte("two")); err != nil {
		t.Fatal(err)
	}
	fresh := next("the new event")
	if fresh.body != "two" || fresh.seq != first.seq || fresh.delivered != 1 {
		t.Fatalf("new event %q at seq %d counted %d, want %q at %d counted 1", fresh.body, fresh.seq, fresh.delivered, "two", first.seq)
	}
}

// infoSignal is the lane's consumer; it says when the lane asks the server
// about it (Lane.missing does, first thing).
type infoSignal struct {
	jetstream.Consumer
	asked chan struct{}
}

func (c *infoSignal) Info(ctx context.Context) (*jetstream.ConsumerInfo, error) {
	select {
	case c.asked <- struct{}{}:
	default:
	}
	return c.Consumer.Info(ctx)
}

// TestDeliveredCountKeptByANeedlessLook: the lane is told its consumer
// may be gone (news older than a rebinding: the watcher's, a check's),
// looks, and finds the very consumer it is bound to, which numbered
// nothing backwards. An event in hand, given back and delivered again by
// that consumer, is delivered for the second time: Delivered() is 2, as
// JetStream counts it, or REVOKER_MAX_DELIVER would come early.
func TestDeliveredCountKeptByANeedlessLook(t *testing.T) {
	_, _, js := queuetest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s"}, Retention: jetstream.WorkQueuePolicy})
	if err != nil {
		t.Fatal(err)
	}
	c, err := js.CreateConsumer(ctx, "S", jetstream.ConsumerConfig{Durable: "d", AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	cons := &infoSignal{Consumer: c, asked: make(chan struct{}, 1)}
	type seen struct {
		d         *queue.Delivery
		delivered int
	}
	got := make(chan seen, 4)
	settle := make(chan func(*queue.Delivery), 4)
	lane := queue.NewLane(cons, "s", 0, 1, 1, 200*time.Millisecond) // one place: full while one is in hand
	lane.Stream = stream
	defer runLane(ctx, lane, func(run context.Context, d *queue.Delivery) {
		got <- seen{d, d.Delivered()}
		select {
		case f := <-settle:
			f(d)
		case <-run.Done():
			_ = d.GiveBack(0)
		}
	})()
	next := func() seen {
		t.Helper()
		select {
		case s := <-got:
			return s
		case <-ctx.Done():
			t.Fatal("no delivery")
			return seen{}
		}
	}
	if _, err := js.Publish(ctx, "s", []byte("one")); err != nil {
		t.Fatal(err)
	}
	first := next()
	t.Logf("first delivery: Delivered()=%d", first.delivered)
	// The lane is full (waiting for room or news). It is told to look.
	lane.Gone()
	select {
	case <-cons.asked: // the lane is in missing; it fetches only once that returns
	case <-ctx.Done():
		t.Fatal("the lane never looked")
	}
	settle <- func(d *queue.Delivery) { _ = d.GiveBack(0) }
	again := next()
	settle <- func(d *queue.Delivery) { _ = d.Ack() }
	t.Logf("second delivery: Delivered()=%d", again.delivered)
	if first.delivered != 1 || again.delivered != 2 {
		t.Fatalf("the same consumer delivered the event twice, but the lane counted %d then %d, want 1 then 2 (REVOKER_MAX_DELIVER reached early)", first.delivered, again.delivered)
	}
}
