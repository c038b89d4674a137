package queue

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// FetchWait is how long one pull request waits for messages. It is short so
// that, at shutdown, no pull request of ours outlives us by more than this:
// a message the server hands to an abandoned request would sit out its ack
// wait before anyone else could take it.
const FetchWait = time.Second

// Lane fetches the messages of one subject's durable consumer, holding at
// most Capacity in hand, and runs a handler for each. Messages are fetched
// only when there is room for them, so a backlog stays in the stream rather
// than in memory.
type Lane struct {
	Subject  string
	Priority int
	Capacity int
	// AckWait and MaxDeliver are what the bound consumer allows, which an
	// existing consumer may set tighter than the configuration.
	AckWait    time.Duration
	MaxDeliver int
	minBatch   int
	cons       jetstream.Consumer

	room chan struct{} // one token per message we may still take
}

// Hooks are the lane's calls out.
type Hooks struct {
	// Handle processes one message; it runs in its own goroutine and must
	// ack, nak or term the message before it returns.
	Handle func(ctx context.Context, msg jetstream.Msg)
	// GiveBack returns a message that arrived after the lane was told to
	// stop.
	GiveBack func(msg jetstream.Msg)
	// Pending reports how many messages the consumer is known to have
	// waiting in the stream.
	Pending func(n uint64)
	// NoNews says the lane no longer knows whether messages wait (its
	// fetch failed).
	NoNews func()
}

// ErrConsumerGone means the lane's consumer no longer exists: the lane
// stops, and the worker binds again.
var ErrConsumerGone = errors.New("consumer gone")

// Full reports whether the lane holds all it may, and so is not fetching.
func (l *Lane) Full() bool { return len(l.room) == 0 }

// NewLane makes the lane of subject over cons. A lane fetches as soon as it
// has room for minBatch messages (at least 1): the lowest-priority lane can
// wait for a larger batch, as nothing below it waits on its news.
func NewLane(cons jetstream.Consumer, subject string, priority, capacity, minBatch int) *Lane {
	l := &Lane{
		Subject:  subject,
		Priority: priority,
		Capacity: max(1, capacity),
		minBatch: max(1, minBatch),
		cons:     cons,
	}
	l.minBatch = min(l.minBatch, l.Capacity)
	l.room = make(chan struct{}, l.Capacity)
	for range l.Capacity {
		l.room <- struct{}{}
	}
	return l
}

// Run fetches until ctx is done, then lets the pull request under way end on
// its own (at most FetchWait), gives back what it brings, and waits for
// every handler to return. Handlers get work, which outlives ctx so that a
// call in flight can finish during shutdown.
//
// It returns ErrConsumerGone, once its handlers are done, if the consumer
// was deleted under it.
func (l *Lane) Run(ctx, work context.Context, h Hooks, log *zap.Logger) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for ctx.Err() == nil {
		n := l.waitRoom(ctx)
		if n == 0 {
			break
		}
		batch, err := l.cons.Fetch(n, jetstream.FetchMaxWait(FetchWait))
		if err != nil {
			l.putRoom(n)
			h.NoNews()
			if gone(err) {
				return ErrConsumerGone
			}
			log.Warn("fetch failed", zap.String("subject", l.Subject), zap.Error(err))
			sleep(ctx, FetchWait)
			continue
		}
		got := 0
		var last *jetstream.MsgMetadata
		for msg := range batch.Messages() {
			got++
			if meta, err := msg.Metadata(); err == nil {
				last = meta
				h.Pending(meta.NumPending)
			}
			if ctx.Err() != nil {
				h.GiveBack(msg)
				l.putRoom(1)
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer l.putRoom(1)
				h.Handle(work, msg)
			}()
		}
		l.putRoom(n - got)
		if err := batch.Error(); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, jetstream.ErrNoMessages) {
			h.NoNews()
			if gone(err) {
				return ErrConsumerGone
			}
			log.Warn("fetch ended with an error", zap.String("subject", l.Subject), zap.Error(err))
			sleep(ctx, FetchWait)
			continue
		}
		// A batch that came back short means the stream had no more for
		// this consumer when it ended.
		if got < n || last == nil {
			h.Pending(0)
		}
	}
	return nil
}

func gone(err error) bool {
	return errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted)
}

// waitRoom takes every free place in hand, waiting until there is at least
// one; 0 means ctx ended first.
func (l *Lane) waitRoom(ctx context.Context) int {
	select {
	case <-l.room:
	case <-ctx.Done():
		return 0
	}
	n := 1
	for n < l.minBatch {
		select {
		case <-l.room:
			n++
		case <-ctx.Done():
			l.putRoom(n)
			return 0
		}
	}
	for {
		select {
		case <-l.room:
			n++
		default:
			return n
		}
	}
}

func (l *Lane) putRoom(n int) {
	for range n {
		l.room <- struct{}{}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
