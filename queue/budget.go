package queue

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/untrusted"
)

// BudgetBucket is the key-value bucket holding the API rate budget of each
// credential, shared by every replica that uses it (SPEC §9): one entry per
// credential, keyed by the credential's short hash, never the credential.
const BudgetBucket = "revoker_budget"

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

// closeWrite bounds the writes that end a claim at Close: a server that
// does not answer keeps the claim until it lapses, not Close. A variable
// for a test on a loaded machine.
var closeWrite = 300 * time.Millisecond

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
	// Clock is this replica's clock, time.Now when nil. Only the time it
	// measures between two readings matters (see serverClock): a wall
	// clock that is off changes nothing.
	Clock func() time.Time
}

// BudgetStats counts a Budget's traffic with JetStream.
type BudgetStats struct {
	Reserved  uint64 // slots reserved
	Rebooked  uint64 // slots used late moved to their actual start
	Returned  uint64 // slots given back unused, for another replica to take
	Writes    uint64 // compare-and-swap writes sent, conflicts included
	Conflicts uint64 // writes refused because another replica wrote first
	Reads     uint64 // entries read after a conflict
	Watched   uint64 // entries received from the watch
	Synced    uint64 // measurements of the server's clock (budgetSyncSamples requests each)
}

type cachedState struct {
	st  budgetState
	rev uint64 // 0: no entry yet
	// created is the server's time of the write that stored the entry;
	// for this replica's own write, its estimate until the watch brings
	// the entry.
	created time.Time
	// from is the revision st was read from when it is older than rev: an
	// entry that was not a budget state keeps the state believed before it.
	from uint64
}

// reservation is the last slot this replica reserved, in both clocks, so
// that Rebook and GiveBack find it in the entry exactly.
type reservation struct {
	key           string
	local, server time.Time
	next          time.Time // the entry's next slot as it wrote it
}

// Budget is the throttle.Budget kept in a JetStream key-value bucket. A
// replica reserves the start of its next call by compare-and-swap on the
// credential's entry, only when the slot is due within its lead; a watch
// keeps its copy of the entry current, so conflicts stay rare. Whenever it
// cannot tell (the bucket unreachable, a write unanswered), it reserves
// nothing: calls wait, never overshoot.
//
// The entry is kept on the NATS server's clock, never a replica's (SPEC
// §9): times written are server times, estimated through serverClock, and
// turned into this replica's monotonic clock to wait for them; a claim's
// freshness is the server's own time stamp of the write that renewed it.
// Nothing read is believed beyond what a replica could have written at the
// entry's server time (clampState): no hold longer than throttle.MaxPause,
// no next slot further than an interval and that cap ahead, so neither a
// replica whose clock is off, nor one that died, nor a hand-written entry
// holds the others up for longer.
type Budget struct {
	js       jetstream.JetStream
	cfg      BudgetConfig
	log      *zap.Logger
	interval time.Duration // of the configured rate; 0: no limit
	// floor is the spacing of the budget's share of the address limit,
	// where it is longer than interval (Cap); 0 for none.
	floor atomic.Int64
	owner string // this replica, in claims
	clock *serverClock
	// lastKey is the entry key() named last: a credential whose token is
	// replaced (its file rotated) names another (carry).
	lastKey atomic.Pointer[string]
	// trips are how long the last writes of the entry took to be
	// answered here: a slot is reserved at least the shortest of them
	// ahead, so that it is not already late when the answer comes (a
	// replica with a slower path to the server would otherwise never use
	// one). The shortest, so that one slow answer (a stall, a pause)
	// books nothing far ahead.
	tripMu sync.Mutex
	trips  [writeTrips]time.Duration
	tripAt int // writes timed so far

	bindMu sync.Mutex
	kv     atomic.Pointer[jetstream.KeyValue]

	mu      sync.Mutex
	cache   map[string]cachedState
	slot    reservation
	claim   int       // the level this replica claims, -1 none
	hold    time.Time // a hold to publish, local clock
	cause   string
	deferTo time.Time // a Defer to publish, local clock
	// quota is the spacing the API's stated quota asks for, as heard here
	// last (Follow), to write in the entry while quoting: 0 for none
	// beyond the configured rate's.
	quota   time.Duration
	quoting bool
	// troubles are the causes of trouble logged since the budget last
	// answered: the reservations and the claim's keeping fail in turn
	// with different causes, each said once per outage.
	troubles map[string]bool
	closing  bool // Close has begun
	claimed  bool // a claim was ever made here (its key may hold it)
	// checkedRev is the last revision whose values were checked; foreign
	// says it held values out of range, so that is logged once, not on
	// every read.
	checkedRev uint64
	foreign    bool

	changed chan struct{}
	kick    chan struct{}
	// claimKick wakes keepClaim when the claim changes.
	claimKick chan struct{}
	// boundAt is when the bucket was first bound (Unix ns, 0 before);
	// watched is set once the watch has brought every key the bucket held
	// (the claim keys included).
	boundAt atomic.Int64
	watched atomic.Bool
	stop    chan struct{}
	done    chan struct{}
	close   sync.Once

	stats struct {
		reserved, rebooked, returned, writes, conflicts, reads, watched, synced atomic.Uint64
	}
}

var _ throttle.Budget = (*Budget)(nil)

// NewBudget starts a budget on js; Close stops it. It does no I/O itself:
// the bucket is bound (and created when allowed) and the server's clock
// read in the background and at the first reservation, and retried while
// JetStream is away.
func NewBudget(js jetstream.JetStream, cfg BudgetConfig) (*Budget, error) {
	if cfg.ID == nil {
		return nil, errors.New("budget: no credential id")
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Replicas < 1 {
		cfg.Replicas = 1
	}
	var id [8]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("budget: owner id: %w", err)
	}
	b := &Budget{
		js:        js,
		cfg:       cfg,
		log:       cfg.Log.With(zap.String("bucket", BudgetBucket)),
		interval:  BudgetInterval(cfg.Rate),
		owner:     hex.EncodeToString(id[:]),
		clock:     &serverClock{now: cfg.Clock},
		cache:     map[string]cachedState{},
		claim:     -1,
		changed:   make(chan struct{}, 1),
		kick:      make(chan struct{}, 1),
		claimKick: make(chan struct{}, 1),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	go b.run()
	return b, nil
}

// spacing is the interval between calls by st, the entry as known: the
// configured rate's, or the API's stated quota's where that is longer (the
// quota as heard here last, else as the entry says); 0 for no limit.
func (b *Budget) spacing(st budgetState) time.Duration {
	if b.interval == 0 {
		return 0
	}
	quota, quoted := b.quoted()
	if !quoted {
		quota = st.Spacing
	}
	return max(b.own(), quota)
}

// own is the spacing of the budget's own rate: the configured rate's, or
// its share's (Cap) where longer; 0 for no limit.
func (b *Budget) own() time.Duration {
	return max(b.interval, time.Duration(b.floor.Load()))
}

// Cap implements throttle.Budget: this replica's reservations are spaced
// at least spacing apart; every replica cuts the share alike, from the
// credentials in use.
func (b *Budget) Cap(spacing time.Duration) {
	if b.interval != 0 {
		b.floor.Store(int64(spacing))
	}
}

// Spacing implements throttle.Budget: the spacing of calls by the entry as
// known, and the quota heard here.
func (b *Budget) Spacing() time.Duration {
	c, _ := b.cached(b.key())
	return b.spacing(c.st)
}

// quoted is the quota's spacing heard here and not yet written in the
// entry, if any.
func (b *Budget) quoted() (time.Duration, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.quota, b.quoting
}

// published forgets the quota's spacing once written, unless another was
// heard meanwhile.
func (b *Budget) published(quota time.Duration, quoted bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if quoted && b.quoting && b.quota == quota {
		b.quoting = false
	}
}

// Follow implements throttle.Budget: calls of every replica are spaced at
// rate r where r is below the configured rate, and at the configured rate
// again where it is not, from the next reservation on; never further
// apart than throttle.MaxPause, whatever an answer states. The spacing is
// written in the entry (in the background), so replicas that have not
// heard an answer yet, and replicas started later, keep to it too. A
// budget without a rate has no spacing to change.
func (b *Budget) Follow(r float64) {
	if b.interval == 0 || r <= 0 {
		return
	}
	quota := throttle.QuotaInterval(r)
	// Kept whatever the budget's share is now: a share set higher later,
	// by this replica or another, must still keep to the quota.
	if quota <= b.interval {
		quota = 0 // not slower than the rate the budget was made at
	}
	c, _ := b.cached(b.key())
	b.mu.Lock()
	// A quota waiting to be written is replaced by the last one heard,
	// even one the entry already says: the waiting one is older, and must
	// not be written over it.
	changed := (b.quoting && quota != b.quota) || (!b.quoting && quota != c.st.Spacing)
	if changed {
		b.quota, b.quoting = quota, true
	}
	b.mu.Unlock()
	if changed {
		b.poke(b.kick)
	}
}

// BudgetInterval is the spacing of calls shared at rate r, 0 for no limit:
// one process's own (throttle.Interval), so that N+1 calls at rate N take
// a second and throttle.WindowSlack.
func BudgetInterval(r float64) time.Duration {
	if r <= 0 {
		return 0
	}
	return throttle.Interval(r)
}

// Close stops the budget's background work. A claim it made lapses on its
// own within claimTTL.
func (b *Budget) Close() {
	b.close.Do(func() {
		b.mu.Lock()
		b.closing = true // no claim taken from here on, no trouble said
		b.mu.Unlock()
		close(b.stop)
		<-b.done
	})
}

// Stats reports the budget's traffic so far.
func (b *Budget) Stats() BudgetStats {
	return BudgetStats{
		Reserved: b.stats.reserved.Load(), Rebooked: b.stats.rebooked.Load(), Returned: b.stats.returned.Load(),
		Writes: b.stats.writes.Load(), Conflicts: b.stats.conflicts.Load(), Reads: b.stats.reads.Load(),
		Watched: b.stats.watched.Load(), Synced: b.stats.synced.Load(),
	}
}

// key is the entry of the current credential; KV keys allow a narrower
// alphabet than credential ids ("token:1a2b3c4d").
func (b *Budget) key() string {
	id := b.cfg.ID()
	k := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '_'
	}, id)
	if last := b.lastKey.Load(); last == nil || *last != k {
		b.newKey(last, k)
	}
	return k
}

// newKey notes k as the key named last, in place of last, and carries
// last's hold over (apart, so that key's own k is not moved to the heap
// on every call).
func (b *Budget) newKey(last *string, k string) {
	if b.lastKey.CompareAndSwap(last, &k) && last != nil {
		b.carry(*last)
	}
}

// carry takes the hold of the entry from, named before the credential's
// token was replaced, as this replica's own, to be written to the new
// entry: the API's budget is the user's, which a new token of the same
// user shares (SPEC §1), so a hold it asked for outlives the rotation
// (§9), on every replica as it reads the new token.
func (b *Budget) carry(from string) {
	c, ok := b.cached(from)
	if !ok || c.st.Hold.IsZero() || !b.clock.ready() {
		return
	}
	if until := b.clock.toLocal(c.st.Hold); until.After(time.Now()) {
		b.log.Info("the credential's token was replaced; the hold the API asked for carries over",
			zap.Time("until", until), zap.String("cause", c.st.Cause))
		b.Hold(until, c.st.Cause)
	}
}

// cached is the known entry of key.
func (b *Budget) cached(key string) (cachedState, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c, ok := b.cache[key]
	return c, ok
}

// Reserve implements throttle.Budget.
func (b *Budget) Reserve(ctx context.Context, p int) (time.Time, bool, error) {
	kv, err := b.bind(ctx)
	if err != nil {
		return time.Time{}, false, err
	}
	key := b.key()
	for range casTries {
		c, known := b.cached(key)
		if !known {
			if c, err = b.read(ctx, kv, key); err != nil {
				return time.Time{}, false, err
			}
		}
		now, local := b.clock.serverNow()
		if now.Before(c.st.Hold) {
			// The estimate's error is added to be late rather than early,
			// but never beyond the cap counted from now.
			at := b.clock.notBefore(c.st.Hold)
			if limit := local.Add(throttle.MaxPause); at.After(limit) {
				at = limit
			}
			return at, false, nil
		}
		if until, blocked := b.blockedUntil(key, c.st, p, now); blocked {
			return b.clock.toLocal(until), false, nil
		}
		if b.unseen(p) {
			// Another replica's urgent claim may be in a key not seen yet.
			return local.Add(10 * time.Millisecond), false, nil
		}
		interval := b.spacing(c.st)
		if interval == 0 {
			// No limit of its own: holds, claims, and a slow-down another
			// replica wrote (Defer, from the API's Ratelimit header),
			// never beyond the cap.
			if now.Before(c.st.Next) {
				at := b.clock.notBefore(c.st.Next)
				if limit := local.Add(throttle.MaxPause); at.After(limit) {
					at = limit
				}
				return at, false, nil
			}
			return local, true, nil
		}
		at := c.st.Next
		if at.Before(now) {
			at = now
		}
		lead := lead(interval)
		// A write reaches the server one way after it is sent: a replica
		// with a longer path judges a slot due, and wakes for it, that much
		// earlier, so that its writes land in the same window as a near
		// replica's. Else the near one's write always lands first, and the
		// far one never gets a slot of its level (SPEC §9: a slower path
		// still gets its share).
		reach := b.reach()
		if at.After(now.Add(reach + lead)) {
			// Not due yet. Waking at a random point of the lead's first
			// half spreads the replicas: the first to write wins, and the
			// others mostly learn it from the watch before they try.
			return b.clock.toLocal(at).Add(-reach - lead + mrand.N(lead/2+1)), false, nil
		}
		at = b.ahead(at, now)
		st := c.st
		st.Next = at.Add(interval + b.clock.spread())
		st.Claims = liveClaims(st.Claims, now)
		quota, quoted := b.quoted()
		if quoted {
			st.Spacing = quota // a sharer reserving after this one keeps to it
		}
		_, err := b.write(ctx, kv, key, st, c.rev, now)
		switch {
		case err == nil:
			b.stats.reserved.Add(1)
			b.published(quota, quoted)
			slot := b.clock.notBefore(at)
			b.mu.Lock()
			b.slot = reservation{key: key, local: slot, server: at, next: st.Next}
			b.mu.Unlock()
			return slot, true, nil
		case errors.Is(err, jetstream.ErrKeyRevisionMismatch):
			if _, err := b.read(ctx, kv, key); err != nil {
				return time.Time{}, false, err
			}
		default:
			return time.Time{}, false, err
		}
	}
	// Busy: others keep winning; try again in a moment.
	return b.cfg.Clock().Add(time.Millisecond), false, nil
}

// reserved returns the entry of the current credential and the slot
// reserved there last at local time slot, if the entry still shows that
// slot as the last one reserved.
func (b *Budget) reserved(slot time.Time) (string, cachedState, reservation, bool) {
	key := b.key()
	b.mu.Lock()
	defer b.mu.Unlock()
	c, known := b.cache[key]
	r := b.slot
	ok := known && r.key == key && r.local.Equal(slot) && c.st.Next.Equal(r.next)
	return key, c, r, ok
}

// Rebook implements throttle.Budget: one compare-and-swap, made only when
// the entry still shows the slot as the last one reserved.
func (b *Budget) Rebook(ctx context.Context, slot time.Time) (time.Time, bool, error) {
	if b.interval == 0 {
		return b.cfg.Clock(), true, nil
	}
	kv, err := b.bind(ctx)
	if err != nil {
		return time.Time{}, false, err
	}
	key, c, _, ok := b.reserved(slot)
	now, local := b.clock.serverNow()
	if !ok || now.Before(c.st.Hold) {
		return time.Time{}, false, nil
	}
	interval := b.spacing(c.st)
	at := b.ahead(now, now)
	st := c.st
	st.Next = at.Add(interval + b.clock.spread())
	quota, quoted := b.quoted()
	if quoted {
		st.Spacing = quota
	}
	if _, err := b.write(ctx, kv, key, st, c.rev, now); err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return time.Time{}, false, nil
		}
		return time.Time{}, false, err
	}
	b.stats.rebooked.Add(1)
	b.published(quota, quoted)
	booked := local
	if at.After(now) {
		booked = b.clock.notBefore(at)
	}
	b.mu.Lock()
	b.slot = reservation{key: key, local: booked, server: at, next: st.Next}
	b.mu.Unlock()
	return booked, true, nil
}

// Booking ahead (Budget.ahead).
const (
	// writeTrips: how many of the last writes' round trips are kept.
	writeTrips = 8
	// maxAhead bounds how far ahead of now a slot is booked for its
	// write's answer, whatever the writes took: further, the sharers'
	// next slot would wait on one replica's path.
	maxAhead = 250 * time.Millisecond
)

// ahead is slot at (server time), moved to no earlier than one write's
// round trip after now (the shortest of the last writes', at most
// maxAhead): the write that reserves it must be answered before it is
// due, or it is late on arrival, moved, late again, and the replica (with
// every sharer, whose next slot each move pushes back) never calls. Not
// bounded by the interval: at a high rate, a replica whose round trip is
// longer than an interval would never call. Later is always within the
// budget.
func (b *Budget) ahead(at, now time.Time) time.Time {
	if earliest := now.Add(min(b.writeTrip(), maxAhead)); at.Before(earliest) {
		return earliest
	}
	return at
}

// reach is how long a write takes to reach the server: half its round
// trip, bounded as ahead bounds it.
func (b *Budget) reach() time.Duration {
	return min(b.writeTrip(), maxAhead) / 2
}

// writeTrip is the shortest round trip of the last writes timed, 0 before
// any.
func (b *Budget) writeTrip() time.Duration {
	b.tripMu.Lock()
	defer b.tripMu.Unlock()
	n := min(b.tripAt, writeTrips)
	if n == 0 {
		return 0
	}
	return slices.Min(b.trips[:n])
}

// timeWrite notes a write answered after took.
func (b *Budget) timeWrite(took time.Duration) {
	b.tripMu.Lock()
	defer b.tripMu.Unlock()
	b.trips[b.tripAt%writeTrips] = max(took, 0)
	b.tripAt++
}

// GiveBack implements throttle.Budget: one compare-and-swap that moves the
// entry's next slot back to the one given, made only when the entry still
// shows it as the last one reserved.
func (b *Budget) GiveBack(ctx context.Context, slot time.Time) {
	if b.interval == 0 {
		return
	}
	kv, err := b.bind(ctx)
	if err != nil {
		return
	}
	key, c, r, ok := b.reserved(slot)
	if !ok {
		return
	}
	now, _ := b.clock.serverNow()
	st := c.st
	st.Next = r.server
	if _, err := b.write(ctx, kv, key, st, c.rev, now); err == nil {
		b.stats.returned.Add(1)
		b.mu.Lock()
		b.slot = reservation{}
		b.mu.Unlock()
	}
}

// lead is how long before it is due a slot spaced by interval may be
// reserved.
func lead(interval time.Duration) time.Duration {
	return min(budgetLead, interval/2)
}

// blockedUntil reports whether another replica claims a level above p at
// server time now, in key's entry st or in its own claim key, and until
// when at most (server time).
func (b *Budget) blockedUntil(key string, st budgetState, p int, now time.Time) (time.Time, bool) {
	var until time.Time
	block := func(o string, c budgetClaim) {
		if end := c.lapse(); o != b.owner && c.P < p && now.Before(end) && end.After(until) {
			until = end
		}
	}
	b.mu.Lock()
	for k, kept := range b.cache {
		budget, o, isClaim := strings.Cut(k, claimInfix)
		if !isClaim || o == b.owner {
			continue
		}
		if !now.Before(kept.created.Add(claimTTL)) {
			// Written more than a claim's life ago: it says nothing now,
			// of the key or of the entry. A replica gone for good leaves
			// its key in the bucket (the watch brings it at start), not
			// in this scan.
			delete(b.cache, k)
			continue
		}
		if c, ok := kept.st.Claims[o]; ok && budget == key { // believed only for its own replica
			block(o, c)
		}
	}
	for o, c := range st.Claims {
		// A replica's claim key written since it last renewed its claim
		// in the entry speaks for it there: that claim may be one it could
		// not take back as it closed (SPEC §9: a replica that dies leaves
		// nothing that holds the others). A claim renewed in the entry
		// after the key (the key's write lost) still counts. Both times
		// are the server's.
		if k, ok := b.cache[key+claimInfix+o]; ok && !k.created.Before(c.At) {
			continue
		}
		block(o, c)
	}
	b.mu.Unlock()
	return until, !until.IsZero()
}

// unseen reports whether the claims of other replicas may not be known
// yet: the watch has not brought the bucket's claim keys (a replica just
// started), for at most claimTTL from when the bucket was bound (however
// long that took), after which a watch that cannot start stops nobody.
// Only levels below the highest can be held by a claim.
func (b *Budget) unseen(p int) bool {
	if p == 0 || b.watched.Load() {
		return false
	}
	bound := b.boundAt.Load()
	return bound == 0 || b.cfg.Clock().Sub(time.Unix(0, bound)) < claimTTL
}

// claimInfix joins a budget's key and a replica's id into the key of that
// replica's claim (see claimKey).
const claimInfix = ".claim."

// claimKey is where this replica keeps its claim on key's budget: a key of
// its own, written without compare-and-swap. In the shared entry only, the
// claim of a replica whose writes keep losing to nearer ones (its path to
// the server longer than an interval) was never stored, and its urgent
// events waited behind others' scheduled calls (SPEC §9). The claim is
// still written in the entry too, for replicas of earlier versions.
func (b *Budget) claimKey(key string) string { return key + claimInfix + b.owner }

// putClaim stores this replica's claim (or its end: claim < 0) in its own
// key where that key does not say it yet, or the claim will lapse before
// the next renewal. Its value is a budget state holding that one claim, so
// that replicas of earlier versions read it as an entry they never use.
func (b *Budget) putClaim(ctx context.Context, kv jetstream.KeyValue, key string, claim int, now time.Time) error {
	ck := b.claimKey(key)
	c, _ := b.cached(ck)
	mine, has := c.st.Claims[b.owner]
	live := has && now.Before(mine.lapse())
	switch {
	case claim >= 0 && (!live || mine.P != claim || mine.lapse().Sub(now) < claimTTL-claimRefresh):
		st := budgetState{Claims: map[string]budgetClaim{b.owner: {P: claim}}}
		data, err := json.Marshal(st)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, budgetOpTimeout)
		defer cancel()
		b.stats.writes.Add(1)
		rev, err := kv.Put(ctx, ck, data)
		if err != nil {
			return fmt.Errorf("write budget claim: %w", err)
		}
		b.wrote(ck, st, rev, now)
	case claim < 0 && live:
		ctx, cancel := context.WithTimeout(ctx, budgetOpTimeout)
		defer cancel()
		b.stats.writes.Add(1)
		if err := kv.Delete(ctx, ck); err != nil {
			return fmt.Errorf("write budget claim: %w", err)
		}
		b.wrote(ck, budgetState{}, c.rev+1, now)
	}
	return nil
}

// Allows implements throttle.Budget.
func (b *Budget) Allows(p int) bool {
	if !b.clock.ready() {
		return true // nothing known yet; Reserve asks
	}
	if b.unseen(p) {
		return false
	}
	key := b.key()
	c, _ := b.cached(key)
	now, _ := b.clock.serverNow()
	_, blocked := b.blockedUntil(key, c.st, p, now)
	return !blocked
}

// Free implements throttle.Budget: what Reserve answers for a budget
// without a rate, from the cache alone.
func (b *Budget) Free(p int) bool {
	if b.interval != 0 || b.kv.Load() == nil || !b.clock.ready() || b.unseen(p) {
		return false
	}
	key := b.key()
	c, known := b.cached(key)
	if !known {
		return false
	}
	now, _ := b.clock.serverNow()
	if now.Before(c.st.Hold) || now.Before(c.st.Next) {
		return false
	}
	_, blocked := b.blockedUntil(key, c.st, p, now)
	return !blocked
}

// Held implements throttle.Budget.
func (b *Budget) Held() (time.Time, string) {
	c, _ := b.cached(b.key())
	b.mu.Lock()
	hold, cause := b.hold, b.cause // ours, perhaps not yet written
	b.mu.Unlock()
	if !c.st.Hold.IsZero() && b.clock.ready() {
		if h := b.clock.toLocal(c.st.Hold); h.After(hold) {
			hold, cause = h, c.st.Cause
		}
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
	if b.closing {
		// The gate's loop may outlive its Close by a pass: a claim now
		// would be written as Close ends this replica's.
		b.mu.Unlock()
		return
	}
	changed := b.claim != p
	b.claim = p
	b.claimed = b.claimed || p >= 0
	b.mu.Unlock()
	if changed {
		b.poke(b.kick)
		b.poke(b.claimKick)
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

// bind returns the bucket, binding it (or creating it when allowed) and
// reading the server's clock first.
func (b *Budget) bind(ctx context.Context) (jetstream.KeyValue, error) {
	if kv := b.kv.Load(); kv != nil && b.clock.ready() {
		return *kv, nil
	}
	b.bindMu.Lock()
	defer b.bindMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, budgetOpTimeout)
	defer cancel()
	kv := b.kv.Load()
	if kv == nil {
		bound, err := bindBucket(ctx, b.js, jetstream.KeyValueConfig{
			Bucket:      BudgetBucket,
			Description: "revoker: the API rate budget of each credential, shared by every replica",
			History:     1,
			Storage:     jetstream.FileStorage,
			Replicas:    max(b.cfg.Replicas, 1),
		}, b.cfg.Create, b.cfg.Log)
		if err != nil {
			return nil, b.failed(err)
		}
		kv = &bound
		b.kv.Store(kv)
		b.boundAt.Store(b.cfg.Clock().UnixNano())
	}
	if !b.clock.ready() {
		if err := b.sync(ctx); err != nil {
			return nil, b.failed(err)
		}
	}
	return *kv, nil
}

// sync measures this replica's clock against the server's.
func (b *Budget) sync(ctx context.Context) error {
	b.stats.synced.Add(1)
	return b.clock.sync(ctx, b.js)
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
	b.ok()
	return b.store(key, b.decode(e)), nil
}

// write stores st as the entry of key if its revision is still rev; sent
// is the server time of sending, as estimated here.
func (b *Budget) write(ctx context.Context, kv jetstream.KeyValue, key string, st budgetState, rev uint64, sent time.Time) (_ uint64, err error) {
	data, err := json.Marshal(st)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, budgetOpTimeout)
	defer cancel()
	b.stats.writes.Add(1)
	// Revision 0 expects no entry yet: the first write creates it. Create,
	// not Update: an entry deleted by hand leaves a marker that an update
	// expecting nothing conflicts with for ever, stopping every call.
	var nrev uint64
	start := b.cfg.Clock()
	defer func() {
		if err == nil || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			b.timeWrite(b.cfg.Clock().Sub(start)) // answered: a round trip
		}
	}()
	if rev == 0 {
		nrev, err = kv.Create(ctx, key, data)
		// Written meanwhile: read again. Over a delete marker Create
		// updates at the marker's revision and returns the stream's own
		// wrong-last-sequence error when another replica wrote first.
		if errors.Is(err, jetstream.ErrKeyExists) || wrongLastSequence(err) {
			err = jetstream.ErrKeyRevisionMismatch
		}
	} else {
		nrev, err = kv.Update(ctx, key, data, rev)
	}
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
	b.wrote(key, st, nrev, sent)
	return nrev, nil
}

// wrote takes this replica's own write of st, stored at nrev, into the
// cache. The server stored it a little after sent; the watch brings its
// exact time, and is not overridden if it came first. An entry after it
// that was not a budget state, read before this write was answered,
// stood on the state from before the write: it stands on this one now.
func (b *Budget) wrote(key string, st budgetState, nrev uint64, sent time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	old, ok := b.cache[key]
	switch {
	case !ok || old.rev < nrev:
		b.cache[key] = cachedState{st: withClaimsAt(st, sent), rev: nrev, created: sent}
	case old.from != 0 && old.from < nrev:
		old.st, old.from = withClaimsAt(st, sent), nrev
		b.cache[key] = old
	}
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

// decode reads an entry from the bucket, bounded by clampState.
func (b *Budget) decode(e jetstream.KeyValueEntry) cachedState {
	c := cachedState{rev: e.Revision(), created: e.Created()}
	if e.Operation() != jetstream.KeyValuePut {
		return c
	}
	var (
		st  budgetState
		out []string
	)
	dec := json.NewDecoder(bytes.NewReader(e.Value()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		// Not a replica's entry: damaged, or a message another role had
		// the server store there (an API answer sent to the key as a
		// reply subject). It must neither stop every call for ever nor
		// wipe a hold: the state last believed here stands, and the next
		// reservation writes over the entry.
		out = []string{"entry (not a budget state)"}
		b.mu.Lock()
		if old, ok := b.cache[e.Key()]; ok {
			c.st, c.from = old.st, old.rev
			if old.from != 0 {
				c.from = old.from
			}
		}
		b.mu.Unlock()
	} else {
		c.st, out = clampState(st, c.created, b.own())
	}
	b.checked(e.Key(), c.rev, out)
	return c
}

// checked logs values out of range in an entry once, when they appear, not
// at every read of them.
func (b *Budget) checked(key string, rev uint64, out []string) {
	b.mu.Lock()
	if rev <= b.checkedRev {
		b.mu.Unlock()
		return
	}
	b.checkedRev = rev
	first := len(out) > 0 && !b.foreign
	b.foreign = len(out) > 0
	b.mu.Unlock()
	if first {
		b.log.Warn("the rate budget's entry holds values no replica could have written: each is taken as at most its bound",
			zap.String("key", untrusted.Line(key, 64)), zap.Uint64("revision", rev), zap.Strings("fields", out),
			zap.Duration("max_hold", throttle.MaxPause))
	}
}

// maxTroubles bounds the causes one outage logs.
const maxTroubles = 16

// failed logs trouble with the bucket once per distinct cause.
func (b *Budget) failed(err error) error {
	if bucketGone(err) {
		// Deleted by hand, or lost with its stream's only replica: the
		// next use binds it again (making it when told to), and the watch
		// follows, or no call would start again (SPEC §3).
		b.kv.Store(nil)
	}
	b.mu.Lock()
	if errors.Is(err, context.Canceled) || b.closing {
		// Cut short by Close, or failing as it closes: nothing waits on
		// this budget any more, so "no call starts" is not news.
		b.mu.Unlock()
		return err
	}
	msg := err.Error()
	first := !b.troubles[msg] && len(b.troubles) < maxTroubles
	if first {
		if b.troubles == nil {
			b.troubles = map[string]bool{}
		}
		b.troubles[msg] = true
	}
	b.mu.Unlock()
	if first {
		b.log.Warn("rate budget not reachable: no call starts until it answers", zap.Error(err))
	}
	return err
}

func (b *Budget) ok() {
	b.mu.Lock()
	was := len(b.troubles) > 0
	b.troubles = nil
	b.mu.Unlock()
	if was {
		b.log.Info("rate budget reachable again")
	}
}

// run keeps the watch on the bucket, writes holds, deferrals and claims
// (the claim key through keepClaim), and measures the server's clock again every budgetSyncEvery.
func (b *Budget) run() {
	defer close(b.done)
	claiming := make(chan struct{})
	go func() {
		defer close(claiming)
		b.keepClaim()
	}()
	defer func() { <-claiming }()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-b.stop
		cancel()
	}()
	var (
		w         jetstream.KeyWatcher
		watchedOn *jetstream.KeyValue // the handle w watches through
		updates   <-chan jetstream.KeyValueEntry
		retry     = 50 * time.Millisecond
		tick      = time.NewTimer(0)
		lastSync  time.Time
	)
	defer tick.Stop()
	defer func() {
		if w != nil {
			// Not waited for: with the server away, stopping the watch
			// waits out a request's timeout, and Close would with it
			// (for each budget in turn, at shutdown).
			go func() { _ = w.Stop() }()
		}
	}()
	for {
		select {
		case <-b.stop:
			b.endEntryClaim()
			return
		case e, ok := <-updates:
			if !ok {
				w, updates = nil, nil // watch again below
				break
			}
			if e != nil {
				b.apply(e)
			} else if !b.watched.Swap(true) {
				b.poke(b.changed) // the claim keys are known now
			}
			continue
		case <-b.kick:
		case <-tick.C:
		}
		wait := claimRefresh
		if w != nil && b.kv.Load() != watchedOn {
			// The bucket was bound again: its watch is the new one's.
			go func(w jetstream.KeyWatcher) { _ = w.Stop() }(w)
			w, updates = nil, nil
		}
		if w == nil {
			kv, err := b.bind(ctx)
			if err == nil {
				lastSync = b.cfg.Clock()
				watchedOn = b.kv.Load()
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
		if b.cfg.Clock().Sub(lastSync) >= budgetSyncEvery {
			// A failure keeps the estimate in hand, still good for long.
			sctx, cancel := context.WithTimeout(ctx, budgetOpTimeout)
			if err := b.sync(sctx); err == nil {
				lastSync = b.cfg.Clock()
			}
			cancel()
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

// keepClaim keeps this replica's claim key saying what it claims: at once
// when the claim changes, and renewed every claimRefresh while it lasts.
// It runs apart from the shared entry's writes, whose conflicts and
// backoff would otherwise let a far replica's claim lapse while it still
// claims. It reports its own trouble, once per cause, so that it does not
// take turns with the reservations' reports; and at Close it ends a claim
// still standing, rather than leave it to lapse.
func (b *Budget) keepClaim() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-b.stop
		cancel()
	}()
	tick := time.NewTicker(claimRefresh / 2)
	defer tick.Stop()
	var trouble string
	for {
		select {
		case <-b.stop:
			b.endClaim()
			return
		case <-b.claimKick:
		case <-tick.C:
		}
		b.mu.Lock()
		claim := b.claim
		b.mu.Unlock()
		if claim < 0 && !b.claiming() {
			continue // nothing to write: the bucket is not asked
		}
		kv, err := b.bind(ctx)
		if err == nil {
			now, _ := b.clock.serverNow()
			err = b.putClaim(ctx, kv, b.key(), claim, now)
		}
		switch {
		case err == nil && trouble != "":
			b.log.Info("priority claim written again")
			trouble = ""
		case err != nil && ctx.Err() == nil && err.Error() != trouble:
			b.log.Warn("priority claim not written; retrying", zap.Error(err))
			trouble = err.Error()
		}
	}
}

// claiming reports whether this replica's claim key, as known here, holds
// a live claim.
func (b *Budget) claiming() bool {
	c, _ := b.cached(b.claimKey(b.key()))
	mine, has := c.st.Claims[b.owner]
	if !has || !b.clock.ready() {
		return has
	}
	now, _ := b.clock.serverNow()
	return now.Before(mine.lapse())
}

// endEntryClaim removes this replica's claim from the shared entry at
// Close, within closeWrite, as endClaim does from its key: replicas of
// this version read it there too, and would wait for it to lapse.
func (b *Budget) endEntryClaim() {
	b.mu.Lock()
	b.claim = -1
	b.mu.Unlock()
	if b.kv.Load() == nil || !b.clock.ready() {
		return
	}
	c, _ := b.cached(b.key())
	mine, has := c.st.Claims[b.owner]
	if now, _ := b.clock.serverNow(); !has || !now.Before(mine.lapse()) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeWrite)
	defer cancel()
	_ = b.flush(ctx) // a failure is said by flush; the claim lapses all the same
}

// endClaim removes this replica's claim key at Close, waiting at most
// closeWrite for the answer: the others need not wait for the claim to
// lapse. A failure is not reported: it lapses all the same.
func (b *Budget) endClaim() {
	b.mu.Lock()
	claimed := b.claimed
	b.mu.Unlock()
	kv := b.kv.Load()
	// Not judged from the cache: a claim whose write was under way when
	// Close came may be stored unknown to it. The delete lands even when
	// its answer is late, and the key then speaks for the entry too.
	if kv == nil || !claimed {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeWrite)
	defer cancel()
	_ = (*kv).Delete(ctx, b.claimKey(b.key()))
}

// apply takes an entry from the watch into the cache.
func (b *Budget) apply(e jetstream.KeyValueEntry) {
	b.stats.watched.Add(1)
	c := b.decode(e)
	b.mu.Lock()
	// The same revision replaces this replica's copy of its own write,
	// which only estimated the server's time of it.
	if old, ok := b.cache[e.Key()]; !ok || old.rev <= c.rev {
		b.cache[e.Key()] = c
	}
	b.mu.Unlock()
	b.poke(b.changed)
}

// flush writes what this replica has to tell the others in the shared
// entry: a hold, a deferral, its claim (renewed before it lapses, removed
// when over; kept for replicas of earlier versions, see claimKey).
func (b *Budget) flush(ctx context.Context) error {
	kv, err := b.bind(ctx)
	if err != nil {
		return err
	}
	key := b.key()
	for range casTries {
		c, known := b.cached(key)
		b.mu.Lock()
		hold, cause, deferTo, claim := b.hold, b.cause, b.deferTo, b.claim
		quota, quoted := b.quota, b.quoting
		b.mu.Unlock()
		if !known {
			if c, err = b.read(ctx, kv, key); err != nil {
				return err
			}
		}
		now, _ := b.clock.serverNow()
		st, dirty := c.st, false
		if !hold.IsZero() {
			if h := b.clock.toServer(hold); h.After(st.Hold) && h.After(now) {
				st.Hold, st.Cause, dirty = h, cause, true
			}
		}
		if !deferTo.IsZero() {
			if d := b.clock.toServer(deferTo); d.After(st.Next) && d.After(now) {
				st.Next, dirty = d, true
			}
		}
		if quoted && st.Spacing != quota {
			st.Spacing, dirty = quota, true
		}
		mine, has := st.Claims[b.owner]
		switch {
		case claim >= 0 && (!has || mine.P != claim || mine.lapse().Sub(now) < claimTTL-claimRefresh):
			// At is left out: the server's time of this write is the
			// claim's freshness.
			st.Claims = liveClaims(st.Claims, now)
			st.Claims[b.owner] = budgetClaim{P: claim, Until: now.Add(claimTTL)}
			dirty = true
		case claim < 0 && has && now.Before(mine.lapse()):
			st.Claims = liveClaims(st.Claims, now)
			delete(st.Claims, b.owner)
			dirty = true
		}
		if !dirty {
			b.settled(hold, deferTo)
			b.published(quota, quoted)
			return nil
		}
		_, err := b.write(ctx, kv, key, st, c.rev, now)
		if err == nil {
			b.settled(hold, deferTo)
			b.published(quota, quoted)
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
