package queue

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/worker"
)

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
	fetchWait  time.Duration
	cons       jetstream.Consumer

	room chan struct{} // one token per message we may still take
}

// Hooks are the lane's calls out.
type Hooks struct {
	// Handle processes one delivery; it runs in its own goroutine and must
	// settle the delivery before it returns.
	Handle func(ctx context.Context, d *Delivery)
	// GiveBack returns a delivery that arrived after the lane was told to
	// stop.
	GiveBack func(d *Delivery)
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
// wait for a larger batch, as nothing below it waits on its news. One pull
// request waits at most fetchWait.
func NewLane(cons jetstream.Consumer, subject string, priority, capacity, minBatch int, fetchWait time.Duration) *Lane {
	l := &Lane{
		Subject:   subject,
		Priority:  priority,
		Capacity:  max(1, capacity),
		minBatch:  max(1, minBatch),
		fetchWait: fetchWait,
		cons:      cons,
	}
	l.minBatch = min(l.minBatch, l.Capacity)
	l.room = make(chan struct{}, l.Capacity)
	for range l.Capacity {
		l.room <- struct{}{}
	}
	return l
}

// Run fetches until ctx is done, then lets the pull request under way end on
// its own (at most its fetch wait), gives back what it brings, and waits for
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
		got, last, err := l.fetch(ctx, work, n, h, &wg, log)
		if err != nil {
			h.NoNews()
			if gone(err) {
				return ErrConsumerGone
			}
			f.failed(err)
			throttle.Sleep(ctx, l.fetchWait)
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

// fetch pulls up to n messages and starts a handler for each (or gives it
// back, after ctx ended). It returns how many came and the last one's
// metadata; every place not filled is given back to the lane. An error
// means the pull failed, at its start or on its way.
func (l *Lane) fetch(ctx, work context.Context, n int, h Hooks, wg *sync.WaitGroup, log *zap.Logger) (got int, last *jetstream.MsgMetadata, err error) {
	batch, err := l.cons.Fetch(n, jetstream.FetchMaxWait(l.fetchWait))
	if err != nil {
		l.putRoom(n)
		return 0, nil, err
	}
	for msg := range batch.Messages() {
		got++
		meta, err := msg.Metadata()
		if err != nil {
			// Only a JetStream delivery reaches a lane; this cannot be settled.
			log.Error("message without JetStream metadata", zap.Error(err))
			l.putRoom(1)
			continue
		}
		last = meta
		h.Pending(meta.NumPending)
		d := &Delivery{msg: msg, meta: meta, lane: l}
		if ctx.Err() != nil {
			h.GiveBack(d)
			l.putRoom(1)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer l.putRoom(1)
			h.Handle(work, d)
		}()
	}
	l.putRoom(n - got)
	if err := batch.Error(); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, jetstream.ErrNoMessages) {
		return got, last, err
	}
	return got, last, nil
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

// Delivery is one delivery from a lane; it meets worker.Delivery.
type Delivery struct {
	msg  jetstream.Msg
	meta *jetstream.MsgMetadata
	lane *Lane
}

var _ worker.Delivery = (*Delivery)(nil)

// Body is the event as published.
func (d *Delivery) Body() []byte { return d.msg.Data() }

// ID is the event's id: its Nats-Msg-Id, else <stream>:<sequence>.
func (d *Delivery) ID() string {
	return EventID(d.msg.Headers().Get(jetstream.MsgIDHeader), d.meta.Stream, d.meta.Sequence.Stream)
}

// Subject is where the event was published.
func (d *Delivery) Subject() string { return d.msg.Subject() }

// Stream is the work stream that holds the event.
func (d *Delivery) Stream() string { return d.meta.Stream }

// Sequence is the event's place in its stream.
func (d *Delivery) Sequence() uint64 { return d.meta.Sequence.Stream }

// Delivered counts deliveries of the event, this one included.
func (d *Delivery) Delivered() int { return int(d.meta.NumDelivered) }

// StoredAt is when the stream stored the event.
func (d *Delivery) StoredAt() time.Time { return d.meta.Timestamp }

// ReplayOf is the original event's id when this is a replayed dead letter.
func (d *Delivery) ReplayOf() string { return d.msg.Headers().Get(HeaderReplayOf) }

// Priority is the lane's priority, 0 the highest.
func (d *Delivery) Priority() int { return d.lane.Priority }

// MaxDeliver is the delivery on which a retryable failure is dead-lettered.
func (d *Delivery) MaxDeliver() int { return d.lane.MaxDeliver }

// AckWait is how long the consumer waits for a sign of life.
func (d *Delivery) AckWait() time.Duration { return d.lane.AckWait }

// Ack removes the event from the work stream.
func (d *Delivery) Ack() error { return d.msg.Ack() }

// Term ends the event's deliveries (after its dead-letter record).
func (d *Delivery) Term() error { return d.msg.Term() }

// GiveBack returns the event for another delivery after delay.
func (d *Delivery) GiveBack(delay time.Duration) error { return d.msg.NakWithDelay(delay) }

// KeepAlive resets the consumer's ack timer for the event.
func (d *Delivery) KeepAlive() error { return d.msg.InProgress() }
