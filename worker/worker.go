// Package worker decides what happens to one revoke event: decode, validate,
// call the API, classify the answer, retry, and settle the message (ack,
// give back, or dead-letter) only once its outcome is durable.
package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/metrics"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/throttle"
)

// API is the one call the worker makes; *cloudflare.Client implements it.
type API interface {
	DeleteSigningKey(ctx context.Context, accountID, keyID string) (*cloudflare.Response, error)
}

var _ API = (*cloudflare.Client)(nil)

// Readiness conditions the worker reports on.
const (
	ReadyNATS       = "nats"
	ReadyConsumers  = "consumers"
	ReadyCredential = "credential"
)

// Deps are the worker's collaborators.
type Deps struct {
	API     API
	JS      jetstream.JetStream
	Gate    *throttle.Gate
	Metrics *metrics.Metrics
	Ready   *metrics.Readiness
	Log     *zap.Logger
	// Name identifies this replica in outcome records (its host name).
	Name string
}

// Worker consumes the lanes and processes their events.
type Worker struct {
	cfg config.Config
	Deps
	pub      queue.Publisher
	outcomes *queue.OutcomeWriter // nil when outcome records are off
	allowed  map[string]bool
	attempts *queue.Attempts // set by bind

	credMu  sync.Mutex
	credBad bool
}

// New makes a worker. cfg must have passed config validation.
func New(cfg config.Config, d Deps) (*Worker, error) {
	w := &Worker{
		cfg:  cfg,
		Deps: d,
		pub:  queue.Publisher{JS: d.JS, Timeout: 10 * time.Second},
	}
	if len(cfg.AllowedAccounts) > 0 {
		w.allowed = map[string]bool{}
		for _, a := range cfg.AllowedAccounts {
			w.allowed[a] = true
		}
	}
	if cfg.OutcomeSubject != "" {
		ow, err := queue.NewOutcomeWriter(d.JS.Conn(), cfg.OutcomeStream, cfg.OutcomeSubject, func(m *nats.Msg, err error) {
			w.Metrics.OutcomeFailures.Inc()
			w.Log.Error("outcome record not written", zap.String("event_id", m.Header.Get(queue.HeaderEventID)), zap.Error(err))
		})
		if err != nil {
			return nil, err
		}
		w.outcomes = ow
	}
	return w, nil
}

// Shutdown timing: a message given back at shutdown is held this long, so
// that our own last pull request (at most queue.FetchWait) cannot take it
// again.
const handBackDelay = 2 * queue.FetchWait

// Run sets up the streams and consumers (retrying while NATS is away), then
// processes events until ctx is done. After that, no new call starts; events
// waiting are given back at once, and calls in flight get
// cfg.ShutdownTimeout to finish. If a consumer is deleted under it, it turns
// not-ready and sets up again. It returns an error wrapping
// queue.ErrIncompatible when the JetStream setup makes the work impossible.
func (w *Worker) Run(ctx context.Context) error {
	// work outlives ctx by the shutdown timeout, so calls in flight can
	// finish and their outcomes be written.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stopTimer := context.AfterFunc(ctx, func() {
		w.Log.Info("shutting down: no new calls; giving back waiting events",
			zap.Duration("shutdown_timeout", w.cfg.ShutdownTimeout))
		time.AfterFunc(w.cfg.ShutdownTimeout, cancelWork)
	})
	defer stopTimer()

	for {
		lanes, err := w.bind(ctx)
		if err != nil {
			return err
		}
		if lanes == nil {
			break // ctx ended while binding
		}
		w.Ready.Set(ReadyConsumers, "")
		if !w.runLanes(ctx, work, lanes) {
			break
		}
		w.Ready.Set(ReadyConsumers, "a consumer disappeared; binding again")
		w.Log.Error("a consumer disappeared; setting up again")
	}
	w.Ready.Set(ReadyConsumers, "shutting down")
	if w.outcomes != nil {
		if err := w.outcomes.Flush(work); err != nil {
			w.Log.Error("outcome records lost at shutdown", zap.Error(err))
		}
	}
	w.Log.Info("worker stopped")
	return nil
}

// runLanes consumes until ctx ends or a consumer disappears (then it
// reports true, once every lane's events are settled).
func (w *Worker) runLanes(ctx, work context.Context, lanes []boundLane) (lost bool) {
	fetch, stopFetching := context.WithCancel(ctx)
	defer stopFetching()
	var (
		wg   sync.WaitGroup
		gone atomic.Bool
	)
	troubles := queue.NewTroubles(func(why string) { w.Ready.Set(ReadyConsumers, why) })
	for _, l := range lanes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := l.lane.Run(fetch, work, queue.Hooks{
				Handle:   func(work context.Context, msg jetstream.Msg) { w.handle(ctx, work, l.lane, msg) },
				GiveBack: func(msg jetstream.Msg) { _ = msg.NakWithDelay(handBackDelay) },
				Pending: func(n uint64) {
					w.Gate.SetPending(l.lane.Priority, n > 0)
					w.Metrics.Pending.WithLabelValues(l.lane.Subject).Set(float64(n))
				},
				NoNews:  func() { w.Gate.SetPending(l.lane.Priority, false) },
				Trouble: func(why string) { troubles.Set(l.lane.Subject, why) },
			}, w.Log)
			if errors.Is(err, queue.ErrConsumerGone) {
				gone.Store(true)
				stopFetching()
			}
		}()
	}
	go w.watchPending(fetch, lanes)
	wg.Wait()
	return gone.Load() && ctx.Err() == nil
}

type boundLane struct {
	lane *queue.Lane
	cons jetstream.Consumer
}

// bind retries the JetStream setup until it works, ctx ends, or it cannot
// work at all.
func (w *Worker) bind(ctx context.Context) ([]boundLane, error) {
	b := backoff.NewExponentialBackOff(backoff.WithInitialInterval(time.Second),
		backoff.WithMaxInterval(30*time.Second), backoff.WithMaxElapsedTime(0))
	var last string
	for {
		lanes, err := w.tryBind(ctx)
		if err == nil {
			return lanes, nil
		}
		if errors.Is(err, queue.ErrIncompatible) {
			return nil, err
		}
		if ctx.Err() != nil {
			return nil, nil
		}
		w.Ready.Set(ReadyConsumers, err.Error())
		if msg := err.Error(); msg != last { // say each new trouble once
			w.Log.Warn("JetStream setup not possible yet, retrying", zap.Error(err))
			last = msg
		}
		sleepCtx(ctx, b.NextBackOff())
	}
}

func (w *Worker) tryBind(ctx context.Context) ([]boundLane, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, w.JS, w.cfg, w.Log); err != nil {
		return nil, err
	}
	attempts, err := queue.EnsureAttempts(ctx, w.JS, w.cfg, w.Log)
	if err != nil {
		return nil, err
	}
	w.attempts = attempts
	var lanes []boundLane
	for i, subj := range w.cfg.Subjects {
		c, err := w.JS.Consumer(ctx, w.cfg.Stream, w.cfg.Durable(subj))
		if err != nil {
			return nil, fmt.Errorf("bind consumer %s: %w", w.cfg.Durable(subj), err)
		}
		// A lane holds up to twice the calls in flight, so the next events
		// are decoded and waiting for a permit while calls run; the gate,
		// not the lane, decides who calls next.
		capacity := 2 * w.cfg.Concurrency
		minBatch := 1 // a higher lane fetches at once: lower ones wait on its news
		if i == len(w.cfg.Subjects)-1 {
			minBatch = capacity / 4
		}
		lane := queue.NewLane(c, subj, i, capacity, minBatch)
		lane.AckWait, lane.MaxDeliver = w.limits(c.CachedInfo().Config)
		lanes = append(lanes, boundLane{lane: lane, cons: c})
	}
	return lanes, nil
}

// limits are the ack wait and delivery count a lane works within: the
// configuration's, or the bound consumer's where that is tighter. Giving up
// at the consumer's MaxDeliver keeps JetStream from silently dropping an
// event that the worker would still have retried.
func (w *Worker) limits(have jetstream.ConsumerConfig) (ackWait time.Duration, maxDeliver int) {
	ackWait, maxDeliver = w.cfg.AckWait, w.cfg.MaxDeliver
	if have.AckWait > 0 && have.AckWait < ackWait {
		ackWait = have.AckWait
	}
	if have.MaxDeliver > 0 && have.MaxDeliver < maxDeliver {
		maxDeliver = have.MaxDeliver
		w.Log.Warn("the consumer stops redelivering sooner than REVOKER_MAX_DELIVER; dead-lettering at its limit",
			zap.String("consumer", have.Durable), zap.Int("max_deliver", have.MaxDeliver))
	}
	return ackWait, maxDeliver
}

// watchPending refreshes revoker_consumer_pending_messages from the server
// every second. For a lane too full to fetch, it is also the gate's only
// news of events waiting in the stream.
func (w *Worker) watchPending(ctx context.Context, lanes []boundLane) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		for _, l := range lanes {
			ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
			info, err := l.cons.Info(ictx)
			cancel()
			if err == nil {
				w.Metrics.Pending.WithLabelValues(l.lane.Subject).Set(float64(info.NumPending))
				if l.lane.Full() {
					w.Gate.SetPending(l.lane.Priority, info.NumPending > 0)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// delivery is one delivery of one event and what has happened to it.
type delivery struct {
	msg     jetstream.Msg
	meta    *jetstream.MsgMetadata
	id      string
	lane    *queue.Lane
	start   time.Time
	prior   int // calls made for this event on earlier deliveries
	ev      Event
	decoded bool

	calls  int // calls made on this delivery
	status int // last call's status, 0 if none came back
	cfRay  string
	last   Decision
}

func (d *delivery) attempts() int { return d.prior + d.calls }

func (w *Worker) handle(stop, work context.Context, lane *queue.Lane, msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		// Only a JetStream delivery reaches a lane; this cannot be settled.
		w.Log.Error("message without JetStream metadata", zap.Error(err))
		return
	}
	w.Metrics.EventsReceived.WithLabelValues(lane.Subject).Inc()
	w.Metrics.Inflight.Inc()
	defer w.Metrics.Inflight.Dec()
	defer keepAlive(msg, lane.AckWait/3)()

	d := &delivery{msg: msg, meta: meta, id: queue.EventID(msg, meta), lane: lane, start: time.Now()}
	if meta.NumDelivered > 1 {
		d.prior = w.attempts.Get(work, meta.Stream, meta.Sequence.Stream)
	}
	d.ev, err = DecodeEvent(msg.Data())
	if err != nil {
		w.deadLetter(work, d, "invalid_event", err.Error())
		return
	}
	d.decoded = true
	if w.allowed != nil && !w.allowed[d.ev.AccountID] {
		w.deadLetter(work, d, "account_not_allowed",
			fmt.Sprintf("account %s is not in REVOKER_ALLOWED_ACCOUNTS", d.ev.AccountID))
		return
	}

	stopped, exhausted := w.call(stop, work, d)
	switch {
	case stopped:
		w.giveBack(d, handBackDelay, "shutting down")
	case d.last.Kind == Revoked:
		w.settle(work, d, "revoked", "", msg.Ack)
		w.Metrics.RevocationLatency.WithLabelValues(lane.Subject).Observe(time.Since(meta.Timestamp).Seconds())
	case d.last.Kind == NotFound && w.cfg.NotFoundDeadLetter:
		w.deadLetter(work, d, "not_found", d.last.Detail)
	case d.last.Kind == NotFound:
		w.settle(work, d, "not_found", "", msg.Ack)
	case d.last.Kind == Rejected:
		w.deadLetter(work, d, "api_rejected", d.last.Detail)
	case exhausted && int(meta.NumDelivered) >= lane.MaxDeliver:
		reason := "retries_exhausted"
		if d.last.Kind == Unauthorized {
			reason = "unauthorized"
		}
		w.deadLetter(work, d, reason, fmt.Sprintf("%d deliveries, %d calls; last: %s",
			meta.NumDelivered, d.attempts(), d.last.Detail))
	default:
		w.giveBack(d, w.cfg.RetryMaxInterval, "retry budget of this delivery spent")
	}
}

// call makes the API call, retrying retryable answers with exponential
// backoff within this delivery's budget. stopped means shutdown interrupted
// it; exhausted means the budget ran out on a retryable answer.
func (w *Worker) call(stop, work context.Context, d *delivery) (stopped, exhausted bool) {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(w.cfg.RetryInitial),
		backoff.WithMaxInterval(w.cfg.RetryMaxInterval),
		backoff.WithMaxElapsedTime(0), // the budget is kept below, without pauses
	)
	// spent is the delivery's retry budget used: calls and backoff sleeps,
	// but not waits for a permit, so a 429 pause cannot dead-letter.
	var spent time.Duration
	for {
		waitFrom := time.Now()
		permit, err := w.Gate.Acquire(stop, d.lane.Priority)
		if err != nil {
			return true, false
		}
		w.Metrics.RateLimitWait.Observe(time.Since(waitFrom).Seconds())
		if d.attempts() > 0 {
			w.Metrics.APIRetries.Inc()
		}
		d.calls++
		callFrom := time.Now()
		resp, err := w.API.DeleteSigningKey(work, d.ev.AccountID, d.ev.KeyID)
		permit.Release()
		took := time.Since(callFrom)
		d.status, d.cfRay = 0, ""
		if resp != nil {
			d.status, d.cfRay = resp.Status, resp.CFRay
		}
		w.Metrics.APIRequests.WithLabelValues(metrics.Code(d.status)).Inc()
		w.Metrics.APIDuration.Observe(took.Seconds())
		d.last = Classify(resp, err)
		w.heed(resp, d.last, d.status)

		var wait time.Duration
		switch d.last.Kind {
		case Revoked, NotFound, Rejected:
			return false, false
		case Unauthorized:
			wait = w.cfg.RetryMaxInterval
		default:
			switch {
			case d.last.Pause:
				pause := d.last.RetryAfter
				if pause == 0 {
					pause = b.NextBackOff()
				}
				w.Gate.Pause(pause) // the next Acquire waits it out, uncharged
			case d.last.RetryAfter > 0:
				wait = d.last.RetryAfter
			default:
				wait = b.NextBackOff()
			}
		}
		spent += took
		if spent+wait > w.cfg.RetryMaxElapsed {
			return false, true
		}
		if d.calls == 1 {
			w.Log.Warn("call failed, retrying", w.fields(d, zap.Duration("wait", wait))...)
		} else {
			w.Log.Debug("call failed, retrying", w.fields(d, zap.Duration("wait", wait))...)
		}
		if !sleepCtx(stop, wait) {
			return true, false
		}
		spent += wait
	}
}

// minHeededReset: rate-limit headers count whole seconds, so over a window
// of a few seconds they cannot pace calls more finely than our own limiter;
// they are heeded for longer windows, such as Cloudflare's five minutes.
const minHeededReset = 5 * time.Second

// heed applies what an answer says about the API as a whole: its rate
// budget and whether our credential works.
func (w *Worker) heed(resp *cloudflare.Response, d Decision, status int) {
	if resp != nil && resp.RateLimit.Known && resp.RateLimit.Reset >= minHeededReset {
		rl := resp.RateLimit
		// Spread what is left over the rest of the window when it cannot
		// sustain our rate until the reset (with no limit of our own, always).
		if w.cfg.RateLimit == 0 || float64(rl.Remaining) < w.cfg.RateLimit*rl.Reset.Seconds() {
			w.Gate.Slow(time.Now().Add(rl.Reset / time.Duration(rl.Remaining+1)))
		}
	}
	w.credMu.Lock()
	defer w.credMu.Unlock()
	// Any 401 or 403 means the credential is in doubt, whatever
	// x-should-retry made of the event.
	refused := d.Kind == Unauthorized || status == 401 || status == 403
	switch {
	case refused && !w.credBad:
		w.credBad = true
		w.Ready.Set(ReadyCredential, "the API refused the credential: "+d.Detail)
		w.Log.Error("the API refused the credential; not ready until a call succeeds", zap.String("detail", d.Detail))
	case (d.Kind == Revoked || d.Kind == NotFound) && w.credBad:
		w.credBad = false
		w.Ready.Set(ReadyCredential, "")
		w.Log.Info("the API accepts the credential again")
	}
}

// settle acks (via ack) and writes the outcome record.
func (w *Worker) settle(ctx context.Context, d *delivery, outcome, reason string, ack func() error) {
	if err := ack(); err != nil {
		// The outcome stands; a lost ack means one more delivery, which
		// the API answers with 404.
		w.Log.Warn("ack failed", w.fields(d, zap.Error(err))...)
	}
	if d.meta.NumDelivered > 1 {
		w.attempts.Forget(ctx, d.meta.Stream, d.meta.Sequence.Stream)
	}
	w.Metrics.EventsProcessed.WithLabelValues(d.lane.Subject, outcome).Inc()
	w.writeOutcome(d, outcome, reason)
	w.Log.Info("event "+outcome, w.fields(d, zap.String("outcome", outcome), zap.String("reason", reason))...)
}

// deadLetter writes the dead-letter record and only then terminates the
// original. If the record cannot be written, the original is given back.
func (w *Worker) deadLetter(ctx context.Context, d *delivery, reason, detail string) {
	rec := queue.DeadLetter{
		Reason: reason, Detail: detail,
		Status: d.status, Called: d.attempts() > 0, Attempts: d.attempts(),
		EventID: d.id, Stream: d.meta.Stream, Subject: d.msg.Subject(),
		Sequence: d.meta.Sequence.Stream, FailedAt: time.Now(),
	}
	if err := w.pub.Publish(ctx, w.cfg.DLQStream, rec.Msg(w.cfg.DLQSubject, d.msg.Data())); err != nil {
		w.Log.Error("dead-letter write failed; giving the event back",
			w.fields(d, zap.String("reason", reason), zap.Error(err))...)
		// Back within the dead-letter stream's duplicate window, so a write
		// that did land but whose acknowledgement was lost is not doubled.
		w.giveBack(d, min(w.cfg.RetryMaxInterval, queue.DuplicateWindow/2), "dead-letter write failed")
		return
	}
	w.Metrics.DeadLetters.WithLabelValues(reason).Inc()
	w.settle(ctx, d, "dead_lettered", reason, d.msg.Term)
}

// giveBack returns the event to JetStream for a later delivery.
func (w *Worker) giveBack(d *delivery, delay time.Duration, why string) {
	if err := d.msg.NakWithDelay(delay); err != nil {
		w.Log.Warn("nak failed; the event comes back after its ack wait", w.fields(d, zap.Error(err))...)
	}
	if d.calls > 0 {
		w.attempts.Set(context.Background(), d.meta.Stream, d.meta.Sequence.Stream, d.attempts())
	}
	w.Metrics.EventsProcessed.WithLabelValues(d.lane.Subject, "requeued").Inc()
	w.Log.Warn("event requeued", w.fields(d, zap.String("outcome", "requeued"),
		zap.String("why", why), zap.Duration("delay", delay))...)
}

func (w *Worker) writeOutcome(d *delivery, outcome, reason string) {
	if w.outcomes == nil {
		return
	}
	o := queue.Outcome{
		EventID: d.id, Outcome: outcome, Reason: reason,
		Status: d.status, CFRay: d.cfRay, Attempts: d.attempts(),
		Subject: d.msg.Subject(), Sequence: d.meta.Sequence.Stream,
		PublishedAt: d.meta.Timestamp.UTC().Format(time.RFC3339Nano),
		CompletedAt: time.Now().UTC().Format(time.RFC3339Nano),
		Worker:      w.Name,
		ReplayOf:    d.msg.Headers().Get(queue.HeaderReplayOf),
	}
	if d.decoded {
		o.AccountID, o.KeyID, o.RequestedBy = d.ev.AccountID, d.ev.KeyID, d.ev.RequestedBy
		if !d.ev.RequestedAt.IsZero() {
			o.RequestedAt = d.ev.RequestedAt.Format(time.RFC3339Nano)
		}
	}
	if err := w.outcomes.Write(o, d.meta.Stream); err != nil {
		w.Metrics.OutcomeFailures.Inc()
		w.Log.Error("outcome record not written", w.fields(d, zap.Error(err))...)
	}
}

// fields are the log fields that identify a delivery and its last call.
func (w *Worker) fields(d *delivery, extra ...zap.Field) []zap.Field {
	f := make([]zap.Field, 0, 16+len(extra))
	f = append(f,
		zap.String("event_id", d.id),
		zap.String("subject", d.msg.Subject()),
		zap.Uint64("sequence", d.meta.Sequence.Stream),
		zap.Uint64("delivery", d.meta.NumDelivered),
	)
	if r := d.msg.Headers().Get(queue.HeaderReplayOf); r != "" {
		f = append(f, zap.String("replay_of", r))
	}
	if d.decoded {
		f = append(f, zap.String("account", d.ev.AccountID), zap.String("key", d.ev.KeyID))
		if d.ev.Reason != "" {
			f = append(f, zap.String("event_reason", d.ev.Reason))
		}
	}
	f = append(f,
		zap.Int("attempts", d.attempts()),
		zap.Int("status", d.status),
		zap.String("cf_ray", d.cfRay),
		zap.Duration("duration", time.Since(d.start)),
	)
	if d.calls > 0 {
		f = append(f, zap.String("detail", d.last.Detail))
	}
	return append(f, extra...)
}

// keepAlive tells JetStream every `every` that the message is still being
// worked on, so its delivery stays ours while it waits or retries.
func keepAlive(msg jetstream.Msg, every time.Duration) (stop func()) {
	var (
		mu      sync.Mutex
		stopped bool
		t       *time.Timer
	)
	mu.Lock()
	defer mu.Unlock()
	t = time.AfterFunc(every, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		_ = msg.InProgress()
		t.Reset(every)
	})
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		t.Stop()
	}
}

// sleepCtx waits d or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
