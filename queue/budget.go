package queue

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/throttle"
)

// BudgetBucket is the key-value bucket holding the API rate budget of each
// credential, shared by every replica that uses it (SPEC §9): one entry per
// credential, keyed by the credential's short hash, never the credential.
const BudgetBucket = "revoker_budget"

// WindowSlack is how much longer than a second N+1 consecutive calls at a
// rate of N a second take. Calls reach the API a little after their slot
// (timer wake-up, scheduling, the HTTP client) and replicas' clocks differ
// a little; as long as the sum stays under the slack, a strict sliding
// window on the API's side never counts N+1. It costs 2% of the rate. Of
// it, throttle.SlotGrace goes to a slot used a little late; the rest to the
// way from permit to API and clock skew.
const WindowSlack = 20 * time.Millisecond

// Timing of the shared budget.
const (
	// budgetLead: a slot is reserved at most this long before it is due,
	// so that the reservation's round trip does not make the call late,
	// and an urgent event arriving later waits behind one reserved slot at
	// most, not behind a schedule. It is at most half the interval (see
	// lead), or the replica that just took a slot would find the next one
	// already due and take it too, before the others wake: it would keep
	// every slot while another replica starves.
	budgetLead = 50 * time.Millisecond
	// claimTTL: a replica's claim of a priority lapses this long after it
	// was last written, so a replica that dies holds nobody back for long.
	claimTTL     = 3 * time.Second
	claimRefresh = claimTTL / 3
	// budgetOpTimeout bounds one request to the bucket.
	budgetOpTimeout = 2 * time.Second
	// casTries bounds conflicts met by one reservation before it waits.
	casTries = 4
)

// BudgetConfig sets up a Budget.
type BudgetConfig struct {
	// ID names the credential: a short hash of it, never the credential.
	// It is read at every reservation, so that a rotated token moves to
	// the budget of the new token.
	ID func() string
	// Rate is calls per second for the credential, 0 for no limit (holds
	// and priority claims are shared all the same).
	Rate float64
	// Replicas of the bucket when this creates it (1 when 0).
	Replicas int
	// Create allows creating the bucket when it is missing.
	Create bool
	// Log receives the budget's trouble, each distinct cause once.
	Log *zap.Logger
}

// BudgetStats counts a Budget's traffic with JetStream.
type BudgetStats struct {
	Reserved  uint64 // slots reserved
	Rebooked  uint64 // slots used late moved to their actual start
	Writes    uint64 // compare-and-swap writes sent, conflicts included
	Conflicts uint64 // writes refused because another replica wrote first
	Reads     uint64 // entries read after a conflict
	Watched   uint64 // entries received from the watch
}

// budgetState is the shared entry of one credential.
type budgetState struct {
	// Next is the earliest start of the next call of any replica.
	Next time.Time `json:"next,omitzero"`
	// Hold stops every call until then; Cause says why.
	Hold  time.Time `json:"hold,omitzero"`
	Cause string    `json:"cause,omitempty"`
	// Claims are, per replica, the highest priority with work waiting.
	Claims map[string]budgetClaim `json:"claims,omitempty"`
}

type budgetClaim struct {
	P     int       `json:"p"`
	Until time.Time `json:"until"`
}

type cachedState struct {
	st  budgetState
	rev uint64 // 0: no entry yet
}

// Budget is the throttle.Budget kept in a JetStream key-value bucket. A
// replica reserves the start of its next call by compare-and-swap on the
// credential's entry, only when the slot is due within its lead; a watch
// keeps its copy of the entry current, so conflicts stay rare. Whenever it
// cannot tell (the bucket unreachable, a write unanswered), it reserves
// nothing: calls wait, never overshoot.
type Budget struct {
	js       jetstream.JetStream
	cfg      BudgetConfig
	log      *zap.Logger
	interval time.Duration // 0: no limit
	owner    string        // this replica, in claims

	bindMu sync.Mutex
	kv     atomic.Pointer[jetstream.KeyValue]

	mu      sync.Mutex
	cache   map[string]cachedState
	claim   int       // the level this replica claims, -1 none
	hold    time.Time // a hold to publish
	cause   string
	deferTo time.Time // a Defer to publish
	trouble string    // last trouble logged, "" when none

	changed chan struct{}
	kick    chan struct{}
	stop    chan struct{}
	done    chan struct{}
	close   sync.Once

	stats struct{ reserved, rebooked, writes, conflicts, reads, watched atomic.Uint64 }
}

var _ throttle.Budget = (*Budget)(nil)

// NewBudget starts a budget on js; Close stops it. It does no I/O itself:
// the bucket is bound (and created when allowed) in the background and at
// the first reservation, and retried while JetStream is away.
func NewBudget(js jetstream.JetStream, cfg BudgetConfig) (*Budget, error) {
	if cfg.ID == nil {
		return nil, errors.New("budget: no credential id")
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Replicas < 1 {
		cfg.Replicas = 1
	}
	var id [8]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("budget: owner id: %w", err)
	}
	b := &Budget{
		js:       js,
		cfg:      cfg,
		log:      cfg.Log.With(zap.String("bucket", BudgetBucket)),
		interval: BudgetInterval(cfg.Rate),
		owner:    hex.EncodeToString(id[:]),
		cache:    map[string]cachedState{},
		claim:    -1,
		changed:  make(chan struct{}, 1),
		kick:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	go b.run()
	return b, nil
}

// BudgetInterval is the spacing of calls shared at rate r, 0 for no limit:
// N+1 calls at rate N take a second and WindowSlack, and never less than
// one process's own spacing.
func BudgetInterval(r float64) time.Duration {
	if r <= 0 {
		return 0
	}
	return max(time.Duration(float64(time.Second+WindowSlack)/r), throttle.Interval(r))
}

// Close stops the budget's background work. A claim it made lapses on its
// own within claimTTL.
func (b *Budget) Close() {
	b.close.Do(func() {
		close(b.stop)
		<-b.done
	})
}

// Stats reports the budget's traffic so far.
func (b *Budget) Stats() BudgetStats {
	return BudgetStats{
		Reserved: b.stats.reserved.Load(), Rebooked: b.stats.rebooked.Load(), Writes: b.stats.writes.Load(),
		Conflicts: b.stats.conflicts.Load(), Reads: b.stats.reads.Load(),
		Watched: b.stats.watched.Load(),
	}
}

// key is the entry of the current credential; KV keys allow a narrower
// alphabet than credential ids ("token:1a2b3c4d").
func (b *Budget) key() string {
	id := b.cfg.ID()
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '_'
	}, id)
}

// Reserve implements throttle.Budget.
func (b *Budget) Reserve(ctx context.Context, p int) (time.Time, bool, error) {
	kv, err := b.bind(ctx)
	if err != nil {
		return time.Time{}, false, err
	}
	key := b.key()
	for range casTries {
		b.mu.Lock()
		c, known := b.cache[key]
		b.mu.Unlock()
		if !known {
			if c, err = b.read(ctx, kv, key); err != nil {
				return time.Time{}, false, err
			}
		}
		now := time.Now()
		if now.Before(c.st.Hold) {
			return c.st.Hold, false, nil
		}
		if until, blocked := b.blockedUntil(c.st, p, now); blocked {
			return until, false, nil
		}
		if b.interval == 0 {
			return now, true, nil // no limit: holds and claims only
		}
		at := c.st.Next
		if at.Before(now) {
			at = now
		}
		lead := b.lead()
		if at.After(now.Add(lead)) {
			// Not due yet. Waking at a random point of the lead's first
			// half spreads the replicas: the first to write wins, and the
			// others mostly learn it from the watch before they try.
			return at.Add(-lead + mrand.N(lead/2+1)), false, nil
		}
		st := c.st
		st.Next = at.Add(b.interval)
		st.Claims = liveClaims(st.Claims, now)
		_, err := b.write(ctx, kv, key, st, c.rev)
		switch {
		case err == nil:
			b.stats.reserved.Add(1)
			return at, true, nil
		case errors.Is(err, jetstream.ErrKeyRevisionMismatch):
			if _, err := b.read(ctx, kv, key); err != nil {
				return time.Time{}, false, err
			}
		default:
			return time.Time{}, false, err
		}
	}
	// Busy: others keep winning; try again in a moment.
	return time.Now().Add(time.Millisecond), false, nil
}

// Rebook implements throttle.Budget: one compare-and-swap, made only when
// the entry still shows the slot as the last one reserved.
func (b *Budget) Rebook(ctx context.Context, slot time.Time) (time.Time, bool, error) {
	if b.interval == 0 {
		return time.Now(), true, nil
	}
	kv, err := b.bind(ctx)
	if err != nil {
		return time.Time{}, false, err
	}
	key := b.key()
	b.mu.Lock()
	c, known := b.cache[key]
	b.mu.Unlock()
	now := time.Now()
	if !known || !c.st.Next.Equal(slot.Add(b.interval)) || now.Before(c.st.Hold) {
		return time.Time{}, false, nil
	}
	st := c.st
	st.Next = now.Add(b.interval)
	if _, err := b.write(ctx, kv, key, st, c.rev); err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return time.Time{}, false, nil
		}
		return time.Time{}, false, err
	}
	b.stats.rebooked.Add(1)
	return now, true, nil
}

// lead is how long before it is due a slot may be reserved.
func (b *Budget) lead() time.Duration {
	return min(budgetLead, b.interval/2)
}

// blockedUntil reports whether another replica claims a level above p, and
// until when at most.
func (b *Budget) blockedUntil(st budgetState, p int, now time.Time) (time.Time, bool) {
	var until time.Time
	for o, c := range st.Claims {
		if o != b.owner && c.P < p && now.Before(c.Until) && c.Until.After(until) {
			until = c.Until
		}
	}
	return until, !until.IsZero()
}

func liveClaims(cs map[string]budgetClaim, now time.Time) map[string]budgetClaim {
	live := make(map[string]budgetClaim, len(cs))
	for o, c := range cs {
		if now.Before(c.Until) {
			live[o] = c
		}
	}
	return live
}

// Allows implements throttle.Budget.
func (b *Budget) Allows(p int) bool {
	b.mu.Lock()
	c := b.cache[b.key()]
	b.mu.Unlock()
	_, blocked := b.blockedUntil(c.st, p, time.Now())
	return !blocked
}

// Held implements throttle.Budget.
func (b *Budget) Held() (time.Time, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.cache[b.key()]
	hold, cause := c.st.Hold, c.st.Cause
	if b.hold.After(hold) { // ours, not yet written
		hold, cause = b.hold, b.cause
	}
	return hold, cause
}

// Hold implements throttle.Budget; the write happens in the background.
func (b *Budget) Hold(until time.Time, cause string) {
	b.mu.Lock()
	if until.After(b.hold) {
		b.hold, b.cause = until, cause
	}
	b.mu.Unlock()
	b.poke(b.kick)
}

// Defer implements throttle.Budget; the write happens in the background.
func (b *Budget) Defer(until time.Time) {
	b.mu.Lock()
	if until.After(b.deferTo) {
		b.deferTo = until
	}
	b.mu.Unlock()
	b.poke(b.kick)
}

// Claim implements throttle.Budget; the write happens in the background.
func (b *Budget) Claim(p int) {
	b.mu.Lock()
	changed := b.claim != p
	b.claim = p
	b.mu.Unlock()
	if changed {
		b.poke(b.kick)
	}
}

// Changed implements throttle.Budget.
func (b *Budget) Changed() <-chan struct{} { return b.changed }

func (b *Budget) poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// bind returns the bucket, binding it (or creating it when allowed) first.
func (b *Budget) bind(ctx context.Context) (jetstream.KeyValue, error) {
	if kv := b.kv.Load(); kv != nil {
		return *kv, nil
	}
	b.bindMu.Lock()
	defer b.bindMu.Unlock()
	if kv := b.kv.Load(); kv != nil {
		return *kv, nil
	}
	ctx, cancel := context.WithTimeout(ctx, budgetOpTimeout)
	defer cancel()
	kv, err := bindBucket(ctx, b.js, jetstream.KeyValueConfig{
		Bucket:      BudgetBucket,
		Description: "revoker: the API rate budget of each credential, shared by every replica",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(b.cfg.Replicas, 1),
	}, b.cfg.Create, b.cfg.Log)
	if err != nil {
		return nil, b.failed(err)
	}
	b.kv.Store(&kv)
	return kv, nil
}

// read refreshes the cached entry of key from the bucket.
func (b *Budget) read(ctx context.Context, kv jetstream.KeyValue, key string) (cachedState, error) {
	ctx, cancel := context.WithTimeout(ctx, budgetOpTimeout)
	defer cancel()
	b.stats.reads.Add(1)
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return b.store(key, cachedState{}), nil
	}
	if err != nil {
		return cachedState{}, b.failed(fmt.Errorf("read budget: %w", err))
	}
	c, err := decodeState(e)
	if err != nil {
		return cachedState{}, b.failed(err)
	}
	b.ok()
	return b.store(key, c), nil
}

// write stores st as the entry of key if its revision is still rev.
func (b *Budget) write(ctx context.Context, kv jetstream.KeyValue, key string, st budgetState, rev uint64) (uint64, error) {
	data, err := json.Marshal(st)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, budgetOpTimeout)
	defer cancel()
	b.stats.writes.Add(1)
	// Revision 0 expects no entry yet: the first write creates it.
	nrev, err := kv.Update(ctx, key, data, rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		b.stats.conflicts.Add(1)
		b.ok()
		return 0, err
	}
	if err != nil {
		// Unanswered, the write may still have landed: the slot is not
		// ours to use, and the next read tells what happened.
		b.mu.Lock()
		delete(b.cache, key)
		b.mu.Unlock()
		return 0, b.failed(fmt.Errorf("write budget: %w", err))
	}
	b.ok()
	b.store(key, cachedState{st: st, rev: nrev})
	return nrev, nil
}

// store keeps c as key's entry unless a newer one is known; it returns the
// entry kept.
func (b *Budget) store(key string, c cachedState) cachedState {
	b.mu.Lock()
	defer b.mu.Unlock()
	if old, ok := b.cache[key]; ok && old.rev > c.rev && c.rev != 0 {
		return old
	}
	b.cache[key] = c
	return c
}

func decodeState(e jetstream.KeyValueEntry) (cachedState, error) {
	var st budgetState
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		// A damaged entry must not stop every call for ever: it is
		// overwritten by the next reservation, which starts from now.
		return cachedState{rev: e.Revision()}, nil
	}
	return cachedState{st: st, rev: e.Revision()}, nil
}

// failed logs trouble with the bucket once per distinct cause.
func (b *Budget) failed(err error) error {
	b.mu.Lock()
	first := b.trouble != err.Error()
	b.trouble = err.Error()
	b.mu.Unlock()
	if first {
		b.log.Warn("rate budget not reachable: no call starts until it answers", zap.Error(err))
	}
	return err
}

func (b *Budget) ok() {
	b.mu.Lock()
	was := b.trouble
	b.trouble = ""
	b.mu.Unlock()
	if was != "" {
		b.log.Info("rate budget reachable again")
	}
}

// run keeps the watch on the bucket and writes holds, deferrals and claims.
func (b *Budget) run() {
	defer close(b.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-b.stop
		cancel()
	}()
	var (
		w       jetstream.KeyWatcher
		updates <-chan jetstream.KeyValueEntry
		retry   = 50 * time.Millisecond
		tick    = time.NewTimer(0)
	)
	defer tick.Stop()
	defer func() {
		if w != nil {
			_ = w.Stop()
		}
	}()
	for {
		select {
		case <-b.stop:
			return
		case e, ok := <-updates:
			if !ok {
				w, updates = nil, nil // watch again below
				break
			}
			if e != nil {
				b.apply(e)
			}
			continue
		case <-b.kick:
		case <-tick.C:
		}
		wait := claimRefresh
		if w == nil {
			kv, err := b.bind(ctx)
			if err == nil {
				w, err = kv.WatchAll(ctx)
				if err != nil {
					b.failed(fmt.Errorf("watch budget: %w", err))
				}
			}
			if err != nil {
				w = nil
				tick.Reset(retry)
				retry = min(2*retry, 2*time.Second)
				continue
			}
			updates = w.Updates()
		}
		if err := b.flush(ctx); err != nil {
			wait = retry
			retry = min(2*retry, 2*time.Second)
		} else {
			retry = 50 * time.Millisecond
		}
		if !tick.Stop() {
			select {
			case <-tick.C:
			default:
			}
		}
		tick.Reset(wait)
	}
}

// apply takes an entry from the watch into the cache.
func (b *Budget) apply(e jetstream.KeyValueEntry) {
	b.stats.watched.Add(1)
	c := cachedState{rev: e.Revision()}
	if e.Operation() == jetstream.KeyValuePut {
		c, _ = decodeState(e)
	}
	b.mu.Lock()
	if old, ok := b.cache[e.Key()]; !ok || old.rev < c.rev {
		b.cache[e.Key()] = c
	}
	b.mu.Unlock()
	b.poke(b.changed)
}

// flush writes what this replica has to tell the others: a hold, a
// deferral, its claim (renewed before it lapses, removed when over).
func (b *Budget) flush(ctx context.Context) error {
	kv, err := b.bind(ctx)
	if err != nil {
		return err
	}
	key := b.key()
	for range casTries {
		b.mu.Lock()
		c, known := b.cache[key]
		hold, cause, deferTo, claim := b.hold, b.cause, b.deferTo, b.claim
		b.mu.Unlock()
		if !known {
			if c, err = b.read(ctx, kv, key); err != nil {
				return err
			}
		}
		now := time.Now()
		st, dirty := c.st, false
		if hold.After(st.Hold) && hold.After(now) {
			st.Hold, st.Cause, dirty = hold, cause, true
		}
		if deferTo.After(st.Next) && deferTo.After(now) {
			st.Next, dirty = deferTo, true
		}
		mine, has := st.Claims[b.owner]
		switch {
		case claim >= 0 && (!has || mine.P != claim || mine.Until.Sub(now) < claimTTL-claimRefresh):
			st.Claims = liveClaims(st.Claims, now)
			st.Claims[b.owner] = budgetClaim{P: claim, Until: now.Add(claimTTL)}
			dirty = true
		case claim < 0 && has && now.Before(mine.Until):
			st.Claims = liveClaims(st.Claims, now)
			delete(st.Claims, b.owner)
			dirty = true
		}
		if !dirty {
			b.settled(hold, deferTo)
			return nil
		}
		_, err := b.write(ctx, kv, key, st, c.rev)
		if err == nil {
			b.settled(hold, deferTo)
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return err
		}
		if _, err := b.read(ctx, kv, key); err != nil {
			return err
		}
	}
	return errors.New("budget busy")
}

// settled forgets a hold and a deferral once written, unless a later one
// arrived meanwhile.
func (b *Budget) settled(hold, deferTo time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.hold.Equal(hold) {
		b.hold, b.cause = time.Time{}, ""
	}
	if b.deferTo.Equal(deferTo) {
		b.deferTo = time.Time{}
	}
}
