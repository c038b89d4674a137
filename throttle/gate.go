// Package throttle decides when the next API call may start: it hands out
// permits in strict priority order, at most Concurrency at once, no faster
// than the rate limit, and none at all while the API has told us to pause.
package throttle

import (
	"context"
	"errors"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// ErrClosed is returned by Acquire after Close.
var ErrClosed = errors.New("throttle: gate closed")

// MaxPause bounds a pause asked for by the API: Cloudflare blocks for up to
// five minutes after its limit is exceeded, so a longer Retry-After is bogus.
const MaxPause = 5 * time.Minute

// SpacingMargin is added to the interval between permits. Calls reach the
// API a few milliseconds apart from when they were let go; the margin,
// accumulated over a second of calls, keeps a sliding-window counter on the
// API's side from ever seeing one call more than the rate.
const SpacingMargin = time.Millisecond

// Config sets up a Gate.
type Config struct {
	// Priorities is the number of priority levels; 0 is the highest.
	Priorities int
	// Concurrency is the number of permits that may be held at once (>= 1).
	Concurrency int
	// Rate is permits per second; 0 means no limit. Burst is 1: calls are
	// spaced evenly, never N at once.
	Rate float64
	// OnPause is called with true when a pause starts and false when it ends.
	OnPause func(paused bool)
}

// Gate hands out permits to start an API call. A waiter of priority p is
// served only when no waiter of a higher priority is queued and no higher
// level reports pending work (see SetPending).
type Gate struct {
	cfg     Config
	limiter *rate.Limiter

	mu       sync.Mutex
	queues   [][]*waiter
	pending  []bool // a level knows of work not yet queued (messages in the stream)
	free     int
	pauseEnd time.Time
	notEarly time.Time // set by Slow: no permit before this instant
	paused   bool
	closed   bool

	wake chan struct{}
	done chan struct{}
	stop sync.Once
}

type waiter struct {
	ch      chan struct{}
	granted bool
}

// Permit is held for the duration of one API call.
type Permit struct {
	g    *Gate
	once sync.Once
}

// Release returns the permit's concurrency slot. It is safe to call twice.
func (p *Permit) Release() {
	p.once.Do(func() {
		p.g.mu.Lock()
		p.g.free++
		p.g.mu.Unlock()
		p.g.poke()
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
	g := &Gate{
		cfg:     cfg,
		queues:  make([][]*waiter, cfg.Priorities),
		pending: make([]bool, cfg.Priorities),
		free:    cfg.Concurrency,
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	if cfg.Rate > 0 {
		interval := time.Duration(float64(time.Second)/cfg.Rate) + SpacingMargin
		g.limiter = rate.NewLimiter(rate.Every(interval), 1)
	}
	go g.loop()
	return g
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
		close(g.done)
	})
}

// Acquire waits for a permit at priority p (0 is the highest). The wait ends
// early with ctx's error or ErrClosed.
func (g *Gate) Acquire(ctx context.Context, p int) (*Permit, error) {
	if err := ctx.Err(); err != nil {
		return nil, err // at shutdown, no new call starts
	}
	p = g.clamp(p)
	w := &waiter{ch: make(chan struct{})}
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil, ErrClosed
	}
	if g.grantNow(p) {
		g.mu.Unlock()
		return &Permit{g: g}, nil
	}
	g.queues[p] = append(g.queues[p], w)
	g.mu.Unlock()
	g.poke()

	select {
	case <-w.ch:
	case <-ctx.Done():
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if w.granted {
		return &Permit{g: g}, nil
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
func (g *Gate) grantNow(p int) bool {
	if g.free == 0 {
		return false
	}
	for q := 0; q <= p; q++ {
		if len(g.queues[q]) > 0 || (q < p && g.pending[q]) {
			return false
		}
	}
	now := time.Now()
	if now.Before(g.pauseEnd) || now.Before(g.notEarly) {
		return false
	}
	if g.limiter != nil && !g.limiter.AllowN(now, 1) {
		return false
	}
	g.free--
	return true
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
// every call of the account after a 429. A shorter pause never cuts a longer
// one that is already running.
func (g *Gate) Pause(d time.Duration) {
	if d <= 0 {
		return
	}
	d = min(d, MaxPause)
	end := time.Now().Add(d)
	g.mu.Lock()
	if end.After(g.pauseEnd) {
		g.pauseEnd = end
	}
	g.mu.Unlock()
	g.poke()
}

// Slow delays the next permit until at least `until`: used when the API says
// its budget is nearly spent, to slow down before it refuses calls.
func (g *Gate) Slow(until time.Time) {
	g.mu.Lock()
	if until.After(g.notEarly) {
		g.notEarly = until
	}
	g.mu.Unlock()
	g.poke()
}

// PausedFor reports how much of the current pause is left.
func (g *Gate) PausedFor() time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	return max(0, time.Until(g.pauseEnd))
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

// loop is the only place permits are granted, so the priority decision is
// made at the instant a permit is free, not when a waiter arrived.
func (g *Gate) loop() {
	var (
		timer *time.Timer
		// res is the rate token we are waiting for. Keeping it, rather than
		// asking again after the wait, keeps permits on the limiter's exact
		// schedule: a late wake-up does not push every later permit back.
		res *rate.Reservation
	)
	for {
		g.mu.Lock()
		now := time.Now()
		var hold time.Duration
		switch {
		case now.Before(g.pauseEnd):
			hold = g.pauseEnd.Sub(now)
		case now.Before(g.notEarly):
			hold = g.notEarly.Sub(now)
		}
		g.setPaused(now.Before(g.pauseEnd))
		ready := g.free > 0 && g.next() >= 0
		g.mu.Unlock()

		if res != nil && (!ready || hold > 0) {
			res.Cancel() // nobody to use it, or a pause: give it back
			res = nil
		}
		if ready && hold == 0 && g.limiter != nil {
			// The waiter is chosen only when the token is due, so the
			// choice includes everyone who arrived meanwhile.
			if res == nil {
				res = g.limiter.ReserveN(now, 1)
			}
			hold = res.DelayFrom(time.Now())
		}
		if ready && hold == 0 {
			if !g.grant() && res != nil {
				res.Cancel()
			}
			res = nil
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
			return
		case <-g.wake:
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
// there was none after all.
func (g *Gate) grant() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	// Re-check under the lock: a waiter may have left since.
	p := g.next()
	if p < 0 || g.free == 0 || g.closed {
		return false
	}
	w := g.queues[p][0]
	g.queues[p] = g.queues[p][1:]
	w.granted = true
	g.free--
	close(w.ch)
	return true
}

func (g *Gate) setPaused(paused bool) {
	if paused == g.paused {
		return
	}
	g.paused = paused
	if g.cfg.OnPause != nil {
		g.cfg.OnPause(paused)
	}
}

// Queued reports how many waiters priority p has.
func (g *Gate) Queued(p int) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.queues[g.clamp(p)])
}
