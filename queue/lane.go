package queue

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/tracing"
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
	// existing consumer may set tighter than the configuration. Set them
	// before Run; a rebinding replaces them for later deliveries.
	AckWait    time.Duration
	MaxDeliver int
	// Stream is the work stream, which a delivery asks whether it still
	// holds its event (Delivery.Held). Set it before Run.
	Stream    jetstream.Stream
	minBatch  int
	fetchWait time.Duration

	room chan struct{} // one token per message we may still take
	// gone tells a lane waiting for room that its consumer was found
	// missing: a full lane does not fetch, and would not learn it from a
	// fetch until an event in hand finished (SPEC §4, "The proof", point 7).
	gone chan struct{}

	mu   sync.Mutex
	cons jetstream.Consumer
	// fresh tells whether an event was stored after the consumer was
	// made, so that no older one can have delivered it.
	fresh func(*jetstream.MsgMetadata) bool
	gen   int // counts bindings
	// made is when the bound consumer was made. A consumer deleted and
	// made again between two looks is another one under the same name.
	made time.Time
	// lastCseq is the consumer sequence of the latest delivery, to this
	// lane or, before its first, to any: a consumer numbers its deliveries
	// upwards, one made again from 1.
	lastCseq uint64
	// suspect is set by a delivery numbered no higher than the one
	// before: the consumer may have been made again unnoticed. Until the
	// lane has looked, no delivery is first (a new consumer counts from 1
	// what an old one delivered before).
	suspect bool
	// seen holds, by stream sequence, the events of the latest deliveries:
	// a consumer made again counts deliveries from 1, and the worker must
	// still know that an event was delivered before (its ack may have been
	// lost with the old consumer).
	seen map[uint64]*seenEvent
	held map[uint64]int // deliveries in hand, by stream sequence
	// check is the look at the consumer that the deliveries taken for
	// first since the last look wait for (nil: none waits); checkWanted
	// wakes the lane's checker, and checkOff, once it has stopped, makes
	// no delivery first.
	check       *consumerCheck
	checkWanted chan struct{}
	checkOff    bool

	// aside counts the deliveries in hand that gave their place to the
	// next event while they wait on something of their own (Aside), and
	// retrying those of them waiting out a retry's backoff; owed, the
	// places taken back by those that found none free, paid with the next
	// places freed (putRoom). handlers counts the handler goroutines: one
	// per place, per delivery aside and per place owed (handlersWanted);
	// spawn starts one more.
	aside, retrying, owed, handlers int
	spawn                           func()
}

// consumerCheck is one look at the lane's consumer, made after the
// deliveries it covers were received: if the consumer bound when they came
// is still there, it delivered them. A consumer made again under the
// lane's name between two fetches numbers its deliveries from 1, and its
// first ones may have gone to other replicas, so neither its numbers nor
// its counts tell the lane (SPEC §4, "The proof", point 3).
type consumerCheck struct {
	done chan struct{} // closed once same is known
	same bool
}

// consumerCheckTimeout bounds one look; a look that fails makes the
// deliveries it covers read what is stored, as a later delivery does.
const consumerCheckTimeout = 2 * time.Second

// seenEvent is what a lane remembers of an event it was handed.
type seenEvent struct {
	stored time.Time // tells it from another event at its sequence in a stream made again
	gen    int       // the binding of its latest delivery
	prior  int       // deliveries by bindings before that one
	total  int       // deliveries counted at its latest delivery
}

// Binding is a consumer for a lane and the limits it allows.
type Binding struct {
	Consumer   jetstream.Consumer
	AckWait    time.Duration
	MaxDeliver int
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
	// a quorum), or at once when its consumer is gone, and "" once a fetch
	// works again or the consumer is bound again.
	Trouble func(why string)
	// Rebind, if set, binds the lane's consumer again after it disappeared
	// (making it, if it may): one try, bounded by ctx. Errors are retried,
	// ErrIncompatible too (logged at error level). Without it, a lost
	// consumer stops the lane with ErrConsumerGone.
	Rebind func(ctx context.Context) (Binding, error)
}

func (h Hooks) trouble(why string) {
	if h.Trouble != nil {
		h.Trouble(why)
	}
}

// troubleAfter is how many fetches in a row must fail before the lane
// reports trouble: a leader election fails one or two, and is not news.
const troubleAfter = 3

// ErrConsumerGone means the lane's consumer no longer exists and the lane
// has no Rebind hook: the lane stops.
var ErrConsumerGone = errors.New("consumer gone")

// ErrSettled is what a second Ack, Term or GiveBack of a delivery returns:
// nothing is sent for it.
var ErrSettled = errors.New("delivery already settled")

// rebindMaxWait is the longest pause between tries to bind a lost consumer
// again, well inside the 5 s in which it must be back (SPEC §4).
const rebindMaxWait = time.Second

// seenPerPlace is how many of its latest events a lane remembers per
// place in hand: far more than can be settled between a consumer's loss and
// the lane's noticing it.
const seenPerPlace = 16

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
		fresh:     freshOf(cons),
		made:      madeOf(cons),
		lastCseq:  deliveredOf(cons),
		seen:      map[uint64]*seenEvent{},
		held:      map[uint64]int{},

		checkWanted: make(chan struct{}, 1),
	}
	l.minBatch = min(l.minBatch, l.Capacity)
	l.room = make(chan struct{}, l.Capacity)
	l.gone = make(chan struct{}, 1)
	for range l.Capacity {
		l.room <- struct{}{}
	}
	return l
}

// Consumer is the consumer the lane fetches from now.
func (l *Lane) Consumer() jetstream.Consumer {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cons
}

// Run fetches until ctx is done, then lets the pull request under way end on
// its own (at most its fetch wait), gives back what it brings, and waits for
// every handler to return. Handlers get work, which outlives ctx so that a
// call in flight can finish during shutdown.
//
// If the consumer disappears, the lane binds it again through h.Rebind,
// retrying, while the events in hand go on; only this lane stops fetching
// meanwhile, even while the consumer is made again in a form it cannot
// use. Without h.Rebind it returns ErrConsumerGone, once its handlers are
// done.
func (l *Lane) Run(ctx, work context.Context, h Hooks, log *zap.Logger) error {
	// One long-lived handler per place in hand (and one per delivery
	// aside): a goroutine per message would grow a fresh stack for every
	// event.
	jobs := make(chan *Delivery, l.Capacity)
	var wg sync.WaitGroup
	handle := func() {
		for d := range jobs {
			h.Handle(work, d)
			if l.release(d) {
				return
			}
		}
	}
	l.mu.Lock()
	l.handlers, l.spawn = l.Capacity, func() { wg.Go(handle) }
	l.mu.Unlock()
	for range l.Capacity {
		wg.Go(handle)
	}
	defer func() {
		close(jobs)
		wg.Wait()
	}()
	// The checker stops before the handlers are waited for: a handler
	// waiting on a check is then told no.
	checkStop := make(chan struct{})
	var checker sync.WaitGroup
	checker.Go(func() { l.checkConsumer(ctx, checkStop) })
	defer func() {
		close(checkStop)
		checker.Wait()
	}()
	f := fetchTrouble{subject: l.Subject, report: h.Trouble, log: log}
	bindAgain := func() error {
		if h.Rebind == nil {
			return ErrConsumerGone
		}
		l.rebind(ctx, h, log)
		f = fetchTrouble{subject: l.Subject, report: h.Trouble, log: log}
		return nil
	}
	for ctx.Err() == nil {
		n, gone := l.waitRoom(ctx)
		if gone {
			// Unless the news is from before the consumer was made again.
			if l.missing(ctx) {
				if err := bindAgain(); err != nil {
					return err
				}
			}
			continue
		}
		if n == 0 {
			break
		}
		got, last, err := l.fetch(ctx, n, h, jobs, log)
		if err != nil {
			h.NoNews()
			if l.lost(ctx, err) {
				if err := bindAgain(); err != nil {
					return err
				}
				continue
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

// lost reports whether a failed fetch means the consumer is gone. A pull
// request still waiting when the consumer is deleted says so; one sent
// after finds nobody to answer it, which a lookup tells from a server or a
// leader that is away.
func (l *Lane) lost(ctx context.Context, err error) bool {
	if gone(err) {
		return true
	}
	if !errors.Is(err, nats.ErrNoResponders) {
		return false
	}
	ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = l.Consumer().Info(ictx)
	return errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound)
}

// rebind binds the lane's consumer again, retrying until it works or ctx
// ends (the lane is stopping anyway).
func (l *Lane) rebind(ctx context.Context, h Hooks, log *zap.Logger) {
	var name string
	if info := l.Consumer().CachedInfo(); info != nil {
		name = info.Name
	}
	why := "consumer " + name + " of " + l.Subject + " disappeared; binding it again"
	log.Error("consumer disappeared; binding it again", zap.String("subject", l.Subject), zap.String("consumer", name))
	h.trouble(why)
	// What the lost consumer held waiting cannot be fetched until it is
	// bound again: it must not hold the lower lanes back meanwhile (SPEC
	// §4, "The proof", point 7). The next fetch tells the gate again.
	h.NoNews()
	from := time.Now()
	wait, last := 100*time.Millisecond, ""
	for {
		b, err := h.Rebind(ctx)
		if err == nil {
			l.bind(b)
			select {
			case <-l.gone: // news of the consumer just replaced
			default:
			}
			h.trouble("")
			log.Info("consumer bound again", zap.String("subject", l.Subject), zap.String("consumer", name),
				zap.Duration("after", time.Since(from)))
			return
		}
		if ctx.Err() != nil {
			return
		}
		if msg := err.Error(); msg != last { // each new cause once
			if errors.Is(err, ErrIncompatible) {
				// Made again elsewhere in a form revoker cannot use: this
				// lane waits for it to be fixed, the others go on (SPEC
				// §4, "The proof", point 7). At start the same stops the
				// process (§3); at run time that would take every
				// replica's other lanes down with it.
				log.Error("the lost consumer cannot be bound again as it is; retrying", zap.String("subject", l.Subject), zap.Error(err))
			} else {
				log.Warn("consumer not bound yet, retrying", zap.String("subject", l.Subject), zap.Error(err))
			}
			h.trouble(why + ": " + msg)
			last = msg
		}
		throttle.Sleep(ctx, wait)
		wait = min(2*wait, rebindMaxWait)
	}
}

// bind makes b the lane's consumer. A new binding number makes deliver
// count what the old consumer delivered as earlier deliveries.
func (l *Lane) bind(b Binding) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cons, l.fresh, l.gen = b.Consumer, freshOf(b.Consumer), l.gen+1
	l.made, l.lastCseq, l.suspect = madeOf(b.Consumer), deliveredOf(b.Consumer), false
	// Deliveries waiting for a look came from the consumer replaced.
	l.endCheck(false)
	if b.AckWait > 0 {
		l.AckWait = b.AckWait
	}
	if b.MaxDeliver > 0 {
		l.MaxDeliver = b.MaxDeliver
	}
}

// deliver makes the delivery of msg and counts it in hand.
func (l *Lane) deliver(msg jetstream.Msg, meta *jetstream.MsgMetadata) *Delivery {
	l.mu.Lock()
	defer l.mu.Unlock()
	seq := meta.Sequence.Stream
	e := l.seen[seq]
	if e == nil || !e.stored.Equal(meta.Timestamp) {
		e = &seenEvent{stored: meta.Timestamp, gen: l.gen}
		l.seen[seq] = e
	}
	if e.gen != l.gen { // delivered before by a consumer since lost
		e.gen, e.prior = l.gen, e.total
	}
	e.total = int(meta.NumDelivered) + e.prior
	l.held[seq]++
	l.forget()
	if meta.Sequence.Consumer <= l.lastCseq && !l.suspect {
		l.suspect = true
		l.Gone() // Run looks (missing) at once, or once its fetch ends
	}
	l.lastCseq = meta.Sequence.Consumer
	d := &Delivery{
		msg: msg, meta: meta, stream: l.Stream, lane: l,
		priority: l.Priority, maxDeliver: l.MaxDeliver, ackWait: l.AckWait,
		delivered: e.total,
		first:     e.total == 1 && !l.suspect && l.fresh(meta) && !l.checkOff,
	}
	if d.first {
		if l.check == nil {
			l.check = &consumerCheck{done: make(chan struct{})}
			select {
			case l.checkWanted <- struct{}{}:
			default: // already woken
			}
		}
		d.check = l.check
	}
	return d
}

// checkConsumer looks at the lane's consumer whenever deliveries taken for
// first wait for it, one look for all that came meanwhile, until stop.
func (l *Lane) checkConsumer(ctx context.Context, stop <-chan struct{}) {
	for {
		select {
		case <-l.checkWanted:
		case <-stop:
			l.mu.Lock()
			l.checkOff = true
			l.endCheck(false)
			l.mu.Unlock()
			return
		}
		l.mu.Lock()
		c, cons, made := l.check, l.cons, l.made
		l.check = nil
		l.mu.Unlock()
		if c == nil {
			continue
		}
		ictx, cancel := context.WithTimeout(ctx, consumerCheckTimeout)
		info, err := cons.Info(ictx)
		cancel()
		c.same = err == nil && !made.IsZero() && info.Created.Equal(made)
		close(c.done)
		if gone(err) || err == nil && !c.same {
			l.Gone() // bound again at once, not at the watch's next look
		}
	}
}

// endCheck tells the deliveries waiting for a look that their consumer is
// (same) or may not be the one bound. l.mu must be held.
func (l *Lane) endCheck(same bool) {
	if l.check != nil {
		l.check.same = same
		close(l.check.done)
		l.check = nil
	}
}

// madeOf is when cons was made, as it was bound (zero: not known).
func madeOf(cons jetstream.Consumer) time.Time {
	if cons == nil {
		return time.Time{}
	}
	if info := cons.CachedInfo(); info != nil {
		return info.Created
	}
	return time.Time{}
}

// MadeAgain reports whether info is of another consumer than the one
// bound, made since under its name.
func (l *Lane) MadeAgain(info *jetstream.ConsumerInfo) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.made.IsZero() && !info.Created.Equal(l.made)
}

// deliveredOf is the number of cons's latest delivery, to any replica,
// when it was bound: a consumer made again before the lane's first fetch
// numbers its deliveries from 1 again.
func deliveredOf(cons jetstream.Consumer) uint64 {
	if cons == nil {
		return 0
	}
	if info := cons.CachedInfo(); info != nil {
		return info.Delivered.Consumer
	}
	return 0
}

// Suspect reports whether a delivery numbered out of order waits for the
// lane to look at its consumer.
func (l *Lane) Suspect() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.suspect
}

// createdMargin covers the clocks of two servers of a cluster (the
// consumer's and the stream's leaders): of a consumer not made by revoker,
// an event stored less than this after it was made may have been
// delivered by an older one.
const createdMargin = time.Minute

// freshOf tells the events no consumer before cons can have delivered: from
// the sequence a consumer revoker made names (if it is that consumer, not
// a copy: MetaMadeAt), else those stored well after it was made (unknown:
// after now).
func freshOf(cons jetstream.Consumer) func(*jetstream.MsgMetadata) bool {
	var info *jetstream.ConsumerInfo
	if cons != nil {
		info = cons.CachedInfo()
	}
	if info != nil && madeAsNoted(info) {
		if from, err := strconv.ParseUint(info.Config.Metadata[MetaFreshFrom], 10, 64); err == nil {
			return func(m *jetstream.MsgMetadata) bool { return m.Sequence.Stream >= from }
		}
	}
	after := time.Now()
	if info != nil && !info.Created.IsZero() {
		after = info.Created
	}
	after = after.Add(createdMargin)
	return func(m *jetstream.MsgMetadata) bool { return m.Timestamp.After(after) }
}

// madeAsNoted reports whether info's consumer is the one its metadata was
// written for (MetaMadeAt), not one made again from a copy of it.
func madeAsNoted(info *jetstream.ConsumerInfo) bool {
	at, err := time.Parse(time.RFC3339Nano, info.Config.Metadata[MetaMadeAt])
	return err == nil && at.Equal(info.Created)
}

// forget keeps what the lane remembers bounded: past twice its measure, it
// forgets the oldest events not in hand, down to the measure.
func (l *Lane) forget() {
	keep := seenPerPlace * l.Capacity
	if len(l.seen) <= 2*keep {
		return
	}
	seqs := make([]uint64, 0, len(l.seen))
	for seq := range l.seen {
		if l.held[seq] == 0 {
			seqs = append(seqs, seq)
		}
	}
	slices.Sort(seqs)
	for _, seq := range seqs[:min(len(seqs), max(0, len(l.seen)-keep))] {
		delete(l.seen, seq)
	}
}

// done counts d out of hand.
func (l *Lane) done(d *Delivery) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.doneLocked(d)
}

func (l *Lane) doneLocked(d *Delivery) {
	if l.held[d.Sequence()]--; l.held[d.Sequence()] <= 0 {
		delete(l.held, d.Sequence())
	}
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
// is told "" when every lane fetches, else every lane's trouble.
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
	whys := make([]string, 0, len(t.by))
	for _, w := range t.by {
		whys = append(whys, w)
	}
	slices.Sort(whys)
	t.report(strings.Join(whys, "; "))
}

// fetch pulls up to n messages and hands each to a handler (or gives it
// back, after ctx ended). It returns how many came and the last one's
// metadata; every place not filled is given back to the lane. An error
// means the pull failed, at its start or on its way.
func (l *Lane) fetch(ctx context.Context, n int, h Hooks, jobs chan<- *Delivery, log *zap.Logger) (got int, last *jetstream.MsgMetadata, err error) {
	batch, err := l.Consumer().Fetch(n, jetstream.FetchMaxWait(l.fetchWait))
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
		if bodiless(msg) && !l.servesBodies(ctx) {
			// A consumer made again under the lane's name, delivering
			// headers only: handed over, a valid revocation would read as
			// an invalid event and be dead-lettered away. It is not the
			// lane's; it is left to that consumer, and the lane binds its
			// own again (SPEC §4, "The proof", point 7).
			l.putRoom(1)
			l.Gone()
			continue
		}
		last = meta
		h.Pending(meta.NumPending)
		d := l.deliver(msg, meta)
		if ctx.Err() != nil {
			h.GiveBack(d)
			l.done(d)
			l.putRoom(1)
			continue
		}
		jobs <- d // never blocks: a place in hand was taken for it
	}
	l.putRoom(n - got)
	if err := batch.Error(); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, jetstream.ErrNoMessages) {
		return got, last, err
	}
	return got, last, nil
}

// bodiless reports whether msg came without its body, as a consumer that
// delivers headers only sends it: the server tells the body's size in a
// header of its own.
func bodiless(msg jetstream.Msg) bool {
	return len(msg.Data()) == 0 && msg.Headers().Get(nats.MsgSize) != ""
}

// servesBodies asks the server whether the lane's consumer is still the
// one bound, delivering bodies: a delivery without a body from it is a
// publisher's own message, with a header of that name, and is handed over.
func (l *Lane) servesBodies(ctx context.Context) bool {
	ictx, cancel := context.WithTimeout(ctx, consumerCheckTimeout)
	defer cancel()
	info, err := l.Consumer().Info(ictx)
	return err == nil && !info.Config.HeadersOnly && !l.MadeAgain(info)
}

func gone(err error) bool {
	return errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted)
}

// waitRoom takes every free place in hand, waiting until there is at least
// one; 0 means ctx ended first.
func (l *Lane) waitRoom(ctx context.Context) (n int, gone bool) {
	select {
	case <-l.room:
	case <-l.gone:
		return 0, true
	case <-ctx.Done():
		return 0, false
	}
	n = 1
	for n < l.minBatch {
		select {
		case <-l.room:
			n++
		case <-l.gone:
			l.putRoom(n)
			return 0, true
		case <-ctx.Done():
			l.putRoom(n)
			return 0, false
		}
	}
	for {
		select {
		case <-l.room:
			n++
		default:
			return n, false
		}
	}
}

// missing asks the server whether the lane's consumer is gone, or was
// replaced by one made again under its name: a binding made again
// needlessly would count the deliveries in hand as a lost consumer's. A
// consumer found as bound ends a suspicion (deliver), once it is known
// which of its deliveries can still be first.
func (l *Lane) missing(ctx context.Context) bool {
	ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	info, err := l.Consumer().Info(ictx)
	if err != nil {
		return errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound)
	}
	if l.MadeAgain(info) {
		return true // the one bound is gone
	}
	// The same consumer. If it numbered a delivery no higher than one
	// before, it was reset (its deliveries forgotten and numbered from 1
	// again), or came back with its server without its last deliveries
	// (one replica): its count no longer tells what it delivered before
	// from a first delivery, and only events stored from now on are
	// fresh. Until that is known, the suspicion stays, and no delivery is
	// first. Told it might be gone when nothing ran backwards (news older
	// than a rebinding), there is nothing to do.
	l.mu.Lock()
	suspect := l.suspect
	l.mu.Unlock()
	if !suspect || l.Stream == nil {
		return false
	}
	si, err := l.Stream.Info(ictx)
	if err != nil {
		return false
	}
	from := si.State.LastSeq
	l.mu.Lock()
	defer l.mu.Unlock()
	fresh := l.fresh
	l.fresh = func(m *jetstream.MsgMetadata) bool { return m.Sequence.Stream > from && fresh(m) }
	l.suspect = false
	return false
}

// Gone tells the lane its consumer was found missing; a lane waiting for
// room binds it again at once.
func (l *Lane) Gone() {
	select {
	case l.gone <- struct{}{}:
	default: // already told
	}
}

// release counts d, whose handler is done, out of hand, and frees its
// place (putRoom); it reports whether that handler is one more than the
// lane needs (handlersWanted), and so ends.
func (l *Lane) release(d *Delivery) (surplus bool) {
	l.mu.Lock()
	l.doneLocked(d)
	free := l.freeLocked(1)
	if surplus = l.handlers > l.handlersWanted(); surplus {
		l.handlers--
	}
	l.mu.Unlock()
	l.fill(free)
	return surplus
}

// handlersWanted is how many handlers the lane needs: one for each place
// (held by a delivery at work, or free, for the next one fetched), for
// each delivery aside, and for each place owed (a delivery back from
// aside, at work beyond the places). l.mu is held.
func (l *Lane) handlersWanted() int { return l.Capacity + l.aside + l.owed }

// putRoom frees n places: first paying the places owed, then for the
// next events to be fetched.
func (l *Lane) putRoom(n int) {
	l.mu.Lock()
	free := l.freeLocked(n)
	l.mu.Unlock()
	l.fill(free)
}

// freeLocked pays the places owed out of n freed, and returns how many are
// left free. l.mu is held.
func (l *Lane) freeLocked(n int) (free int) {
	pay := min(n, l.owed)
	l.owed -= pay
	return n - pay
}

// fill gives n free places to the next events to be fetched.
func (l *Lane) fill(n int) {
	for range n {
		l.room <- struct{}{}
	}
}

// Delivery is one delivery from a lane; it meets worker.Delivery. Its
// settles are final: after the first Ack, Term or GiveBack, KeepAlive
// sends nothing and another settle returns ErrSettled, so that no sign of
// life can reach the server after a give-back and reset its redelivery
// timer.
type Delivery struct {
	msg    jetstream.Msg
	meta   *jetstream.MsgMetadata
	stream jetstream.Stream // the work stream, asked whether it still holds the event

	priority, maxDeliver int
	ackWait              time.Duration
	delivered            int
	first                bool
	check                *consumerCheck // the look First waits for
	lane                 *Lane          // whose place it holds (Aside)

	// mu is held while anything is sent for the delivery, so a keep-alive
	// racing a settle goes out before it or not at all.
	mu      sync.Mutex
	settled bool
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

// Delivered counts deliveries of the event, this one included: the
// consumer's count, plus the deliveries this lane had of it from a
// consumer that was lost since (one made again counts from 1).
func (d *Delivery) Delivered() int { return d.delivered }

// First reports whether no delivery of the event can have come before
// this one: the consumer counts it the first, was made over a minute
// before the event was stored (or names a sequence it starts fresh from),
// and was still the one bound when the lane looked after the delivery came
// (a consumer made again, here or by another replica, counts from 1 what
// an older one delivered). It waits for that look: one server round trip
// at most, shared by the deliveries that came meanwhile.
func (d *Delivery) First() bool {
	if !d.first {
		return false
	}
	if d.check != nil {
		<-d.check.done
		return d.check.same
	}
	return true
}

// StoredAt is when the stream stored the event.
func (d *Delivery) StoredAt() time.Time { return d.meta.Timestamp }

// Header is the message header name, whatever its letter case (NATS
// headers keep the case they were sent in).
func (d *Delivery) Header(name string) string { return HeaderFold(d.msg.Headers(), name) }

// TraceHeader is the header name in every letter case at once, as the
// trace context is read wherever it comes in: spellings that disagree
// make a value no trace context parses.
func (d *Delivery) TraceHeader(name string) string {
	return tracing.HeaderGetter(d.msg.Headers())(name)
}

// HeaderFold is h's value of name in any letter case, as the worker reads
// a delivery's headers: name as given first, else the first spelling in
// byte order, so that every reader of one message reads the same value.
func HeaderFold(h nats.Header, name string) string {
	if v := h.Get(name); v != "" {
		return v
	}
	var key string
	for k, vs := range h {
		if len(vs) > 0 && strings.EqualFold(k, name) && (key == "" || k < key) {
			key = k
		}
	}
	if key == "" {
		return ""
	}
	return h[key][0]
}

// ReplayOf is the original event's id when this is a replayed dead letter.
func (d *Delivery) ReplayOf() string { return d.msg.Headers().Get(HeaderReplayOf) }

// Priority is the lane's priority, 0 the highest.
func (d *Delivery) Priority() int { return d.priority }

// MaxDeliver is the delivery on which a retryable failure is dead-lettered.
func (d *Delivery) MaxDeliver() int { return d.maxDeliver }

// AckWait is how long the consumer waits for a sign of life.
func (d *Delivery) AckWait() time.Duration { return d.ackWait }

// Ack removes the event from the work stream.
func (d *Delivery) Ack() error { return d.settle(d.msg.Ack) }

// Term ends the event's deliveries (after its dead-letter record).
func (d *Delivery) Term() error { return d.settle(d.msg.Term) }

// GiveBack returns the event for another delivery after delay.
func (d *Delivery) GiveBack(delay time.Duration) error {
	return d.settle(func() error { return d.msg.NakWithDelay(delay) })
}

// KeepAlive resets the consumer's ack timer for the event; once the
// delivery is settled it does nothing.
func (d *Delivery) KeepAlive() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.settled {
		return nil
	}
	return d.msg.InProgress()
}

// Aside gives the delivery's place in hand to the next event while it
// waits on something of its own, with a handler of its own, so that the
// events behind it are fetched and handled meanwhile: an urgent event
// waits for the calls in flight and the urgent events ahead, never for
// other events' waits (SPEC §3), and an account's, never for another
// budget's (§9). back takes a place again, at once: one free, or the next
// one freed.
//
// retrying says the wait is a failed call's backoff: while the API fails
// for every event, fetching more only makes them fail and spend their
// deliveries too. So at most as many retrying events are set aside as the
// lane has places; beyond, the delivery keeps its place (back does
// nothing). An event waiting for its own budget (its slot, its hold),
// whether or not it called before, is bounded only by the consumer's
// MaxAckPending: that wait is its budget's alone.
func (d *Delivery) Aside(retrying bool) (back func()) {
	l := d.lane
	if l == nil {
		return func() {}
	}
	l.mu.Lock()
	if retrying && l.retrying >= l.Capacity {
		l.mu.Unlock()
		return func() {}
	}
	l.aside++
	if retrying {
		l.retrying++
	}
	l.mu.Unlock()
	l.putRoom(1)
	l.mu.Lock()
	spawn := l.spawn
	if spawn != nil && l.handlers < l.handlersWanted() {
		l.handlers++
	} else {
		spawn = nil
	}
	l.mu.Unlock()
	if spawn != nil {
		spawn()
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.aside--
			if retrying {
				l.retrying--
			}
			select {
			case <-l.room:
			default:
				l.owed++
			}
		})
	}
}

// Held reports whether the work stream still holds the event, so that a
// later delivery will come: a work queue drops an event once a delivery
// acked or terminated it. The same sequence stored at another time is
// another event, of a stream made again.
func (d *Delivery) Held(ctx context.Context) (bool, error) {
	if d.stream == nil {
		return false, errors.New("the work stream is not known")
	}
	m, err := d.stream.GetMsg(ctx, d.meta.Sequence.Stream)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return false, nil
	case err != nil:
		return false, err
	}
	return m.Time.Equal(d.meta.Timestamp), nil
}

// settle sends the delivery's one settle. It counts as made even if
// sending failed: the event then comes back after its ack wait, and
// nothing more may be sent for this delivery.
func (d *Delivery) settle(send func() error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.settled {
		return ErrSettled
	}
	d.settled = true
	return send()
}
