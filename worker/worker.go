// Package worker decides what happens to one delivery of a revoke event:
// decode, validate, call the API, classify the answer, retry, and settle the
// message (ack, give back, or dead-letter) only once its outcome is durable.
//
// It knows no broker. A delivery, the records it writes and the ledger it
// keeps across deliveries are small interfaces declared here; package queue
// meets them with JetStream, and tests with fakes.
package worker

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/metrics"
	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/untrusted"
)

// Delivery is one delivery of one event, as the broker hands it over. The
// settling methods are final: exactly one of Ack, Term or GiveBack is
// called, once.
type Delivery interface {
	Body() []byte
	// ID is the event's id (SPEC §2).
	ID() string
	Subject() string
	Stream() string
	Sequence() uint64
	// Delivered counts deliveries of this event, this one included.
	Delivered() int
	// StoredAt is when the stream stored the event.
	StoredAt() time.Time
	// ReplayOf is the original event's id when this is a replayed dead letter.
	ReplayOf() string
	// Priority is the subject's place in the subjects, 0 the highest.
	Priority() int
	// MaxDeliver is the delivery on which a retryable failure is
	// dead-lettered; AckWait how long the broker waits for a sign of life.
	MaxDeliver() int
	AckWait() time.Duration

	Ack() error
	Term() error
	GiveBack(delay time.Duration) error
	// KeepAlive tells the broker the delivery is still being worked on,
	// so it is not handed to another replica meanwhile.
	KeepAlive() error
}

// Records writes the dead-letter and outcome records. Each returns only
// once the record is stored; an error means it may not be.
type Records interface {
	DeadLetter(ctx context.Context, rec event.DeadLetter, body []byte) error
	// Outcome stores rec. maybeWritten says an earlier try may have stored
	// it already, so the writer looks before writing a second one.
	Outcome(ctx context.Context, rec event.Record, maybeWritten bool) error
	// Prior is the outcome record an earlier delivery stored for the event
	// (stream, seq) of the key, if any.
	Prior(ctx context.Context, stream string, seq uint64, account, key string) (rec event.Record, found bool, err error)
}

// Ledger keeps what one delivery of an event leaves for the next: the calls
// made and, while the outcome record cannot be written, the API's
// confirmation, so a revocation happens once whatever becomes of the
// delivery.
type Ledger interface {
	Load(ctx context.Context, stream string, seq uint64) (Entry, error)
	Save(ctx context.Context, stream string, seq uint64, e Entry) error
}

// Entry is the ledger's record of one event.
type Entry struct {
	Attempts int `json:"attempts"`
	// Confirmed is the call that revoked the key, once there was one.
	Confirmed *Call `json:"confirmed,omitempty"`
}

// Call is what the worker keeps of one API call.
type Call struct {
	Status int       `json:"status"`
	CFRay  string    `json:"cf_ray"`
	At     time.Time `json:"at"`
}

// API is the one call the worker makes; *cloudflare.Client implements it.
type API interface {
	DeleteSigningKey(ctx context.Context, accountID, keyID string) (*cloudflare.Response, error)
}

var _ API = (*cloudflare.Client)(nil)

// ReadyCredential is the readiness condition the worker reports on.
const ReadyCredential = "credential"

// Config is what the worker takes of the configuration.
type Config struct {
	// Subjects are the work subjects, highest priority first.
	Subjects           []string
	AllowedAccounts    []string // empty: every account
	NotFoundDeadLetter bool
	RateLimit          float64 // calls per second, 0 = no limit
	RetryInitial       time.Duration
	RetryMaxInterval   time.Duration
	RetryMaxElapsed    time.Duration
	// HandBackDelay is how long an event given back at shutdown is held,
	// so that our own last pull request cannot take it again.
	HandBackDelay time.Duration
	// Name identifies this replica in outcome records (its host name).
	Name string
}

// Deps are the worker's collaborators.
type Deps struct {
	API     API
	Gate    *throttle.Gate
	Records Records
	Ledger  Ledger
	Metrics *metrics.Metrics
	Ready   *metrics.Readiness
	Log     *zap.Logger
}

// Worker handles deliveries.
type Worker struct {
	cfg Config
	Deps
	allowed map[string]bool
	lanes   []metrics.Lane

	credMu  sync.Mutex
	credBad bool

	handMu sync.Mutex
	inHand map[eventKey]chan struct{} // events being handled here, closed when done
}

// eventKey names an event beyond doubt: its stream and sequence.
type eventKey struct {
	stream string
	seq    uint64
}

// New makes a worker.
func New(cfg Config, d Deps) *Worker {
	w := &Worker{cfg: cfg, Deps: d, inHand: map[eventKey]chan struct{}{}}
	if len(cfg.AllowedAccounts) > 0 {
		w.allowed = map[string]bool{}
		for _, a := range cfg.AllowedAccounts {
			w.allowed[a] = true
		}
	}
	for i, s := range cfg.Subjects {
		w.lanes = append(w.lanes, d.Metrics.Lane(s, i))
	}
	d.Ready.Declare(ReadyCredential)
	return w
}

// recordRetry bounds the wait between tries of a record write: the outcome
// stream may be away for a node's restart, and the event is held meanwhile.
var recordRetry = struct{ initial, max time.Duration }{50 * time.Millisecond, 2 * time.Second}

// attempt is one delivery of one event and what has happened to it.
type attempt struct {
	d       Delivery
	work    context.Context // outlives shutdown by its timeout
	lane    metrics.Lane
	start   time.Time
	prior   int   // calls made for this event on earlier deliveries
	revoked *Call // the confirming call, from this delivery or an earlier one
	ev      event.Event
	decoded bool

	calls  int // calls made on this delivery
	status int // the deciding (or last) call's status, 0 if none came back
	cfRay  string
	last   Decision
}

func (a *attempt) attempts() int { return a.prior + a.calls }

// Handle decides and settles one delivery. stop ends with shutdown: no new
// call starts after it. work outlives stop by the shutdown timeout, so a
// call in flight can finish and its outcome be made durable.
func (w *Worker) Handle(stop, work context.Context, d Delivery) {
	a := &attempt{d: d, work: work, lane: w.lane(d.Priority()), start: time.Now()}
	a.lane.Received.Inc()
	w.Metrics.Inflight.Inc()
	defer w.Metrics.Inflight.Dec()
	defer keepAlive(d, d.AckWait()/3)()

	// The broker may deliver an event again while this process still holds
	// an earlier delivery of it (a new consumer leader does not know of our
	// keep-alives). Only one delivery of an event is handled here at a
	// time; the later one waits, then finds what the first left.
	release, ok := w.take(stop, eventKey{d.Stream(), d.Sequence()})
	if !ok {
		w.giveBack(a, w.cfg.HandBackDelay, "shutting down")
		return
	}
	defer release()

	if d.Delivered() > 1 {
		e, err := w.Ledger.Load(work, d.Stream(), d.Sequence())
		if err != nil {
			// Without the ledger we cannot know whether an earlier delivery
			// revoked the key; calling again could bury that confirmation
			// under a 404. Wait for the ledger instead.
			w.giveBack(a, w.cfg.RetryMaxInterval, "ledger not readable: "+err.Error())
			return
		}
		a.prior, a.revoked = e.Attempts, e.Confirmed
	}
	var err error
	a.ev, err = event.Decode(d.Body())
	if err != nil {
		w.deadLetter(stop, work, a, event.InvalidEvent, err.Error())
		return
	}
	a.decoded = true
	if w.allowed != nil && !w.allowed[a.ev.AccountID] {
		w.deadLetter(stop, work, a, event.AccountNotAllowed,
			fmt.Sprintf("account %s is not in REVOKER_ALLOWED_ACCOUNTS", a.ev.AccountID))
		return
	}

	if d.Delivered() > 1 && a.revoked == nil {
		// An earlier delivery may have finished the event (its record
		// stored, its ack lost): then it is settled as it was, with no call.
		prior, found, err := w.Records.Prior(work, d.Stream(), d.Sequence(), a.ev.AccountID, a.ev.KeyID)
		if err != nil {
			w.giveBack(a, w.cfg.RetryMaxInterval, "outcome records not readable: "+err.Error())
			return
		}
		if found {
			w.settlePrior(a, prior)
			return
		}
	}
	if a.revoked != nil {
		// An earlier delivery revoked the key: no second call, the outcome
		// is the one the first confirmation earned.
		a.status, a.cfRay, a.last = a.revoked.Status, a.revoked.CFRay, Decision{Kind: Revoked}
		w.Log.Info("revoked on an earlier delivery; recording it without a call", w.fields(a)...)
		w.finish(stop, work, a, event.Revoked, "", d.Ack)
		return
	}

	stopped, exhausted := w.call(stop, work, a)
	switch {
	case stopped:
		w.giveBack(a, w.cfg.HandBackDelay, "shutting down")
	case a.last.Kind == Revoked:
		a.revoked = &Call{Status: a.status, CFRay: a.cfRay, At: time.Now()}
		a.lane.Latency.Observe(time.Since(d.StoredAt()).Seconds())
		// The confirmation is made durable before anything else, so no later
		// delivery can call again and record a 404 in its place: in the
		// outcome record itself, which a later delivery finds, or while that
		// cannot be written, in the ledger.
		rec := w.record(a, event.Revoked, "")
		if err := w.Records.Outcome(work, rec, false); err == nil {
			w.done(a, event.Revoked, "", d.Ack)
			return
		}
		w.Metrics.OutcomeFailures.Inc()
		if !w.durably(stop, work, a, "revocation", func(ctx context.Context) error {
			return w.Ledger.Save(ctx, d.Stream(), d.Sequence(), Entry{Attempts: a.attempts(), Confirmed: a.revoked})
		}) {
			return
		}
		w.finish(stop, work, a, event.Revoked, "", d.Ack)
	case a.last.Kind == NotFound && w.cfg.NotFoundDeadLetter:
		w.deadLetter(stop, work, a, event.ReasonNotFound, a.last.Detail)
	case a.last.Kind == NotFound:
		w.finish(stop, work, a, event.NotFound, "", d.Ack)
	case a.last.Kind == Rejected:
		w.deadLetter(stop, work, a, event.APIRejected, a.last.Detail)
	case exhausted && d.Delivered() >= d.MaxDeliver():
		reason := event.RetriesExhausted
		if a.last.Kind == Unauthorized {
			reason = event.Unauthorized
		}
		w.deadLetter(stop, work, a, reason, fmt.Sprintf("%d deliveries, %d calls; last: %s",
			d.Delivered(), a.attempts(), a.last.Detail))
	default:
		w.giveBack(a, w.cfg.RetryMaxInterval, "retry budget of this delivery spent")
	}
}

// take waits until no other delivery of the event is being handled here,
// then holds it until release; ok is false if ctx ended first.
func (w *Worker) take(ctx context.Context, k eventKey) (release func(), ok bool) {
	for {
		w.handMu.Lock()
		busy, held := w.inHand[k]
		if !held {
			done := make(chan struct{})
			w.inHand[k] = done
			w.handMu.Unlock()
			return func() {
				w.handMu.Lock()
				delete(w.inHand, k)
				w.handMu.Unlock()
				close(done)
			}, true
		}
		w.handMu.Unlock()
		select {
		case <-busy:
		case <-ctx.Done():
			return nil, false
		}
	}
}

func (w *Worker) lane(p int) metrics.Lane {
	return w.lanes[min(max(p, 0), len(w.lanes)-1)]
}

// call makes the API call, retrying retryable answers with exponential
// backoff within this delivery's budget. stopped means shutdown interrupted
// it; exhausted means the budget ran out on a retryable answer.
func (w *Worker) call(stop, work context.Context, a *attempt) (stopped, exhausted bool) {
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
		permit, err := w.Gate.Acquire(stop, a.d.Priority())
		if err != nil {
			return true, false
		}
		w.Metrics.RateLimitWait.Observe(time.Since(waitFrom).Seconds())
		if a.attempts() > 0 {
			w.Metrics.APIRetries.Inc()
		}
		a.calls++
		callFrom := time.Now()
		resp, err := w.API.DeleteSigningKey(work, a.ev.AccountID, a.ev.KeyID)
		permit.Release()
		took := time.Since(callFrom)
		a.status, a.cfRay = 0, ""
		if resp != nil {
			a.status, a.cfRay = resp.Status, resp.CFRay
		}
		w.Metrics.APIRequests.WithLabelValues(metrics.Code(a.status)).Inc()
		w.Metrics.APIDuration.Observe(took.Seconds())
		a.last = Classify(resp, err)
		w.heed(resp, a.last, a.status)

		var wait time.Duration
		switch a.last.Kind {
		case Revoked, NotFound, Rejected:
			return false, false
		case Unauthorized:
			wait = w.cfg.RetryMaxInterval
		default:
			switch {
			case a.last.Pause:
				pause := a.last.RetryAfter
				if pause == 0 {
					pause = b.NextBackOff()
				}
				w.Gate.Pause(pause) // the next Acquire waits it out, uncharged
			case a.last.RetryAfter > 0:
				wait = a.last.RetryAfter
			default:
				wait = b.NextBackOff()
			}
		}
		spent += took
		if spent+wait > w.cfg.RetryMaxElapsed {
			return false, true
		}
		if a.calls == 1 {
			w.Log.Warn("call failed, retrying", w.fields(a, zap.Duration("wait", wait))...)
		} else {
			w.Log.Debug("call failed, retrying", w.fields(a, zap.Duration("wait", wait))...)
		}
		if !throttle.Sleep(stop, wait) {
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

// finish writes the outcome record and only then settles the message with
// settle (ack or term): the audit trail never misses an acked event.
func (w *Worker) finish(stop, work context.Context, a *attempt, outcome event.Outcome, reason event.Reason, settle func() error) {
	rec := w.record(a, outcome, reason)
	// An earlier delivery, or a try that failed, may have stored the record
	// all the same: then the writer looks first. (The records of invalid
	// events share one subject, too many to look through; the record's
	// Nats-Msg-Id still drops a repeat within the duplicate window.)
	maybeWritten := a.decoded && (a.d.Delivered() > 1 || outcome == event.Revoked)
	if !w.durably(stop, work, a, "outcome record", func(ctx context.Context) error {
		err := w.Records.Outcome(ctx, rec, maybeWritten)
		if err != nil {
			w.Metrics.OutcomeFailures.Inc()
			maybeWritten = a.decoded
		}
		return err
	}) {
		return
	}
	w.done(a, outcome, reason, settle)
}

// done settles the message with settle (ack or term) once its records are
// stored, and counts and logs the outcome.
func (w *Worker) done(a *attempt, outcome event.Outcome, reason event.Reason, settle func() error) {
	if err := settle(); err != nil {
		// The outcome stands and is recorded; a lost ack means one more
		// delivery, which the ledger or the record answers without a call.
		w.Log.Warn("ack failed", w.fields(a, zap.Error(err))...)
	}
	a.lane.Processed(string(outcome))
	w.Log.Info("event "+string(outcome), w.fields(a, zap.String("outcome", string(outcome)), zap.String("reason", string(reason)))...)
}

// settlePrior settles a delivery whose event an earlier delivery finished:
// its record is stored, so only the message is left to settle, as then.
func (w *Worker) settlePrior(a *attempt, prior event.Record) {
	a.status, a.cfRay, a.prior = prior.Status, prior.CFRay, max(a.prior, prior.Attempts)
	settle := a.d.Ack
	if prior.Outcome == event.DeadLettered {
		settle = a.d.Term
	}
	w.Log.Info("finished on an earlier delivery; settling it as recorded", w.fields(a, zap.String("outcome", string(prior.Outcome)))...)
	w.done(a, prior.Outcome, prior.Reason, settle)
}

// deadLetter writes the dead-letter record, then the outcome record, and
// only then terminates the original.
func (w *Worker) deadLetter(stop, work context.Context, a *attempt, reason event.Reason, detail string) {
	rec := event.DeadLetter{
		Reason: reason, Detail: detail,
		Status: a.status, Called: a.attempts() > 0, Attempts: a.attempts(),
		EventID: a.d.ID(), Stream: a.d.Stream(), Subject: a.d.Subject(),
		Sequence: a.d.Sequence(), FailedAt: time.Now(),
	}
	if !w.durably(stop, work, a, "dead-letter record", func(ctx context.Context) error {
		return w.Records.DeadLetter(ctx, rec, a.d.Body())
	}) {
		return
	}
	w.Metrics.DeadLetters.WithLabelValues(string(reason)).Inc()
	w.finish(stop, work, a, event.DeadLettered, reason, a.d.Term)
}

// durably runs write until it succeeds, retrying with backoff while the
// delivery is kept alive. If shutdown comes first, it tries once more and
// then gives the event back (the ledger spares the next delivery a second
// call); it reports whether the write succeeded.
func (w *Worker) durably(stop, work context.Context, a *attempt, what string, write func(context.Context) error) bool {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(recordRetry.initial),
		backoff.WithMaxInterval(recordRetry.max),
		backoff.WithMaxElapsedTime(0),
	)
	for i := 0; ; i++ {
		err := write(work)
		if err == nil {
			if i > 0 {
				w.Log.Info(what+" written after retries", w.fields(a, zap.Int("tries", i+1))...)
			}
			return true
		}
		if i == 0 {
			w.Log.Error(what+" not written; holding the event and retrying", w.fields(a, zap.Error(err))...)
		}
		if stop.Err() != nil || !throttle.Sleep(stop, b.NextBackOff()) {
			if err := write(work); err == nil {
				return true
			}
			w.giveBack(a, w.cfg.HandBackDelay, what+" not written before shutdown")
			return false
		}
	}
}

// giveBack returns the event to the broker for a later delivery, leaving
// the calls made in the ledger.
func (w *Worker) giveBack(a *attempt, delay time.Duration, why string) {
	if err := a.d.GiveBack(delay); err != nil {
		w.Log.Warn("give back failed; the event comes back after its ack wait", w.fields(a, zap.Error(err))...)
	}
	if a.calls > 0 && a.revoked == nil {
		ctx, cancel := context.WithTimeout(a.work, 2*time.Second)
		defer cancel()
		if err := w.Ledger.Save(ctx, a.d.Stream(), a.d.Sequence(), Entry{Attempts: a.attempts()}); err != nil {
			w.Log.Warn("attempt count not stored", w.fields(a, zap.Error(err))...)
		}
	}
	a.lane.Processed(string(event.Requeued))
	w.Log.Warn("event requeued", w.fields(a, zap.String("outcome", string(event.Requeued)),
		zap.String("why", why), zap.Duration("delay", delay))...)
}

// record is the outcome record of a.
func (w *Worker) record(a *attempt, outcome event.Outcome, reason event.Reason) event.Record {
	r := event.Record{
		EventID: a.d.ID(), AccountID: event.NoKey, KeyID: event.NoKey,
		Outcome: outcome, Reason: reason,
		Status: a.status, CFRay: a.cfRay, Attempts: a.attempts(),
		Stream: a.d.Stream(), Subject: a.d.Subject(), Sequence: a.d.Sequence(),
		PublishedAt: a.d.StoredAt().UTC().Format(time.RFC3339Nano),
		CompletedAt: time.Now().UTC().Format(time.RFC3339Nano),
		Worker:      w.cfg.Name,
		ReplayOf:    a.d.ReplayOf(),
	}
	if a.revoked != nil {
		// Whatever happened afterwards, the record names the call that
		// revoked the key.
		r.Outcome, r.Reason, r.Status, r.CFRay = event.Revoked, "", a.revoked.Status, a.revoked.CFRay
	}
	if a.decoded {
		r.AccountID, r.KeyID, r.RequestedBy = a.ev.AccountID, a.ev.KeyID, a.ev.RequestedBy
		if !a.ev.RequestedAt.IsZero() {
			r.RequestedAt = a.ev.RequestedAt.Format(time.RFC3339Nano)
		}
	}
	return r
}

// Bounds of what a log line carries from an event or an answer, so that no
// line grows past 16 KiB whatever they hold.
const (
	maxLoggedID     = 256
	maxLoggedText   = 1024
	maxLoggedDetail = 2048
)

// fields are the log fields that identify a delivery and its last call.
func (w *Worker) fields(a *attempt, extra ...zap.Field) []zap.Field {
	d := a.d
	f := make([]zap.Field, 0, 16+len(extra))
	f = append(f,
		zap.String("event_id", untrusted.Line(d.ID(), maxLoggedID)),
		zap.String("subject", d.Subject()),
		zap.Uint64("sequence", d.Sequence()),
		zap.Int("delivery", d.Delivered()),
	)
	if r := d.ReplayOf(); r != "" {
		f = append(f, zap.String("replay_of", untrusted.Line(r, maxLoggedID)))
	}
	if a.decoded {
		f = append(f, zap.String("account", a.ev.AccountID), zap.String("key", a.ev.KeyID))
		if a.ev.Reason != "" {
			f = append(f, zap.String("event_reason", untrusted.Line(a.ev.Reason, maxLoggedText)))
		}
	}
	f = append(f,
		zap.Int("attempts", a.attempts()),
		zap.Int("status", a.status),
		zap.String("cf_ray", a.cfRay),
		zap.Duration("duration", time.Since(a.start)),
	)
	if a.calls > 0 {
		f = append(f, zap.String("detail", untrusted.Line(a.last.Detail, maxLoggedDetail)))
	}
	return append(f, extra...)
}

// keepAlive tells the broker every `every` that the delivery is still being
// worked on, so it stays ours while it waits, retries or is recorded.
func keepAlive(d Delivery, every time.Duration) (stop func()) {
	if every <= 0 {
		return func() {}
	}
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
		_ = d.KeepAlive()
		t.Reset(every)
	})
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		t.Stop()
	}
}
