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
	// Trouble, if set, is told why the lane cannot fetch once fetches have
	// failed troubleAfter times in a row (a node lost, the cluster without
	// a quorum), and "" once a fetch works again.
	Trouble func(why string)
}

// troubleAfter is how many fetches in a row must fail before the lane
// reports trouble: a leader election fails one or two, and is not news.
const troubleAfter = 3

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
	f := fetchTrouble{subject: l.Subject, report: h.Trouble, log: log}
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
			f.failed(err)
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
			f.failed(err)
			sleep(ctx, FetchWait)
			continue
		}
		f.worked()
		// A batch that came back short means the stream had no more for
		// this consumer when it ended.
		if got < n || last == nil {
			h.Pending(0)
		}
	}
	return nil
}

// fetchTrouble follows a lane's failing fetches: each distinct cause is
// logged once, not once a second, and a run of failures is reported.
type fetchTrouble struct {
	subject  string
	report   func(why string) // may be nil
	log      *zap.Logger
	failures int
	last     string // the last cause logged
	reported bool
}

func (f *fetchTrouble) failed(err error) {
	f.failures++
	if msg := err.Error(); msg != f.last {
		f.log.Warn("fetch failed", zap.String("subject", f.subject), zap.Error(err), zap.Int("failures_in_a_row", f.failures))
		f.last = msg
	}
	if f.failures >= troubleAfter && f.report != nil {
		f.report("cannot fetch " + f.subject + ": " + err.Error())
		f.reported = true
	}
}

func (f *fetchTrouble) worked() {
	if f.failures == 0 {
		return
	}
	f.log.Info("fetching again", zap.String("subject", f.subject), zap.Int("failures_in_a_row", f.failures))
	if f.reported && f.report != nil {
		f.report("")
	}
	f.failures, f.last, f.reported = 0, "", false
}

// Troubles gathers the lanes' Trouble reports into one condition: report
// is told "" when every lane fetches, else one lane's trouble.
type Troubles struct {
	mu     sync.Mutex
	by     map[string]string
	report func(why string)
}

// NewTroubles makes a Troubles that tells report.
func NewTroubles(report func(why string)) *Troubles {
	return &Troubles{by: map[string]string{}, report: report}
}

// Set records the trouble of the lane of subject ("" = none) and reports
// the lanes' state.
func (t *Troubles) Set(subject, why string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if why == "" {
		delete(t.by, subject)
	} else {
		t.by[subject] = why
	}
	for _, w := range t.by {
		t.report(w)
		return
	}
	t.report("")
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
