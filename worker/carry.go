package worker

import (
	"context"
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/throttle"
)

// Carryover keeps the confirmations that a connection's end left unstored
// (both the trail and the ledger refused them: they were bound to the
// connection that closed), for the process's next connection to store
// before it fetches anything. The process goes on, so they are not lost
// (SPEC §4, "The proof", point 6: lost only when the process must stop;
// §10: a connection closed for good is opened again). Once the process
// stops, Close hands back what is left, lost. Safe for concurrent use.
type Carryover struct {
	mu     sync.Mutex
	kept   []carried
	closed bool
}

// carried is one confirmation carried over: the record that tells it, and
// the event it is of.
type carried struct {
	ref Ref
	rec event.Record
	hit *Call
}

// carry keeps rec, the revoked record of ref's event, and hit, the call
// that revoked it, and reports whether it did: not once Close was called,
// nor on a nil Carryover.
func (c *Carryover) carry(ref Ref, rec event.Record, hit *Call) bool {
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.kept = append(c.kept, carried{ref: ref, rec: rec, hit: hit})
	return true
}

// Store has w store every confirmation kept, oldest first, each tried
// again until it is stored or ctx ends, and drops those stored: in the
// trail where records are on, else in the ledger, where the event's next
// delivery finds it and makes no call. It returns ctx's error when ctx
// ended first, the rest still kept.
func (c *Carryover) Store(ctx context.Context, w *Worker) error {
	for {
		c.mu.Lock()
		if len(c.kept) == 0 {
			c.mu.Unlock()
			return nil
		}
		k := c.kept[0]
		c.mu.Unlock()
		b := recordBackoff()
		for i := 0; ; i++ {
			err := w.storeCarried(ctx, k)
			if err == nil {
				w.Log.Info("a confirmation carried over from a closed connection is stored",
					zap.String("event_id", k.rec.EventID), zap.String("account", k.rec.AccountID), zap.String("key", k.rec.KeyID),
					zap.Int("status", k.rec.Status), zap.String("cf_ray", k.rec.CFRay), zap.String("trace_id", k.rec.TraceID))
				break
			}
			if i == 0 {
				w.Log.Error("a confirmation carried over from a closed connection cannot be stored yet; nothing is fetched until it is",
					zap.String("event_id", k.rec.EventID), zap.String("account", k.rec.AccountID), zap.String("key", k.rec.KeyID),
					zap.String("cf_ray", k.rec.CFRay), zap.String("trace_id", k.rec.TraceID), zap.Error(err))
			}
			if !throttle.Sleep(ctx, b.NextBackOff()) {
				return ctx.Err()
			}
		}
		c.mu.Lock()
		if len(c.kept) > 0 { // else Close came meanwhile, and took it as lost
			c.kept = c.kept[1:]
		}
		c.mu.Unlock()
	}
}

// storeCarried stores k's confirmation through w's stores: in the trail,
// or else in the ledger, where the event's next delivery finds it, with
// the record itself for the sweep that writes it to the trail once the
// trail takes it (as confirmed does). A trail refusing alone holds
// nothing up.
func (w *Worker) storeCarried(ctx context.Context, k carried) error {
	_, err := w.Records.Outcome(ctx, k.rec)
	if err == nil {
		return nil
	}
	_, lerr := w.Ledger.Update(ctx, k.ref, func(e *Entry) error {
		e.Calls = max(e.Calls, k.rec.Attempts)
		// The answers its delivery heard, the confirming one among them,
		// as keepConfirmation keeps them: raised to, never added to.
		e.Answered = min(max(e.Answered, k.rec.Attempts-k.rec.UnansweredCalls), e.Calls)
		e.Confirmed = k.hit
		return nil
	})
	if lerr == nil && !errors.Is(err, ErrNoTrail) {
		lerr = w.Ledger.Unrecorded(ctx, k.rec)
	}
	if lerr != nil {
		return errors.Join(err, lerr)
	}
	return nil
}

// Close ends the carrying, as the process stops, once no connection's
// run (nor its Store) is under way: each confirmation never stored is
// lost, logged at error level with its fields and counted (SPEC §4, "The
// proof", point 6).
func (c *Carryover) Close(log *zap.Logger, lost prometheus.Counter) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for _, k := range c.kept {
		lost.Inc()
		log.Error("CONFIRMATION LOST: the API revoked the key, but its connection closed before the outcome record or the ledger could store it, and the process stopped before another connection could",
			zap.String("event_id", k.rec.EventID), zap.String("account", k.rec.AccountID), zap.String("key", k.rec.KeyID),
			zap.String("outcome", string(event.Revoked)), zap.Int("status", k.rec.Status), zap.String("cf_ray", k.rec.CFRay),
			zap.Int("attempts", k.rec.Attempts), zap.String("trace_id", k.rec.TraceID))
	}
	c.kept = nil
}
