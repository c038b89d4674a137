package queue

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
)

// ClientOn is a Client on a connection the caller already holds (the
// worker's own), for the work stream and outcome records of t. Closing
// the connection stays the caller's business.
func ClientOn(nc *nats.Conn, js jetstream.JetStream, t config.Topology) *Client {
	return &Client{nc: nc, js: js, Stream: t.Stream, OutcomeStream: t.OutcomeStream,
		OutcomePrefix: t.OutcomePrefix, Timeout: defaultTimeout}
}

// Waiter lets many callers wait for the outcomes of their events over ONE
// subscription on the outcome subjects: each record heard is looked up in
// a map keyed by the event's stream and sequence, so an outcome costs the
// same whatever the number of waiters, and a thousand waiters do not make
// a thousand subscriptions.
//
// What the subscription hears is only a notice: a record published on
// the subject may yet be refused by the stream (a racing replica's write,
// say), so the answer is always read back from the audit trail, with the
// believed-record rule (a revoked record beats every other one).
//
// The subscription is held only while someone waits, and for idleLinger
// after: every record of the fleet is delivered to it, which a worker
// that nobody asks anything of should not pay for.
type Waiter struct {
	c *Client
	n atomic.Int64 // waits in progress

	// subscribing is held by the one wait that subscribes, outside mu: a
	// subscription is a round trip to the server, which must not stall
	// the others' bookkeeping (or the records heard) if NATS is slow.
	subscribing chan struct{}

	mu      sync.Mutex
	sub     *nats.Subscription // nil while idle
	idle    *time.Timer        // ends the subscription once idle long enough
	closed  bool
	waiting map[waitKey]map[*waitEntry]struct{}
}

type waitKey struct {
	stream string
	seq    uint64
}

type waitEntry struct {
	p      Published
	notice chan struct{} // a record naming p was heard
}

// Timings of Wait. A record is heard before the stream has stored it, so
// after a notice the trail is read again soon and then less often; without
// a notice it is still read every recheckEvery, because notices sent while
// the connection was down are lost for good.
var (
	noticeRetryFirst = 2 * time.Millisecond
	noticeRetryMax   = time.Second
	recheckEvery     = 5 * time.Second
	idleLinger       = 30 * time.Second
)

// NewWaiter subscribes to every outcome subject of c (<prefix>.>). Close
// it when done.
func NewWaiter(c *Client) (*Waiter, error) {
	if c.OutcomePrefix == "" {
		return nil, errors.New("outcome records are off (REVOKER_OUTCOME_SUBJECT is empty)")
	}
	w := &Waiter{c: c, waiting: map[waitKey]map[*waitEntry]struct{}{}, subscribing: make(chan struct{}, 1)}
	// Subscribed once at once, so that a subscription the permissions
	// refuse is an error here rather than a silent wait later; then idle
	// until someone waits. Only a refusal is: NATS away at start (no
	// connection yet, or no answer) must not turn waiting off for the life
	// of the process, and each wait subscribes again before it reads.
	if c.nc.IsConnected() {
		sub, err := c.subscribeOutcomes(c.OutcomePrefix+".>", w.heard)
		if errors.Is(err, nats.ErrPermissionViolation) {
			return nil, err
		}
		if err == nil {
			_ = sub.Unsubscribe()
		}
	}
	w.idle = time.AfterFunc(idleLinger, w.quiet)
	w.idle.Stop()
	return w, nil
}

// Close ends the subscription; waits in progress still end with their
// context (they read the trail every recheckEvery).
func (w *Waiter) Close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	w.idle.Stop()
	if w.sub != nil {
		_ = w.sub.Unsubscribe()
		w.sub = nil
	}
}

// quiet ends the subscription if nobody has waited for idleLinger.
func (w *Waiter) quiet() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.n.Load() == 0 && w.sub != nil {
		_ = w.sub.Unsubscribe()
		w.sub = nil
	}
}

// listen makes sure the subscription is there before a wait reads the
// trail, so a record stored after that read is heard. A subscription that
// fails, or that ctx ends before, leaves the wait to its rechecks.
func (w *Waiter) listen(ctx context.Context) {
	listening := func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.idle.Stop()
		return w.sub != nil || w.closed
	}
	if listening() {
		return
	}
	select {
	case w.subscribing <- struct{}{}:
		defer func() { <-w.subscribing }()
	case <-ctx.Done():
		return
	}
	if listening() { // another wait subscribed meanwhile
		return
	}
	sub, err := w.c.subscribeOutcomes(w.c.OutcomePrefix+".>", w.heard)
	if err != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		_ = sub.Unsubscribe()
		return
	}
	w.sub = sub
	if w.n.Load() == 0 {
		w.idle.Reset(idleLinger) // its waits ended meanwhile
	}
}

// heard is the subscription's callback: O(1) per record whatever the
// number of waiters. A body that does not parse, or that names another key
// than its subject's, is ignored.
func (w *Waiter) heard(m *nats.Msg) {
	if w.n.Load() == 0 {
		return // nobody waits: not even decoded
	}
	rec, err := event.DecodeRecord(m.Data)
	if err != nil || !onOwnSubject(m.Subject, rec) {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for e := range w.waiting[waitKey{rec.Stream, rec.Sequence}] {
		if !e.p.Answers(rec) {
			continue
		}
		select {
		case e.notice <- struct{}{}:
		default: // a notice is already pending
		}
	}
}

func (w *Waiter) register(p Published) *waitEntry {
	e := &waitEntry{p: p, notice: make(chan struct{}, 1)}
	k := waitKey{p.Stream, p.Sequence}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.waiting[k] == nil {
		w.waiting[k] = map[*waitEntry]struct{}{}
	}
	w.waiting[k][e] = struct{}{}
	w.n.Add(1)
	return e
}

func (w *Waiter) unregister(e *waitEntry) {
	k := waitKey{e.p.Stream, e.p.Sequence}
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.waiting[k], e)
	if len(w.waiting[k]) == 0 {
		delete(w.waiting, k)
	}
	if w.n.Add(-1) == 0 && !w.closed {
		w.idle.Reset(idleLinger)
	}
}

// Waiting is how many waits are in progress.
func (w *Waiter) Waiting() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, es := range w.waiting {
		n += len(es)
	}
	return n
}

// Wait returns the believed outcome record of p (SPEC §4 "The proof"
// point 3: a revoked record beats every other) as soon as the audit trail
// holds one, or ok false once ctx ends without one. The wait is registered
// before the trail is first read, so a record stored in between is not
// missed. The record returned is the one believed when it was read: a
// revoked record that later supersedes a not_found is what a later look-up
// (Client.Recorded) shows. err is the last failure to read the trail, when
// ctx ended without a record and the last read failed.
func (w *Waiter) Wait(ctx context.Context, p Published) (event.Record, bool, error) {
	e := w.register(p)
	defer w.unregister(e)
	w.listen(ctx)
	retry := noticeRetryFirst
	next := time.Duration(0) // read the trail at once
	noticed := false
	var lastErr error
	for {
		t := time.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return event.Record{}, false, lastErr
		case <-e.notice:
			t.Stop()
			noticed, retry = true, noticeRetryFirst
		case <-t.C:
		}
		rec, ok, err := w.c.Recorded(ctx, p)
		switch {
		case err == nil && ok:
			return rec, true, nil
		case err != nil && ctx.Err() == nil:
			lastErr = err
		case err == nil:
			lastErr = nil
		}
		next = recheckEvery
		if noticed {
			// Heard but not read back yet: the stream has not stored it
			// (or refused it); look again soon, then less often.
			next, retry = retry, min(2*retry, noticeRetryMax)
			if next >= noticeRetryMax {
				noticed = false
			}
		}
	}
}
