package queue_test

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestLaneAsideTakesTheNextEvent: a lane of one place whose event is set
// aside (waiting on something of its own, a retry's backoff) takes and
// handles the next event meanwhile. Its place is taken back when it
// returns, at once if one is free, else from the next event that ends; in
// both cases the lane then holds as many places as before and goes on
// fetching.
func TestLaneAsideTakesTheNextEvent(t *testing.T) {
	srv := queuetest.Server(t)
	_, js := queuetest.Connect(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "A", Subjects: []string{"a"}, Retention: jetstream.WorkQueuePolicy})
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateConsumer(ctx, "A", jetstream.ConsumerConfig{Durable: "d", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	publish := func(n int) {
		t.Helper()
		if _, err := js.Publish(ctx, "a", []byte(strconv.Itoa(n))); err != nil {
			t.Fatal(err)
		}
	}
	lane := queue.NewLane(cons, "a", 0, 1, 1, 100*time.Millisecond)
	lane.Stream = stream

	handled := make(chan int, 16)
	var active, most atomic.Int32 // events 4 to 7 in hand at once
	release := map[int]chan struct{}{}
	freed := map[int]*sync.Once{}
	for n := range 8 {
		release[n], freed[n] = make(chan struct{}), &sync.Once{}
	}
	free := func(n int) { freed[n].Do(func() { close(release[n]) }) }
	// Event 0 steps aside until event 1 was handled, and takes its place
	// back while one is free; event 2 steps aside until event 3 holds the
	// place, and takes it back while none is free.
	handle := func(_ context.Context, d *queue.Delivery) {
		n, _ := strconv.Atoi(string(d.Body()))
		switch n {
		case 0, 2:
			back := d.Aside()
			<-release[n]
			back()
		case 3:
			handled <- n
			<-release[n]
			_ = d.Ack()
			return
		case 4, 5, 6, 7:
			if now := active.Add(1); now > most.Load() {
				most.Store(now)
			}
			handled <- n
			<-release[n]
			active.Add(-1)
			_ = d.Ack()
			return
		}
		_ = d.Ack()
		handled <- n
	}
	run, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- lane.Run(run, ctx, queue.Hooks{Handle: handle, GiveBack: func(d *queue.Delivery) { _ = d.GiveBack(0) },
			Pending: func(uint64) {}, NoNews: func() {}}, zap.NewNop())
	}()
	defer func() {
		for n := range release {
			free(n) // a failed test leaves no handler waiting
		}
		stop()
		<-done
	}()
	next := func(want int) {
		t.Helper()
		select {
		case n := <-handled:
			if n != want {
				t.Fatalf("event %d handled, want %d", n, want)
			}
		case <-ctx.Done():
			t.Fatalf("event %d not handled: a lane of one place with its event aside takes no other", want)
		}
	}

	publish(0)
	publish(1)
	next(1) // while 0 is aside
	free(0)
	next(0)

	publish(2)
	publish(3)
	next(3) // 3 holds the place while 2 is aside
	free(2)
	next(2) // back with no place free: it owes one, paid as it ends
	free(3) // 3 ends, and frees the lane's one place

	// The lane has its one place again: it goes on fetching, one event at
	// a time.
	for n := 4; n < 8; n++ {
		publish(n)
	}
	for n := 4; n < 8; n++ {
		next(n)
		free(n)
	}
	if m := most.Load(); m != 1 {
		t.Errorf("%d events in hand at once in a lane of one place", m)
	}
}
