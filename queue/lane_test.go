package queue_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

func TestTroublesReportsUntilEveryLaneFetches(t *testing.T) {
	var got []string
	tr := queue.NewTroubles(func(why string) { got = append(got, why) })
	tr.Set("a", "a down")
	tr.Set("b", "b down")
	tr.Set("a", "")
	if last := got[len(got)-1]; last != "b down" {
		t.Fatalf("with b still down, reported %q", last)
	}
	tr.Set("b", "")
	if last := got[len(got)-1]; last != "" {
		t.Fatalf("with every lane fetching, reported %q", last)
	}
}

// A lane whose stream's only node is lost reports trouble once fetches
// keep failing, logs the cause once rather than on every fetch, and
// reports "" when its node is back.
func TestLaneReportsFetchTrouble(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := queuetest.Cluster(t, 3)
	_, js := queuetest.ConnectURL(t, c.URLs())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var cons jetstream.Consumer
	err := queuetest.Answered(ctx, func(ctx context.Context) (err error) {
		if _, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "L", Subjects: []string{"l"}, Replicas: 1}); err != nil {
			return err
		}
		cons, err = js.CreateConsumer(ctx, "L", jetstream.ConsumerConfig{Durable: "d", AckPolicy: jetstream.AckExplicitPolicy})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	node := c.WaitStreamLeader("L")

	var (
		mu      sync.Mutex
		reports []string
	)
	last := func() (string, int) {
		mu.Lock()
		defer mu.Unlock()
		if len(reports) == 0 {
			return "none", 0
		}
		return reports[len(reports)-1], len(reports)
	}
	core, logs := observer.New(zapcore.InfoLevel)
	lane := queue.NewLane(cons, "l", 0, 1, 1, 100*time.Millisecond)
	run, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- lane.Run(run, ctx, queue.Hooks{
			Handle:   func(_ context.Context, d *queue.Delivery) { _ = d.Ack() },
			GiveBack: func(d *queue.Delivery) { _ = d.GiveBack(0) },
			Pending:  func(uint64) {},
			NoNews:   func() {},
			Trouble: func(why string) {
				mu.Lock()
				reports = append(reports, why)
				mu.Unlock()
			},
		}, zap.New(core))
	}()
	defer func() { stop(); <-done }()

	c.Kill(node)
	queuetest.Eventually(t, 30*time.Second, "trouble reported", func() bool { why, _ := last(); return why != "none" && why != "" })
	_, n := last()
	queuetest.Eventually(t, 30*time.Second, "more failures", func() bool {
		return logs.FilterMessage("fetch failed").Len() >= 1 && func() bool { _, m := last(); return m >= n+2 }()
	})
	// Each cause once: a log line only where the cause changed.
	failed := logs.FilterMessage("fetch failed").All()
	for i := 1; i < len(failed); i++ {
		if failed[i].ContextMap()["error"] == failed[i-1].ContextMap()["error"] {
			t.Errorf("the same cause logged twice in a row: %v", failed[i].ContextMap()["error"])
		}
	}
	if _, m := last(); len(failed) >= m+troubleAfterInTest-1 {
		t.Errorf("%d failures logged for %d failing fetches", len(failed), m+troubleAfterInTest-1)
	}
	c.Restart(node)
	queuetest.Eventually(t, 30*time.Second, "trouble cleared", func() bool { why, _ := last(); return why == "" })
	if logs.FilterMessage("fetching again").Len() != 1 {
		t.Errorf("recovery not logged once: %v", logs.All())
	}
}

// troubleAfterInTest is queue's troubleAfter: reports start at that many
// failures in a row, one per failure.
const troubleAfterInTest = 3

// TestDeliveryHeldUntilSettled: a delivery reports that the work stream
// holds its event while it is in hand and after a give-back (a later
// delivery will come), and not once a delivery acked it (SPEC §4, "The
// proof", point 6: a confirmation only a later delivery could record is
// lost when none will come).
func TestDeliveryHeldUntilSettled(t *testing.T) {
	srv := queuetest.Server(t)
	_, js := queuetest.Connect(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "H", Subjects: []string{"h"}, Retention: jetstream.WorkQueuePolicy})
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateConsumer(ctx, "H", jetstream.ConsumerConfig{Durable: "d", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "h", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	lane := queue.NewLane(cons, "h", 0, 1, 1, 100*time.Millisecond)
	lane.Stream = stream
	type step struct {
		held bool
		err  error
	}
	steps := make(chan step, 4)
	acked := make(chan *queue.Delivery, 1)
	run, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	deliveries := 0
	go func() {
		done <- lane.Run(run, ctx, queue.Hooks{
			Handle: func(_ context.Context, d *queue.Delivery) {
				deliveries++
				held, err := d.Held(ctx)
				steps <- step{held, err}
				if deliveries == 1 {
					_ = d.GiveBack(0)
					held, err = d.Held(ctx)
					steps <- step{held, err}
					return
				}
				_ = d.Ack()
				acked <- d
			},
			GiveBack: func(d *queue.Delivery) { _ = d.GiveBack(0) },
			Pending:  func(uint64) {},
			NoNews:   func() {},
		}, zap.NewNop())
	}()
	defer func() { stop(); <-done }()
	for i := range 3 {
		var s step
		select {
		case s = <-steps:
		case <-ctx.Done():
			t.Fatalf("step %d: no delivery", i)
		}
		if s.err != nil || !s.held {
			t.Errorf("step %d (in hand, given back, in hand again): held %v, %v; want held", i, s.held, s.err)
		}
	}
	// An ack is sent, not answered: the stream drops the event soon after.
	d := <-acked
	queuetest.Eventually(t, 10*time.Second, "the acked event dropped", func() bool {
		held, err := d.Held(ctx)
		return err == nil && !held
	})
}
