package queue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Clock sync of the shared budget.
const (
	// budgetSyncEvery: how often a replica measures its clock against the
	// server's again, so that drift and a stepped clock (here or there) are
	// corrected. Three requests each time, none on the path of a call.
	budgetSyncEvery = 10 * time.Second
	// budgetSyncSamples: requests per measurement; the one with the
	// shortest round trip is kept, as it brackets the server's time best.
	budgetSyncSamples = 3
	// budgetDrift: how fast an estimate is assumed to go stale (100 ppm,
	// far above a quartz's drift), to prefer a fresh sample to an old one.
	budgetDrift = 10_000
)

// serverClock maps this replica's clock onto the NATS server's. Times of
// different replicas meet only in the budget's entry, and there they are
// all the server's: a replica reads the server's time (the time stamp of a
// stream info answer, taken by the bucket's leader, the server that also
// stamps every entry it stores) and notes its own monotonic reading at the
// middle of that round trip. From then on, server time is that time plus
// the monotonic time elapsed, so a replica's wall clock, however wrong, and
// any step it takes, never reach the shared entry. The estimate is off by
// at most half the round trip, a fraction of a millisecond near the server.
type serverClock struct {
	now func() time.Time // the local clock; its monotonic part is what counts

	mu     sync.Mutex
	local  time.Time     // a local reading, monotonic part included
	server time.Time     // the server's time at that reading
	err    time.Duration // how far off server may be: half the round trip
	synced bool
}

// budgetStream is the stream holding the budget's bucket.
const budgetStream = "KV_" + BudgetBucket

// sync measures the offset from the server's clock and keeps the result if
// it is better than the estimate in hand, allowing for the estimate's age,
// or disagrees with it beyond both their errors (a clock was stepped).
func (c *serverClock) sync(ctx context.Context, js jetstream.JetStream) error {
	var (
		best      time.Duration = -1
		mid, srv0 time.Time
	)
	for range budgetSyncSamples {
		t0 := c.now()
		s, err := js.Stream(ctx, budgetStream)
		t1 := c.now()
		if err != nil {
			if best >= 0 {
				break // one good sample is enough
			}
			return fmt.Errorf("server time: %w", err)
		}
		ts := s.CachedInfo().TimeStamp
		if ts.IsZero() {
			return errors.New("server time: the NATS server reports none (2.10 or later is needed)")
		}
		if rtt := t1.Sub(t0); best < 0 || rtt < best {
			best, mid, srv0 = rtt, t0.Add(rtt/2), ts
		}
	}
	c.offer(mid, srv0, best/2)
	return nil
}

// offer takes a sample: local reading l, server time s, error e.
func (c *serverClock) offer(l, s time.Time, e time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.synced {
		aged := c.err + l.Sub(c.local)/budgetDrift
		// The old estimate's reading of server time at l.
		old := c.server.Add(l.Sub(c.local))
		off := s.Sub(old)
		if off < 0 {
			off = -off
		}
		if e > aged && off <= e+aged {
			return // no better, and consistent with what we have
		}
	}
	c.local, c.server, c.err, c.synced = l, s, e, true
}

// ready reports whether the server's time is known.
func (c *serverClock) ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.synced
}

// serverNow is the server's time now, and the local reading it was taken at.
func (c *serverClock) serverNow() (server, local time.Time) {
	l := c.now()
	return c.toServer(l), l
}

// toServer converts a local time (one with a monotonic reading, from the
// local clock) to server time.
func (c *serverClock) toServer(l time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.server.Add(l.Sub(c.local))
}

// toLocal converts a server time to the local clock, monotonic reading
// included, so that waiting for it depends on nothing but elapsed time. The
// zero time stays zero.
func (c *serverClock) toLocal(s time.Time) time.Time {
	if s.IsZero() {
		return s
	}
	return c.localOf(s, false)
}

// notBefore converts a server time to the earliest local time sure to be no
// earlier on the server: toLocal, plus how far off the estimate may be. A
// call started then starts no earlier than its slot whatever the error, so
// replicas whose estimates err in opposite directions still keep the rate.
func (c *serverClock) notBefore(s time.Time) time.Time {
	if s.IsZero() {
		return s
	}
	return c.localOf(s, true)
}

// spread is how late on the server a call started at notBefore of its
// slot may be: up to twice the estimate's error (the estimate off one way,
// notBefore's margin added the other). The next slot is spaced that much
// more, so that a replica with a slower path to the server, starting its
// calls late, never brings the next replica's call within less than the
// interval of its own (SPEC §6: at most the rate in any one-second window).
func (c *serverClock) spread() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return 2 * c.err
}

// localOf is the local time of server time s, plus the estimate's error
// when late.
func (c *serverClock) localOf(s time.Time, late bool) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.local.Add(s.Sub(c.server))
	if late {
		l = l.Add(c.err)
	}
	return l
}
