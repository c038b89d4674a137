package queue_test

import (
	"context"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

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
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, cons, publish := workQueueOf(t, ctx, "a")
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
			back := d.Aside(true)
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
	stop := runLane(ctx, lane, handle)
	defer func() {
		for n := range release {
			free(n) // a failed test leaves no handler waiting
		}
		stop()
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

// laneHandlers counts the goroutines handling a lane's deliveries.
func laneHandlers() int {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "queue.(*Lane).Run.func1") {
			n++
		}
	}
	return n
}

// TestLaneAsideKeepsItsCounts: a lane of one place whose events are set
// aside again and again (retried) ends with one handler, not one more per
// time aside; and a retrying event is set aside only while fewer are than
// the lane has places, so that an API failing for every event wears out
// the deliveries of no more than twice the lane's places.
func TestLaneAsideKeepsItsCounts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, cons, publish := workQueueOf(t, ctx, "c")
	lane := queue.NewLane(cons, "c", 0, 1, 1, 100*time.Millisecond)
	const retried = 20
	handled := make(chan int, 32)
	holdA, holdB := make(chan struct{}), make(chan struct{})
	asideA := make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(holdA); close(holdB) }) }
	defer free()
	handle := func(_ context.Context, d *queue.Delivery) {
		n, _ := strconv.Atoi(string(d.Body()))
		switch {
		case n < retried:
			for range 3 {
				d.Aside(true)()
			}
		case n == retried: // A: aside, retrying, until released
			back := d.Aside(true)
			close(asideA)
			<-holdA
			back()
		case n == retried+1: // B: its retry finds the lane's one retrying place taken
			handled <- n
			back := d.Aside(true)
			<-holdB
			back()
		}
		_ = d.Ack()
		handled <- n
	}
	stop := runLane(ctx, lane, handle)
	defer func() { free(); stop() }()

	for n := range retried {
		publish(n)
		if got := <-handled; got != n {
			t.Fatalf("event %d handled, want %d", got, n)
		}
	}
	queuetest.Eventually(t, 10*time.Second, "one handler left for the lane's one place", func() bool { return laneHandlers() == 1 })

	publish(retried)
	<-asideA
	publish(retried + 1)
	if got := <-handled; got != retried+1 {
		t.Fatalf("event %d handled, want B (%d) while A is aside", got, retried+1)
	}
	// B is at work in the one place and could not be set aside: C waits.
	publish(retried + 2)
	select {
	case n := <-handled:
		t.Fatalf("event %d handled while A was aside and B held the lane's one place: two retrying events aside in a lane of one place", n)
	case <-time.After(1500 * time.Millisecond): // no event may come: a bounded look, not a wait for one
	}
}

// TestLaneDebtPaidByAFetchsPlace: an event back from aside while the
// lane's fetch held its one place owes that place; the fetch, ending
// empty, frees it, and that pays the debt: the lane fetches no more, and
// takes no second event, while the first is at work.
func TestLaneDebtPaidByAFetchsPlace(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, cons, publish := workQueueOf(t, ctx, "d")
	lane := queue.NewLane(cons, "d", 0, 1, 1, 100*time.Millisecond)
	handled := make(chan int, 4)
	release := make(chan struct{})
	var emptyFetches, before atomic.Int32 // fetches that came back with nothing
	handle := func(_ context.Context, d *queue.Delivery) {
		n, _ := strconv.Atoi(string(d.Body()))
		if n == 0 {
			back := d.Aside(true)
			queuetest.Eventually(t, 10*time.Second, "the fetch holding the free place", lane.Full)
			before.Store(emptyFetches.Load())
			back() // no place free: it owes the fetch's
		}
		handled <- n
		<-release
		_ = d.Ack()
	}
	stop := runLaneHearing(ctx, lane, handle, func(n uint64) {
		if n == 0 {
			emptyFetches.Add(1)
		}
	})
	defer func() { close(release); stop() }()
	publish(0)
	if n := <-handled; n != 0 {
		t.Fatalf("event %d handled first", n)
	}
	// The fetch that held the place ends empty: its place pays the debt,
	// and no fetch is made again while event 0 works.
	queuetest.Eventually(t, 10*time.Second, "the fetch that held the place ended", func() bool {
		return emptyFetches.Load() > before.Load()
	})
	publish(1)
	select {
	case n := <-handled:
		t.Fatalf("event %d taken while event 0, back from aside, works in the lane's one place", n)
	case <-time.After(1500 * time.Millisecond): // several fetches end meanwhile: a bounded look, not a wait for one
	}
}

// workQueueOf is a work-queue stream of one subject, on a server of its
// own, a durable consumer of it, and what publishes event n there.
func workQueueOf(t *testing.T, ctx context.Context, subject string) (jetstream.Stream, jetstream.Consumer, func(n int)) {
	t.Helper()
	srv := queuetest.Server(t)
	_, js := queuetest.Connect(t, srv)
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "W", Subjects: []string{subject}, Retention: jetstream.WorkQueuePolicy})
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateConsumer(ctx, "W", jetstream.ConsumerConfig{Durable: "d", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	return stream, cons, func(n int) {
		t.Helper()
		if _, err := js.Publish(ctx, subject, []byte(strconv.Itoa(n))); err != nil {
			t.Fatal(err)
		}
	}
}
