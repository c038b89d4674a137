package queue_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestKeepAliveNeverFollowsASettle: the worker's keep-alive timer may fire
// while, or after, a delivery is given back. A progress ack that reaches
// the server after the give-back resets its redelivery timer, so none may
// be sent: each delivery here is given back while keep-alives race it, and
// a second connection watching the ack subjects sees, per delivery, nothing
// after the give-back. A later keep-alive is a no-op, a second settle an
// error.
func TestKeepAliveNeverFollowsASettle(t *testing.T) {
	srv, nc, js := queuetest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s"}}); err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateConsumer(ctx, "S", jetstream.ConsumerConfig{
		// A message handed to a pull request that expired comes back soon.
		Durable: "d", AckPolicy: jetstream.AckExplicitPolicy, AckWait: 2 * time.Second, MaxAckPending: -1,
	})
	if err != nil {
		t.Fatal(err)
	}

	// Per delivery (its ack subject), what was sent for it, in order: one
	// connection's messages reach a subscriber in the order sent.
	var (
		mu   sync.Mutex
		sent = map[string][]string{}
		naks int
	)
	watch, _ := queuetest.Connect(t, srv)
	if _, err := watch.Subscribe("$JS.ACK.S.d.>", func(m *nats.Msg) {
		mu.Lock()
		defer mu.Unlock()
		kind := strings.SplitN(string(m.Data), " ", 2)[0]
		sent[m.Subject] = append(sent[m.Subject], kind)
		if kind == "-NAK" {
			naks++
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := watch.Flush(); err != nil {
		t.Fatal(err)
	}

	const n = 200
	for i := range n {
		if _, err := js.Publish(ctx, "s", fmt.Appendf(nil, "%d", i)); err != nil {
			t.Fatal(err)
		}
	}

	var (
		handled  atomic.Int32 // deliveries settled, each with one give-back
		seqMu    sync.Mutex
		seqs     = map[uint64]bool{} // events handled
		problems = make(chan string, 1000)
	)
	handle := func(_ context.Context, d *queue.Delivery) {
		defer handled.Add(1)
		defer func() {
			seqMu.Lock()
			seqs[d.Sequence()] = true
			seqMu.Unlock()
		}()
		// Keep-alives start together with the give-back, as when the
		// worker's timer fires while it gives the event back.
		start := make(chan struct{})
		var wg sync.WaitGroup
		for range 3 {
			wg.Go(func() {
				<-start
				for range 5 {
					_ = d.KeepAlive()
				}
			})
		}
		close(start)
		if err := d.GiveBack(time.Hour); err != nil {
			problems <- "give back: " + err.Error()
		}
		wg.Wait()
		if err := d.KeepAlive(); err != nil {
			problems <- "keep-alive after the give-back: " + err.Error()
		}
		if err := d.Ack(); !errors.Is(err, queue.ErrSettled) {
			problems <- fmt.Sprintf("second settle returned %v, want ErrSettled", err)
		}
	}
	lane := queue.NewLane(cons, "s", 0, 4, 1, time.Second)
	run, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- lane.Run(run, ctx, queue.Hooks{
			Handle:   handle,
			GiveBack: func(d *queue.Delivery) { _ = d.GiveBack(time.Hour); handled.Add(1) },
			Pending:  func(uint64) {},
			NoNews:   func() {},
		}, zap.NewNop())
	}()
	queuetest.Eventually(t, 30*time.Second, "every event handled", func() bool {
		seqMu.Lock()
		defer seqMu.Unlock()
		return len(seqs) == n
	})
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	queuetest.Eventually(t, 10*time.Second, "every give-back seen", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return naks == int(handled.Load())
	})
	t.Logf("%d deliveries of %d events", handled.Load(), n)
	close(problems)
	for p := range problems {
		t.Error(p)
	}

	mu.Lock()
	defer mu.Unlock()
	late := 0
	for subj, kinds := range sent {
		for i, k := range kinds {
			if k == "-NAK" && i != len(kinds)-1 {
				late++
				t.Logf("%s: %v", subj, kinds)
				break
			}
			if k != "-NAK" && k != "+WPI" {
				t.Errorf("%s: sent %q", subj, k)
			}
		}
	}
	if late > 0 {
		t.Fatalf("%d of %d deliveries had a keep-alive sent after their give-back", late, handled.Load())
	}
}
