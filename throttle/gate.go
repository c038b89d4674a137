// Package throttle decides when the next API call may start: it hands out
// permits in strict priority order, at most Concurrency at once, no faster
// than the rate limit, and none at all while the API has told us to hold.
// The rate, the holds and the priority can be shared with other replicas
// through a Budget.
package throttle

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// ErrClosed is returned by Acquire after Close.
var ErrClosed = errors.New("throttle: gate closed")

// MaxPause bounds any hold asked for by the API: Cloudflare blocks for up to
// five minutes after its limit is exceeded, so a longer hold is bogus.
const MaxPause = 5 * time.Minute

// SpacingMargin is the least added to the interval between permits. Calls
// reach the API a few milliseconds apart from when they were let go; the
// margin, accumulated over a second of calls, keeps a sliding-window
// counter on the API's side from ever seeing one call more than the rate.
const SpacingMargin = time.Millisecond

// WindowSlack is how much longer than a second N+1 consecutive permits at
// a rate of N a second take. Calls start a little after their slot (timer
// wake-up, the write that stores a call before it is made, scheduling, the
// HTTP client) and replicas' clocks differ a little; as long as the sum
// stays under the slack, a strict sliding window on the API's side never
// counts N+1. It costs 2% of the rate. Of it, StartTolerance goes to a
// call started late; the rest to the way to the API and clock skew.
const WindowSlack = 20 * time.Millisecond

// SlowHold: a Slow longer than this is a hold (shown, reported), not pacing.
// Our own pacing never spaces calls further apart than a second at any rate
// of one a second or more, so a longer wait is the API stopping us.
const SlowHold = time.Second

// SlotGrace is how late after its due time a slot reserved in a shared
// Budget may still be used; a later one is dropped. A call that starts late
// comes nearer the next sharer's call, which keeps to its own time: a
// budget's slack must cover this grace and the way from permit to API.
const SlotGrace = 10 * time.Millisecond

// StartTolerance is how long after its rate slot was due a call may
// start: a shared slot may be handed out SlotGrace late, and the call is
// made PairTolerance after that at most. A permit held longer before its
// call (the call's write-ahead was slow, say) is late: its slot is spent,
// and the call takes the next one (Permit.Late).
const StartTolerance = SlotGrace + PairTolerance

// Causes of holds, as reported to Config.OnHold.
const (
	CausePause      = "the API refused a call (429)"
	CauseRateHeader = "the API's rate-limit header says its budget is spent"
	CauseRetryAfter = "the API asked to be called again later (Retry-After on a %d)"
)

// Budget is a rate budget shared by every gate (every replica) that calls
// the API with the same credential: the start times of calls, the holds the
// API asks for, and which priorities have work waiting. Its methods are safe
// for concurrent use; none of them calls back into the Gate.
type Budget interface {
	// Reserve asks for the start time of one call of priority p (0 is the
	// highest). ok: a slot is reserved and the call may start at `at`, now
	// or a short lead ahead. !ok: nothing was reserved (a hold, a claim of a
	// higher priority elsewhere, or no slot due soon); ask again at `at`, or
	// sooner when Changed signals. An error means the budget could not be
	// asked and nothing was reserved.
	Reserve(ctx context.Context, p int) (at time.Time, ok bool, err error)
	// Rebook moves a slot reserved at `slot` that could not be used in
	// time to now, if no sharer has reserved a later slot meanwhile; !ok
	// means the slot is lost.
	Rebook(ctx context.Context, slot time.Time) (at time.Time, ok bool, err error)
	// GiveBack returns a slot reserved at `slot` that will not be used (a
	// higher priority appeared elsewhere, or the waiter left), so that a
	// sharer may take it, if no sharer has reserved a later slot meanwhile;
	// else the slot is lost.
	GiveBack(ctx context.Context, slot time.Time)
	// Allows reports, from what is known without asking, whether no other
	// sharer claims a priority higher than p.
	Allows(p int) bool
	// Free reports, from what is known without asking, whether a call of
	// priority p may start now with nothing to reserve: the budget sets
	// no rate, no hold is in force and no sharer claims a higher priority.
	// Such a permit is granted at once, not through the gate's loop.
	Free(p int) bool
	// Hold stops every sharer's calls until `until` for cause; it never
	// shortens a hold in force.
	Hold(until time.Time, cause string)
	// Defer moves the earliest start of any sharer's next call to until.
	Defer(until time.Time)
	// Follow spaces the calls this sharer reserves at rate r (calls per
	// second) where r is below the budget's rate, and at the budget's rate
	// where it is not: the API's stated quota (SPEC §6).
	Follow(r float64)
	// Spacing is the interval the budget keeps between calls now, as far
	// as known: a quota another sharer heard included.
	Spacing() time.Duration
	// Cap spaces the calls this sharer reserves at least spacing apart:
	// the budget's share of a limit several budgets share.
	Cap(spacing time.Duration)
	// Held is the hold in force as far as known; zero when none.
	Held() (until time.Time, cause string)
	// Claim states the highest priority with work waiting here, -1 for
	// none; while it stands no sharer reserves for a lower priority.
	Claim(p int)
	// Changed is signalled when news from sharers may change a decision.
	Changed() <-chan struct{}
}

// Unbounded is a Concurrency that bounds nothing: the gate of a rate
// budget paired with a shared gate that bounds the calls in flight
// (AcquirePair).
const Unbounded = 1 << 30

// Config sets up a Gate.
type Config struct {
	// Priorities is the number of priority levels; 0 is the highest.
	Priorities int
	// Concurrency is the number of permits that may be held at once (>= 1).
	Concurrency int
	// Rate is permits per second; 0 means no limit. Burst is 1: calls are
	// spaced evenly, never N at once. When Budget is set, the budget keeps
	// the rate, and Rate > 0 only says that it has one: permits then have
	// rate slots, and can be late (Permit.Late).
	Rate float64
	// Budget, when set, is shared with the other replicas using the same
	// credential; nil keeps rate and holds in this process.
	Budget Budget
	// Clock is the local clock, time.Now when nil. A Budget that shares the
	// rate must use the same one: the times they exchange are on it.
	Clock func() time.Time
	// OnPause is called with true when a hold starts and false when it
	// ends. It is called from one goroutine, in order, with no lock held.
	OnPause func(paused bool)
	// OnHold is called when a hold starts, or is lengthened by more than
	// SlowHold, with its length from now and its cause: once per hold, not
	// once per answer that asks for it. Same calling rules as OnPause.
	OnHold func(length time.Duration, cause string)
}

// Gate hands out permits to start an API call. A waiter of priority p is
// served only when no waiter of a higher priority is queued, no higher
// level reports pending work (see SetPending), and, with a Budget, no other
// replica claims a higher priority.
type Gate struct {
	cfg     Config
	limiter *rate.Limiter
	budget  Budget
	ctx     context.Context // ends at Close: bounds calls to the budget
	cancel  context.CancelFunc

	mu        sync.Mutex
	queues    [][]*waiter
	pending   []bool // a level knows of work not yet queued (messages in the stream)
	free      int
	holdEnd   time.Time // a hold the API asked for, seen here
	holdCause string
	notEarly  time.Time // set by a short Slow: no permit before this instant
	closed    bool

	// followed is the spacing of permits a stated quota asked for
	// (Follow), 0 before any; capped the spacing of a share of a limit
	// (Cap), 0 for none.
	followed, capped atomic.Int64

	wake chan struct{}
	done chan struct{}
	stop sync.Once
	// queued, when someone listens (queuedSignal), is closed when a call next
	// queues here: a call holding this gate's permit idle learns that it
	// may be wanted (AcquirePair).
	queued chan struct{}
}

type waiter struct {
	ch      chan struct{}
	granted bool
	due     time.Time // the granted permit's rate slot
	first   bool      // it came back for a permit it lost (Reacquire)
	order   uint64    // its place among the waiters of its level (InOrder); 0: none
}

type orderKey struct{}

// InOrder marks the acquires made with ctx as those of the event stored
// at order (a stream sequence, from 1): among the waiters of one
// priority, an event stored earlier is served first, whatever the order in
// which the events' goroutines came to the gate (SPEC §3: an urgent
// event's first call waits for the urgent events ahead of it, not for
// those behind it that happened to be quicker). Acquires without an order
// keep the order they came in.
func InOrder(ctx context.Context, order uint64) context.Context {
	return context.WithValue(ctx, orderKey{}, order)
}

func orderOf(ctx context.Context) uint64 {
	o, _ := ctx.Value(orderKey{}).(uint64)
	return o
}

// Permit is held for the duration of one API call.
type Permit struct {
	g    *Gate
	due  time.Time // when its rate slot was due; zero without a rate
	once sync.Once
}

// Late reports whether the call may no longer start on this permit: its
// rate slot was due more than StartTolerance ago, so a call started now
// could come within a second of the rate's next calls. Release it and take
// another. A permit of a gate without a rate is never late.
func (p *Permit) Late() bool {
	return !p.due.IsZero() && p.g.cfg.Clock().Sub(p.due) > StartTolerance
}

// Release returns the permit's concurrency slot. It is safe to call twice.
func (p *Permit) Release() {
	p.once.Do(func() {
		g := p.g
		g.mu.Lock()
		g.free++
		handed, emptied := g.handOn()
		g.mu.Unlock()
		if !handed || emptied {
			g.poke()
		}
	})
}

// New starts a Gate; Close stops it.
func New(cfg Config) *Gate {
	if cfg.Priorities < 1 {
		cfg.Priorities = 1
	}
	if cfg.Concurrency < 1 {
		cfg.Concurrency = 1
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	g := &Gate{
		cfg:     cfg,
		budget:  cfg.Budget,
		queues:  make([][]*waiter, cfg.Priorities),
		pending: make([]bool, cfg.Priorities),
		free:    cfg.Concurrency,
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	if cfg.Rate > 0 && g.budget == nil {
		g.limiter = rate.NewLimiter(rate.Every(Interval(cfg.Rate)), 1)
	}
	go g.loop()
	return g
}

// Interval is the spacing of permits at rate r (r > 0): N+1 permits at
// rate N take a second and WindowSlack, and never less than a second and
// SpacingMargin per permit. A rate of one or more with a fraction (a
// budget's cut of the address limit, a quota per five minutes) is spaced
// as its whole part: spaced at 1/r, 3.33/s would start 4 calls in 918 ms,
// and budgets cut to fit the address limit would together pass it (SPEC
// §9: at most that many calls in any one-second window).
func Interval(r float64) time.Duration {
	if r >= 1 {
		r = math.Floor(r)
	}
	if float64(time.Second+WindowSlack)/r >= float64(maxInterval) {
		return maxInterval // where the division would overflow a Duration
	}
	return max(time.Duration(float64(time.Second+WindowSlack)/r), time.Duration(float64(time.Second)/r)+SpacingMargin)
}

// MinRate is the smallest positive rate a configuration may set: one call
// an hour. Below it a rate is a mistake, not a limit.
const MinRate = 1.0 / 3600

// maxInterval is the longest spacing Interval gives: a rate too small to
// space is no call at all, never no limit.
const maxInterval = time.Duration(math.MaxInt64 / 4)

// QuotaInterval is Interval(r) for a rate an answer states, never longer
// than MaxPause: nothing an answer says stops calls for longer (SPEC §4).
func QuotaInterval(r float64) time.Duration {
	if float64(time.Second+WindowSlack)/r >= float64(MaxPause) {
		return MaxPause // also where the division would overflow a Duration
	}
	return min(Interval(r), MaxPause)
}

// Close stops the gate; waiting and later Acquire calls return ErrClosed.
func (g *Gate) Close() {
	g.stop.Do(func() {
		g.mu.Lock()
		g.closed = true
		for _, q := range g.queues {
			for _, w := range q {
				close(w.ch)
			}
		}
		g.queues = make([][]*waiter, g.cfg.Priorities)
		g.mu.Unlock()
		g.cancel()
		close(g.done)
	})
}

// Acquire waits for a permit at priority p (0 is the highest). The wait ends
// early with ctx's error or ErrClosed.
func (g *Gate) Acquire(ctx context.Context, p int) (*Permit, error) {
	return g.acquire(ctx, p, false, nil)
}

// Reacquire is Acquire for a call that held a permit and lost it (Late):
// it waits first in line at priority p, so the call keeps its place.
func (g *Gate) Reacquire(ctx context.Context, p int) (*Permit, error) {
	return g.acquire(ctx, p, true, nil)
}

// Aside is told by an acquire that it must wait, before it waits; what it
// returns, once the wait is over (AcquirePairAside).
type Aside func() (back func())

func (g *Gate) acquire(ctx context.Context, p int, first bool, aside Aside) (*Permit, error) {
	if err := ctx.Err(); err != nil {
		return nil, err // at shutdown, no new call starts
	}
	p = g.clamp(p)
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil, ErrClosed
	}
	if due, ok := g.grantNow(p); ok {
		g.mu.Unlock()
		return &Permit{g: g, due: due}, nil
	}
	w := &waiter{ch: make(chan struct{}), order: orderOf(ctx)}
	q := g.queues[p]
	if first {
		// Ahead of every waiter but those that came back first before it.
		w.first = true
		i := 0
		for i < len(q) && q[i].first {
			i++
		}
		g.queues[p] = slices.Insert(q, i, w)
	} else {
		// Behind every waiter but those with an order later than its own
		// that came after the last one without.
		i := len(q)
		for w.order != 0 && i > 0 && !q[i-1].first && q[i-1].order > w.order {
			i--
		}
		g.queues[p] = slices.Insert(q, i, w)
	}
	if g.queued != nil {
		close(g.queued)
		g.queued = nil
	}
	g.mu.Unlock()
	g.poke()

	if aside != nil {
		defer aside()()
	}
	select {
	case <-w.ch:
	case <-ctx.Done():
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if w.granted {
		return &Permit{g: g, due: w.due}, nil
	}
	g.remove(p, w)
	if g.closed {
		return nil, ErrClosed
	}
	return nil, ctx.Err()
}

// grantNow takes a permit at once when nobody of equal or higher priority
// is queued or pending and nothing holds permits back: the common case,
// without a round trip through the loop. g.mu is held.
func (g *Gate) grantNow(p int) (due time.Time, ok bool) {
	for q := 0; q <= p; q++ {
		if len(g.queues[q]) > 0 || (q < p && g.pending[q]) {
			return time.Time{}, false
		}
	}
	return g.mayGrant(p)
}

// handOn gives a permit just released to the waiter the loop would serve
// next, when nothing holds it back, sparing the loop's round trip; emptied
// says a level above the lowest has no waiter left, which the loop must
// hear of for its claim. g.mu is held.
func (g *Gate) handOn() (handed, emptied bool) {
	p := g.next()
	if p < 0 || g.closed {
		return false, false
	}
	due, ok := g.mayGrant(p)
	if !ok {
		return false, false
	}
	w := g.queues[p][0]
	g.queues[p] = g.queues[p][1:]
	w.granted, w.due = true, due
	close(w.ch)
	return true, len(g.queues[p]) == 0 && p < len(g.queues)-1
}

// mayGrant takes a permit of level p if nothing holds it back: a free
// slot, no hold or pacing, a local rate token. A shared budget with a rate
// is only asked from the loop, so with one every permit goes through it;
// one without a rate is asked what it knows. due is the local rate
// token's time, zero without one. g.mu is held.
func (g *Gate) mayGrant(p int) (due time.Time, ok bool) {
	if g.free == 0 || g.budget != nil && !g.budget.Free(p) {
		return time.Time{}, false
	}
	now := g.cfg.Clock()
	if now.Before(g.holdEnd) || now.Before(g.notEarly) {
		return time.Time{}, false
	}
	if g.limiter != nil {
		if !g.limiter.AllowN(now, 1) {
			return time.Time{}, false
		}
		due = now
	}
	g.free--
	return due, true
}

// SetPending tells the gate whether priority level p knows of work that is
// waiting but not yet queued here (messages still in the stream). While it
// does, lower levels get no permit, so an urgent event on its way from the
// stream is not overtaken.
func (g *Gate) SetPending(p int, pending bool) {
	p = g.clamp(p)
	g.mu.Lock()
	changed := g.pending[p] != pending
	g.pending[p] = pending
	g.mu.Unlock()
	if changed {
		g.poke()
	}
}

// Pause holds every permit for d (capped at MaxPause), as Cloudflare refuses
// every call of the credential after a 429; with a Budget, every replica's
// permits. A shorter pause never cuts a longer one that is already running.
func (g *Gate) Pause(d time.Duration) {
	g.Hold(d, CausePause)
}

// Hold is Pause for a hold the API asked for other than by refusing a
// call: cause says why, for the log line.
func (g *Gate) Hold(d time.Duration, cause string) {
	if d <= 0 {
		return
	}
	g.hold(g.cfg.Clock(), d, cause)
}

// Slow delays the next permit until at least `until`: used when the API says
// its budget is nearly spent, to slow down before it refuses calls. A delay
// longer than SlowHold is a hold like Pause's (capped at MaxPause, shown
// through OnPause and reported through OnHold); a shorter one only paces.
func (g *Gate) Slow(until time.Time) {
	now := g.cfg.Clock()
	d := until.Sub(now)
	if d > SlowHold {
		g.hold(now, d, CauseRateHeader)
		return
	}
	g.mu.Lock()
	if until.After(g.notEarly) {
		g.notEarly = until
	}
	g.mu.Unlock()
	if g.budget != nil {
		g.budget.Defer(until)
	}
	g.poke()
}

// pairWait is how long a call holding a shared slot waits for this
// gate's next permit (AcquirePair): one interval of its rate, as it is
// now, and the tolerance of a start.
func (g *Gate) pairWait() time.Duration {
	spacing := g.spacing()
	if g.budget != nil {
		spacing = max(spacing, g.budget.Spacing())
	}
	return spacing + StartTolerance
}

// queuedSignal is closed when a call next queues here.
func (g *Gate) queuedSignal() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.queued == nil {
		g.queued = make(chan struct{})
	}
	return g.queued
}

// yields reports whether a call of priority p waiting here should let go
// of what it holds meanwhile (AcquirePair): the gate is held, or a call of
// a higher priority waits for it, here or, with a shared budget, on
// another replica.
func (g *Gate) yields(p int) bool {
	if g.PausedFor() > 0 {
		return true
	}
	p = g.clamp(p)
	g.mu.Lock()
	for q := 0; q < p; q++ {
		if len(g.queues[q]) > 0 || g.pending[q] {
			g.mu.Unlock()
			return true
		}
	}
	g.mu.Unlock()
	return g.budget != nil && !g.budget.Allows(p)
}

// spacing is the interval between permits this gate keeps: its rate's, or
// a stated quota's or a share's where longer.
func (g *Gate) spacing() time.Duration {
	return max(Interval(g.cfg.Rate), time.Duration(g.followed.Load()), time.Duration(g.capped.Load()))
}

// Cap spaces permits at rate r (calls per second) at most, from the next
// permit on, where r is below the gate's rate, and at the gate's rate
// where it is not: a budget's rate, cut to its share of a limit several
// budgets share, and set again, higher or lower, when the budgets change.
// It reports false for a gate without a rate.
func (g *Gate) Cap(r float64) bool {
	if g.cfg.Rate <= 0 || r <= 0 {
		return false
	}
	capped := max(Interval(g.cfg.Rate), Interval(r))
	g.capped.Store(int64(capped))
	g.respace(func(b Budget) { b.Cap(capped) })
	return true
}

// respace applies a new spacing from the next permit on: the shared
// budget is told by tell, the gate's own limiter takes the longest of its
// rate's, the quota's and the share's.
func (g *Gate) respace(tell func(Budget)) {
	if g.budget != nil {
		tell(g.budget)
	} else {
		g.limiter.SetLimit(rate.Every(g.spacing()))
	}
	g.poke()
}

// Follow spaces permits at the API's stated quota q (calls per second)
// where it is below the gate's rate, and at the gate's rate where it is
// not, from the next permit on; never further apart than MaxPause. It
// reports false for a gate without a rate, which has no spacing to
// follow with: its caller paces with Slow instead.
func (g *Gate) Follow(q float64) bool {
	if g.cfg.Rate <= 0 || q <= 0 {
		return false
	}
	g.followed.Store(int64(max(Interval(g.cfg.Rate), QuotaInterval(q))))
	g.respace(func(b Budget) { b.Follow(q) })
	return true
}

// Quota follows the quota q (calls per second) an answer states
// (Ratelimit-Policy): the gate's rate is lowered to it (Follow), or, for a
// gate without a rate, its next permit waits one interval of it. It
// reports whether q spaces calls further apart than the gate's rate, as
// capped, would, or the gate has none: the quota then spaces calls.
func (g *Gate) Quota(q float64) bool {
	if q <= 0 {
		return false
	}
	if !g.Follow(q) {
		g.Slow(g.cfg.Clock().Add(QuotaInterval(q)))
		return true
	}
	return QuotaInterval(q) > max(Interval(g.cfg.Rate), time.Duration(g.capped.Load()))
}

func (g *Gate) hold(now time.Time, d time.Duration, cause string) {
	if d > MaxPause {
		cause = fmt.Sprintf("%s (asked for %v, capped at %v)", cause, d.Round(time.Second), MaxPause)
		d = MaxPause
	}
	end := now.Add(d)
	g.mu.Lock()
	if end.After(g.holdEnd) {
		g.holdEnd, g.holdCause = end, cause
	}
	g.mu.Unlock()
	if g.budget != nil {
		g.budget.Hold(end, cause)
	}
	g.poke()
}

// PausedFor reports how much of the current hold is left, wherever it was
// asked for.
func (g *Gate) PausedFor() time.Duration {
	end, _ := g.holdInForce()
	return max(0, end.Sub(g.cfg.Clock()))
}

// holdInForce is the later of this gate's hold and the budget's.
func (g *Gate) holdInForce() (time.Time, string) {
	var bEnd time.Time
	var bCause string
	if g.budget != nil {
		bEnd, bCause = g.budget.Held()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if bEnd.After(g.holdEnd) {
		return bEnd, bCause
	}
	return g.holdEnd, g.holdCause
}

func (g *Gate) clamp(p int) int {
	return min(max(p, 0), g.cfg.Priorities-1)
}

func (g *Gate) poke() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

func (g *Gate) remove(p int, w *waiter) {
	q := g.queues[p]
	for i, x := range q {
		if x == w {
			g.queues[p] = append(q[:i], q[i+1:]...)
			return
		}
	}
}

// next returns the level to serve, or -1. A level is served only when every
// higher level is idle: nothing queued and nothing pending.
func (g *Gate) next() int {
	for p, q := range g.queues {
		if len(q) > 0 {
			return p
		}
		if g.pending[p] {
			return -1
		}
	}
	return -1
}

// claim is the level this gate claims from the other sharers: the highest
// with work queued or pending, unless it is the lowest (which holds back
// nobody), else -1.
func (g *Gate) claim() int {
	for p, q := range g.queues {
		if len(q) > 0 || g.pending[p] {
			if p == len(g.queues)-1 {
				return -1
			}
			return p
		}
	}
	return -1
}

// Waits after the budget could not be asked: short at first, then longer,
// never giving up (and never granting without it).
const (
	budgetRetryMin = 50 * time.Millisecond
	budgetRetryMax = 2 * time.Second
)

// loop is the only place permits are granted, so the priority decision is
// made at the instant a permit is free, not when a waiter arrived.
func (g *Gate) loop() {
	var (
		timer *time.Timer
		// res is the local rate token we are waiting for, due at resDue.
		// Keeping it, rather than asking again after the wait, keeps
		// permits on the limiter's exact schedule: a late wake-up does
		// not push every later permit back (the permit is late instead).
		res    *rate.Reservation
		resDue time.Time
		// slot is the start time reserved in the shared budget; zero
		// when none.
		slot time.Time
		// retry is the wait after the budget could not be asked.
		retry = budgetRetryMin
		// paused and reported are what OnPause and OnHold were last told.
		paused   bool
		reported time.Time
		claimed  = -1
		changed  <-chan struct{}
	)
	if g.budget != nil {
		changed = g.budget.Changed()
	}
	for {
		holdEnd, cause := g.holdInForce()
		g.mu.Lock()
		now := g.cfg.Clock()
		var hold time.Duration
		switch {
		case now.Before(holdEnd):
			hold = holdEnd.Sub(now)
		case now.Before(g.notEarly):
			hold = g.notEarly.Sub(now)
		}
		level := g.next()
		ready := g.free > 0 && level >= 0
		claim := g.claim()
		g.mu.Unlock()

		// Callbacks run here, outside the lock, so they may call the gate.
		isPaused := now.Before(holdEnd)
		if isPaused && (!paused || holdEnd.Sub(reported) > SlowHold) {
			reported = holdEnd
			if g.cfg.OnHold != nil {
				g.cfg.OnHold(holdEnd.Sub(now), cause)
			}
		}
		if isPaused != paused {
			paused = isPaused
			if g.cfg.OnPause != nil {
				g.cfg.OnPause(paused)
			}
		}
		if g.budget != nil && claim != claimed {
			claimed = claim
			g.budget.Claim(claim)
		}

		if res != nil && (!ready || hold > 0) {
			res.Cancel() // nobody to use it, or a hold: give it back
			res = nil
		}
		if !slot.IsZero() && (hold > 0 || !ready && !now.Before(slot)) {
			// A slot may not be used late on purpose: the next sharer's
			// call starts one interval after it was due. Dropping it
			// wastes one call of the budget, never exceeds it; with
			// nobody here to use it, another sharer may.
			if hold == 0 {
				g.budget.GiveBack(g.ctx, slot)
			}
			slot = time.Time{}
		}
		if ready && hold == 0 && g.limiter != nil {
			// The waiter is chosen only when the token is due, so the
			// choice includes everyone who arrived meanwhile.
			if res == nil {
				res = g.limiter.ReserveN(now, 1)
				resDue = now.Add(res.DelayFrom(now))
			}
			hold = res.DelayFrom(g.cfg.Clock())
		}
		if ready && hold == 0 && g.budget != nil {
			if slot.IsZero() {
				at, ok, err := g.budget.Reserve(g.ctx, level)
				switch {
				case err != nil:
					hold = retry
					retry = min(2*retry, budgetRetryMax)
				case ok:
					slot, retry = at, budgetRetryMin
				default:
					// Asked again within MaxPause whatever it says: no
					// answer of a budget stops the gate for longer.
					hold = min(max(at.Sub(g.cfg.Clock()), time.Millisecond), MaxPause)
					retry = budgetRetryMin
				}
			}
			if !slot.IsZero() {
				hold = max(0, slot.Sub(g.cfg.Clock()))
			}
		}
		if !ready && !slot.IsZero() {
			hold = max(time.Millisecond, slot.Sub(g.cfg.Clock())) // to drop it when due
		}
		if ready && hold == 0 && !slot.IsZero() && g.cfg.Clock().Sub(slot) > SlotGrace {
			// Reserved too late, or woken too late, to be used safely: the
			// next sharer's call keeps to its time. Move the slot to now if
			// nobody reserved after it; else one call of the budget is
			// lost, none is taken twice.
			at, ok, err := g.budget.Rebook(g.ctx, slot)
			slot = time.Time{}
			if err == nil && ok {
				slot = at
			}
			continue
		}
		if ready && hold == 0 {
			var due time.Time // only a rate's slot can be late
			switch {
			case res != nil:
				due = resDue
			case g.cfg.Rate > 0:
				due = slot
			}
			if !g.grant(due) {
				if res != nil {
					res.Cancel()
				}
				if !slot.IsZero() {
					// Unused: a sharer may take it now, the one whose
					// higher priority made this gate yield first.
					g.budget.GiveBack(g.ctx, slot)
				}
			}
			res, slot = nil, time.Time{}
			continue
		}
		var tick <-chan time.Time
		if hold > 0 {
			if timer == nil {
				timer = time.NewTimer(hold)
			} else {
				timer.Reset(hold)
			}
			tick = timer.C
		}
		select {
		case <-g.done:
			if paused && g.cfg.OnPause != nil {
				g.cfg.OnPause(false) // a closed gate holds nothing
			}
			return
		case <-g.wake:
		case <-changed:
		case <-tick:
		}
		if timer != nil && !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// grant gives a permit to the first waiter of the level to serve; false if
// there was none after all, or if, with a Budget, another sharer now claims
// a higher level: a slot reserved before that claim was known yields to it
// rather than start a lower-priority call ahead of it. due is the permit's
// rate slot, zero without a rate.
func (g *Gate) grant(due time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	// Re-check under the lock: a waiter may have left since.
	p := g.next()
	if p < 0 || g.free == 0 || g.closed {
		return false
	}
	if g.budget != nil && !g.budget.Allows(p) {
		return false
	}
	w := g.queues[p][0]
	g.queues[p] = g.queues[p][1:]
	w.granted, w.due = true, due
	g.free--
	close(w.ch)
	return true
}

// Queued reports how many waiters priority p has.
func (g *Gate) Queued(p int) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.queues[g.clamp(p)])
}
