package queue_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestLaneHandsOverNoBodilessDelivery (SPEC §4, "The proof", point 7):
// the lane's consumer is deleted and made again by hand delivering headers
// only while the lane is full, so no pull request of the lane hears of it.
// When a place frees, the lane's next fetch reaches that consumer. Its
// deliveries carry no body: handed over, a valid revocation would be
// dead-lettered as an invalid event and acked away. The lane hands none of
// them over, and goes to bind its consumer again.
func TestLaneHandsOverNoBodilessDelivery(t *testing.T) {
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
	got := make(chan *queue.Delivery, 10)
	release := make(chan struct{})
	var rebinds atomic.Int32
	lane := queue.NewLane(cons, "s", 0, 1, 1, 200*time.Millisecond)
	run, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- lane.Run(run, ctx, queue.Hooks{
			Handle: func(_ context.Context, d *queue.Delivery) {
				got <- d
				if string(d.Body()) == "one" {
					<-release // the lane stays full
				}
				_ = d.GiveBack(time.Hour)
			},
			GiveBack: func(d *queue.Delivery) { _ = d.GiveBack(0) },
			Pending:  func(uint64) {},
			NoNews:   func() {},
			Rebind: func(context.Context) (queue.Binding, error) {
				rebinds.Add(1)
				return queue.Binding{}, errors.New("not yet")
			},
		}, zap.NewNop())
	}()
	defer func() { stop(); <-done }()

	if _, err := js.Publish(ctx, "s", []byte("one")); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-got:
		if string(d.Body()) != "one" {
			t.Fatalf("first delivery %q", d.Body())
		}
	case <-ctx.Done():
		t.Fatal("no delivery")
	}
	if err := js.DeleteConsumer(ctx, "S", "d"); err != nil {
		t.Fatal(err)
	}
	bad := consCfg
	bad.HeadersOnly = true
	if _, err := js.CreateConsumer(ctx, "S", bad); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "s", []byte("two")); err != nil {
		t.Fatal(err)
	}
	close(release)
	queuetest.Eventually(t, 10*time.Second, "the lane binding its consumer again", func() bool { return rebinds.Load() > 0 })
	for {
		select {
		case d := <-got:
			if len(d.Body()) == 0 {
				t.Fatalf("a delivery without its body handed over (seq %d, %s: %q)", d.Sequence(), nats.MsgSize, d.Header(nats.MsgSize))
			}
		default:
			return
		}
	}
}

// TestLaneHandsOverAPublishersBodilessMessage: a publisher's own message
// with no body and a Nats-Msg-Size header of its own, from the consumer the
// lane is bound to, is an event like any other (an invalid one, which the
// worker dead-letters with its reason): the lane hands it over.
func TestLaneHandsOverAPublishersBodilessMessage(t *testing.T) {
	_, _, js := queuetest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s"}, Retention: jetstream.WorkQueuePolicy}); err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateConsumer(ctx, "S", jetstream.ConsumerConfig{Durable: "d", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *queue.Delivery, 1)
	lane := queue.NewLane(cons, "s", 0, 1, 1, 200*time.Millisecond)
	run, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- lane.Run(run, ctx, queue.Hooks{
			Handle:   func(_ context.Context, d *queue.Delivery) { _ = d.Ack(); got <- d },
			GiveBack: func(d *queue.Delivery) { _ = d.GiveBack(0) },
			Pending:  func(uint64) {},
			NoNews:   func() {},
		}, zap.NewNop())
	}()
	defer func() { stop(); <-done }()
	m := nats.NewMsg("s")
	m.Header.Set(nats.MsgSize, "12")
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-got:
		if len(d.Body()) != 0 || d.Header(nats.MsgSize) != "12" {
			t.Fatalf("delivery %q with %s %q", d.Body(), nats.MsgSize, d.Header(nats.MsgSize))
		}
	case <-ctx.Done():
		t.Fatal("the publisher's message was not handed over")
	}
}
