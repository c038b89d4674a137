package queue

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/metrics"
	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/worker"
)

// ReadyNATS and ReadyConsumers are the readiness conditions the consumer
// reports on.
const (
	ReadyNATS      = "nats"
	ReadyConsumers = "consumers"
)

// Handler processes one delivery; it must settle it before it returns.
// stop ends at shutdown; work outlives it by the shutdown timeout.
type Handler func(stop, work context.Context, d worker.Delivery)

// PendingGate is told which priority levels have work waiting in the
// stream, so that no lower level takes a call ahead of it.
type PendingGate interface {
	SetPending(priority int, pending bool)
}

// Consumer runs the lanes of the work stream: it sets up the streams,
// consumers and ledger, fetches deliveries in priority order and hands each
// to the handler, and keeps the gate and the metrics told of what waits.
type Consumer struct {
	JS  jetstream.JetStream
	Cfg config.Topology
	// ShutdownTimeout is how long handlers may go on after ctx ends.
	ShutdownTimeout time.Duration
	Handle          Handler
	Gate            PendingGate
	Ledger          *Ledger
	// Replays, when set, is bound with the ledger: the worker checks a
	// replay's claim against it.
	Replays *Replays
	Metrics *metrics.Metrics
	Ready   *metrics.Readiness
	Log     *zap.Logger
	// FetchWait is how long one pull request waits (default
	// DefaultFetchWait); tests shorten it.
	FetchWait time.Duration
	// Before, when set, runs once the streams, consumers and ledger are
	// bound and before anything is fetched, with as long as handlers have
	// (the shutdown timeout past ctx's end); it returns an error only when
	// that ended first.
	Before func(ctx context.Context) error
}

// DefaultFetchWait is how long one pull request waits for messages. It is
// short so that, at shutdown, no pull request of ours outlives us by more
// than this: a message the server hands to an abandoned request would sit
// out its ack wait before anyone else could take it.
const DefaultFetchWait = time.Second

func (c *Consumer) fetchWait() time.Duration {
	if c.FetchWait > 0 {
		return c.FetchWait
	}
	return DefaultFetchWait
}

// HandBackDelay is how long an event given back at shutdown should be held
// so that our own last pull request cannot take it again.
func (c *Consumer) HandBackDelay() time.Duration { return 2 * c.fetchWait() }

// Run sets up the streams and consumers (retrying while NATS is away), then
// consumes until ctx is done. After that, no new call starts; events
// waiting are given back at once, and handlers get cfg.ShutdownTimeout to
// finish. If a consumer is deleted under it, only that lane stops: it turns
// the worker not-ready and binds the consumer again (making it, when
// told to create), while the other lanes go on. It returns an error
// wrapping ErrIncompatible when the JetStream setup makes the work
// impossible.
func (c *Consumer) Run(ctx context.Context) error {
	// work outlives ctx by the shutdown timeout, so calls in flight can
	// finish and their outcomes be written.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stopTimer := context.AfterFunc(ctx, func() {
		c.Log.Info("shutting down: no new calls; giving back waiting events",
			zap.Duration("shutdown_timeout", c.ShutdownTimeout))
		time.AfterFunc(c.ShutdownTimeout, cancelWork)
	})
	defer stopTimer()

	lanes, err := c.bind(ctx)
	if err != nil {
		return err
	}
	// Before may go on into the shutdown timeout, as handlers do.
	if lanes != nil && c.Before != nil && (c.Before(work) != nil || ctx.Err() != nil) {
		lanes = nil // stopped first: nothing to fetch
	}
	if lanes != nil { // nil: ctx ended while binding
		c.Ready.Set(ReadyConsumers, "")
		err = c.runLanes(ctx, work, lanes)
	}
	c.Ready.Set(ReadyConsumers, "shutting down")
	if err != nil {
		return err
	}
	c.Log.Info("worker stopped")
	return nil
}

// boundLane is a lane and what the watcher needs of it.
type boundLane struct {
	lane    *Lane
	stream  jetstream.Stream
	metrics metrics.Lane
	// oldest is the publish time (unix nanoseconds) of the lane's oldest
	// event without a final outcome, 0 when none; kept while the server
	// cannot be asked, so the gauge goes on rising through an outage.
	oldest atomic.Int64
}

// runLanes consumes until ctx ends. Each lane binds its own consumer again
// when it is lost, for as long as it takes, while the others go on.
func (c *Consumer) runLanes(ctx, work context.Context, lanes []*boundLane) error {
	fetch, stopFetching := context.WithCancel(ctx)
	defer stopFetching()
	var (
		wg    sync.WaitGroup
		errMu sync.Mutex
		first error
	)
	troubles := NewTroubles(func(why string) { c.Ready.Set(ReadyConsumers, why) })
	for _, l := range lanes {
		wg.Go(func() {
			err := l.lane.Run(fetch, work, Hooks{
				Handle: func(work context.Context, d *Delivery) { c.Handle(ctx, work, d) },
				GiveBack: func(d *Delivery) {
					_ = d.GiveBack(c.HandBackDelay())
				},
				Pending: func(n uint64) {
					c.Gate.SetPending(l.lane.Priority, n > 0)
					l.metrics.Pending.Set(float64(n))
				},
				NoNews:  func() { c.Gate.SetPending(l.lane.Priority, false) },
				Trouble: func(why string) { troubles.Set(l.lane.Subject, why) },
				Rebind:  func(ctx context.Context) (Binding, error) { return c.rebind(ctx, l.lane.Subject) },
			}, c.Log)
			if err != nil {
				errMu.Lock()
				first = cmp.Or(first, err)
				errMu.Unlock()
				stopFetching()
			}
		})
	}
	wg.Go(func() { c.watch(fetch, lanes) })
	wg.Wait()
	return first
}

// streamGonePause is how long rebind waits before it makes a work stream
// found gone: far longer than a server takes to finish deleting one, and
// short enough that the lane is bound again within the 5 s SPEC §4 allows.
const streamGonePause = time.Second

// rebind is one try to bind the consumer of subject again: the work stream
// is made again too if it went with it (when told to create), and the
// consumer when it is missing; one made elsewhere meanwhile is bound as it
// is.
func (c *Consumer) rebind(ctx context.Context, subject string) (Binding, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	replicas, err := streamReplicas(ctx, c.JS, c.Cfg.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		// The server takes a deleted stream out of its list first, stops
		// its consumers (which is how this lane learnt), and deletes its
		// files last. A stream of that name made in between is made from
		// those files and loses them a moment later: it answers no publish
		// (nats-server 2.15). So one found gone is made only after a pause,
		// if nobody made it meanwhile (ensureStream looks again).
		if !throttle.Sleep(ctx, streamGonePause) {
			return Binding{}, ctx.Err()
		}
		if err := ensureStream(ctx, c.JS, WorkStream(c.Cfg), c.Cfg.Subjects, c.Cfg.Create, c.Log); err != nil {
			return Binding{}, err
		}
		replicas, err = streamReplicas(ctx, c.JS, c.Cfg.Stream)
	}
	if err != nil {
		return Binding{}, err
	}
	want := LaneConsumer(c.Cfg, subject)
	want.Replicas = replicas // as Ensure does: a work-queue stream's consumers have its replicas
	if err := ensureConsumer(ctx, c.JS, c.Cfg.Stream, want, c.Cfg.Create, c.Log); err != nil {
		return Binding{}, err
	}
	cons, err := c.JS.Consumer(ctx, c.Cfg.Stream, want.Durable)
	if err != nil {
		return Binding{}, fmt.Errorf("bind consumer %s: %w", want.Durable, err)
	}
	ackWait, maxDeliver := c.limits(cons.CachedInfo().Config)
	return Binding{Consumer: cons, AckWait: ackWait, MaxDeliver: maxDeliver}, nil
}

// bind retries the JetStream setup until it works, ctx ends, or it cannot
// work at all.
func (c *Consumer) bind(ctx context.Context) ([]*boundLane, error) {
	b := backoff.NewExponentialBackOff(backoff.WithInitialInterval(time.Second),
		backoff.WithMaxInterval(30*time.Second), backoff.WithMaxElapsedTime(0))
	var last string
	for {
		lanes, err := c.tryBind(ctx)
		if err == nil {
			return lanes, nil
		}
		if errors.Is(err, ErrIncompatible) {
			return nil, err
		}
		if ctx.Err() != nil {
			return nil, nil
		}
		c.Ready.Set(ReadyConsumers, err.Error())
		if msg := err.Error(); msg != last { // say each new trouble once
			c.Log.Warn("JetStream setup not possible yet, retrying", zap.Error(err))
			last = msg
		}
		throttle.Sleep(ctx, b.NextBackOff())
	}
}

func (c *Consumer) tryBind(ctx context.Context) ([]*boundLane, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := Ensure(ctx, c.JS, c.Cfg, c.Log); err != nil {
		return nil, err
	}
	if err := c.Ledger.bind(ctx, c.JS, c.Cfg.Create, c.Cfg.Replicas, c.Log); err != nil {
		return nil, err
	}
	if c.Replays != nil {
		if err := c.Replays.bind(ctx, c.JS, c.Cfg.Create, c.Cfg.Replicas, c.Log); err != nil {
			return nil, err
		}
	}
	stream, err := c.JS.Stream(ctx, c.Cfg.Stream)
	if err != nil {
		return nil, fmt.Errorf("bind stream %s: %w", c.Cfg.Stream, err)
	}
	var lanes []*boundLane
	for i, subj := range c.Cfg.Subjects {
		cons, err := c.JS.Consumer(ctx, c.Cfg.Stream, c.Cfg.Durable(subj))
		if err != nil {
			return nil, fmt.Errorf("bind consumer %s: %w", c.Cfg.Durable(subj), err)
		}
		// A lane holds up to twice the calls in flight, so the next events
		// are decoded and waiting for a permit while calls run; the gate,
		// not the lane, decides who calls next.
		capacity := 2 * c.Cfg.Concurrency
		minBatch := 1 // a higher lane fetches at once: lower ones wait on its news
		if i == len(c.Cfg.Subjects)-1 {
			minBatch = capacity / 4
		}
		lane := NewLane(cons, subj, i, capacity, minBatch, c.fetchWait())
		lane.AckWait, lane.MaxDeliver = c.limits(cons.CachedInfo().Config)
		lane.Stream = stream
		lanes = append(lanes, &boundLane{lane: lane, stream: stream, metrics: c.Metrics.Lane(subj, i)})
	}
	return lanes, nil
}

// limits are the ack wait and delivery count a lane works within: the
// configuration's, or the bound consumer's where that is tighter. Giving up
// at the consumer's MaxDeliver keeps JetStream from silently dropping an
// event that the worker would still have retried.
func (c *Consumer) limits(have jetstream.ConsumerConfig) (ackWait time.Duration, maxDeliver int) {
	ackWait, maxDeliver = c.Cfg.AckWait, c.Cfg.MaxDeliver
	if have.AckWait > 0 && have.AckWait < ackWait {
		ackWait = have.AckWait
	}
	if have.MaxDeliver > 0 && have.MaxDeliver < maxDeliver {
		maxDeliver = have.MaxDeliver
		c.Log.Warn("the consumer stops redelivering sooner than REVOKER_MAX_DELIVER; dead-lettering at its limit",
			zap.String("consumer", have.Durable), zap.Int("max_deliver", have.MaxDeliver))
	}
	return ackWait, maxDeliver
}

// watch refreshes, every second, what the server knows of each lane: the
// messages not yet delivered (for the pending gauge, and for a lane too
// full to fetch, the gate's only news of events waiting), and the oldest
// event without a final outcome — in the stream or held by any replica,
// since a work-queue stream keeps a message until it is acked.
func (c *Consumer) watch(ctx context.Context, lanes []*boundLane) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		for _, l := range lanes {
			c.refresh(ctx, l)
		}
		select {
		case <-ctx.Done():
			for _, l := range lanes {
				l.metrics.OldestWaiting.Set(0) // no longer this replica's to report
			}
			return
		case <-t.C:
		}
	}
}

func (c *Consumer) refresh(ctx context.Context, l *boundLane) {
	ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	info, err := l.lane.Consumer().Info(ictx)
	if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		// A full lane is not fetching and would not find out itself.
		l.lane.Gone()
	}
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		// What waits is still in the stream, and the gauges must say so
		// while no consumer does (SPEC §8: an urgent event waiting with
		// its consumer lost is what the alert is for).
		c.refreshFromStream(ictx, l)
	}
	madeAgain := err == nil && l.lane.MadeAgain(info)
	if madeAgain || err == nil && l.lane.Suspect() {
		l.lane.Gone() // made again, or maybe: the lane looks and binds it
	}
	if err == nil {
		l.metrics.Pending.Set(float64(info.NumPending))
		// What a consumer the lane is not bound to holds waiting is not
		// the lane's to fetch until it is bound (it may never be, if it
		// cannot be used): it holds no lower lane back (SPEC §4, "The
		// proof", point 7).
		if l.lane.Full() && !madeAgain {
			c.Gate.SetPending(l.lane.Priority, info.NumPending > 0)
		}
		switch m, err := l.stream.GetMsg(ictx, info.AckFloor.Stream+1, jetstream.WithGetMsgSubject(l.lane.Subject)); {
		case err == nil:
			l.oldest.Store(m.Time.UnixNano())
		case errors.Is(err, jetstream.ErrMsgNotFound):
			l.oldest.Store(0)
		}
	}
	if t := l.oldest.Load(); t != 0 {
		l.metrics.OldestWaiting.Set(max(0, time.Since(time.Unix(0, t)).Seconds()))
	} else {
		l.metrics.OldestWaiting.Set(0)
	}
}

// refreshFromStream reads what waits on l's subject from the stream
// itself, for a lane without its consumer: in a work-queue stream, every
// message on the subject is unfinished, the first one the oldest.
func (c *Consumer) refreshFromStream(ctx context.Context, l *boundLane) {
	if info, err := l.stream.Info(ctx, jetstream.WithSubjectFilter(l.lane.Subject)); err == nil {
		l.metrics.Pending.Set(float64(info.State.Subjects[l.lane.Subject]))
	}
	switch m, err := l.stream.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(l.lane.Subject)); {
	case err == nil:
		l.oldest.Store(m.Time.UnixNano())
	case errors.Is(err, jetstream.ErrMsgNotFound):
		l.oldest.Store(0)
	}
}
