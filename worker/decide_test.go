package worker_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/metrics"
	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/tracing"
	"github.com/revoker/revoker/worker"
)

// fakeDelivery records how the worker settled it.
type fakeDelivery struct {
	id         string
	body       string
	delivered  int
	maxDeliver int
	ackWait    time.Duration
	replayOf   string
	header     map[string]string
	remade     bool   // its consumer was made after the event was stored
	seq        uint64 // its sequence; 0 means 7
	gone       bool   // the broker no longer holds the event (another delivery settled it)

	mu         sync.Mutex
	settled    []string // "ack", "term", "giveback <delay>"
	keepAlives int
	asides     []bool // each time set aside (Aside): whether as retrying
}

func (d *fakeDelivery) Body() []byte { return []byte(d.body) }

// ID is id, else "ev-1", the message's own id; a delivery given headers
// has that id only where they hold Nats-Msg-Id in JetStream's letter case,
// else it is named by its place, as queue.Delivery's is.
func (d *fakeDelivery) ID() string {
	if d.id != "" {
		return d.id
	}
	if _, ok := d.header["Nats-Msg-Id"]; d.header != nil && !ok {
		return fmt.Sprintf("%s:%d", d.Stream(), d.Sequence())
	}
	return "ev-1"
}
func (d *fakeDelivery) Subject() string { return "revoke.scheduled" }
func (d *fakeDelivery) Stream() string  { return "REVOCATIONS" }
func (d *fakeDelivery) Sequence() uint64 {
	if d.seq != 0 {
		return d.seq
	}
	return 7
}
func (d *fakeDelivery) Delivered() int      { return d.delivered }
func (d *fakeDelivery) First() bool         { return d.delivered <= 1 && !d.remade }
func (d *fakeDelivery) StoredAt() time.Time { return time.Now().Add(-time.Second) }
func (d *fakeDelivery) ReplayOf() string    { return d.replayOf }
func (d *fakeDelivery) Header(name string) string {
	for k, v := range d.header {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return ""
}
func (d *fakeDelivery) TraceHeader(name string) string {
	h := make(map[string][]string, len(d.header))
	for k, v := range d.header {
		h[k] = []string{v}
	}
	return tracing.HeaderGetter(h)(name)
}
func (d *fakeDelivery) Priority() int   { return 1 }
func (d *fakeDelivery) MaxDeliver() int { return d.maxDeliver }
func (d *fakeDelivery) AckWait() time.Duration {
	if d.ackWait == 0 {
		return 30 * time.Second // the consumers' default (SPEC §6)
	}
	return d.ackWait
}
func (d *fakeDelivery) Ack() error                   { return d.settle("ack") }
func (d *fakeDelivery) Term() error                  { return d.settle("term") }
func (d *fakeDelivery) GiveBack(time.Duration) error { return d.settle("giveback") }
func (d *fakeDelivery) Aside(retrying bool) func() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.asides = append(d.asides, retrying)
	return func() {}
}

func (d *fakeDelivery) KeepAlive() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.keepAlives++
	return nil
}

func (d *fakeDelivery) Held(context.Context) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	// A give-back leaves the event with the broker; an ack or a term
	// does not.
	held := !d.gone
	for _, how := range d.settled {
		if how == "ack" || how == "term" {
			held = false
		}
	}
	return held, nil
}

func (d *fakeDelivery) settle(how string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.settled = append(d.settled, how)
	return nil
}

// fakeRecords stores records in memory; failDLQ and failOutcome make that
// many writes fail first, and onFail runs as an outcome write fails.
type fakeRecords struct {
	mu                   sync.Mutex
	failDLQ, failOutcome int
	onFail               func()
	slow                 time.Duration // how long an outcome write takes to answer
	slowPrior            time.Duration // how long a read of the event's record takes
	off                  bool          // outcome records turned off
	dlq                  []event.DeadLetter
	outcomes             []event.Record
}

func (r *fakeRecords) DeadLetter(_ context.Context, d event.DeadLetter, _ []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failDLQ > 0 {
		r.failDLQ--
		return errors.New("dead-letter stream unavailable")
	}
	r.dlq = append(r.dlq, d)
	return nil
}

func (r *fakeRecords) Outcome(ctx context.Context, rec event.Record) (event.Record, error) {
	if err := ctx.Err(); err != nil {
		return rec, err // as the real stream, which cannot be asked after ctx ends
	}
	r.mu.Lock()
	slow := r.slow
	r.mu.Unlock()
	if slow > 0 {
		select {
		case <-time.After(slow): // the answer's latency, not a synchronisation
		case <-ctx.Done():
			return rec, ctx.Err()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failOutcome > 0 {
		r.failOutcome--
		if r.onFail != nil {
			r.onFail()
		}
		return rec, errors.New("outcome stream unavailable")
	}
	if r.off {
		return rec, worker.ErrNoTrail
	}
	if prior, seq, ok := r.believed(worker.Ref{Stream: rec.Stream, Seq: rec.Sequence, Account: rec.AccountID, Key: rec.KeyID}); ok {
		if prior.Outcome == event.Revoked || rec.Outcome != event.Revoked {
			return prior, nil
		}
		rec.Supersedes = seq
	}
	r.outcomes = append(r.outcomes, rec)
	return rec, nil
}

// believed is the record the trail believes for ref (a revoked one beats
// any other) and its place, counted from 1.
func (r *fakeRecords) believed(ref worker.Ref) (rec event.Record, seq uint64, found bool) {
	for i, o := range r.outcomes {
		if o.Stream == ref.Stream && o.Sequence == ref.Seq && o.AccountID == ref.Account && o.KeyID == ref.Key &&
			(!found || o.Outcome == event.Revoked || rec.Outcome != event.Revoked) {
			rec, seq, found = o, uint64(i+1), true
		}
	}
	return rec, seq, found
}

func (r *fakeRecords) Prior(ctx context.Context, ref worker.Ref) (event.Record, bool, error) {
	r.mu.Lock()
	slow := r.slowPrior
	r.mu.Unlock()
	select {
	case <-time.After(slow): // the answer's latency, not a synchronisation
	case <-ctx.Done():
		return event.Record{}, false, ctx.Err()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	rec, _, found := r.believed(ref)
	return rec, found, nil
}

// fakeLedger keeps entries by sequence, and the journal's first calls by
// event; an entry of another account or key is none, as the real ledger
// has it. failUpdates makes that many writes (updates or announcements)
// fail first, closing failing at the first.
type fakeLedger struct {
	mu          sync.Mutex
	entries     map[uint64]worker.Entry
	journal     map[journalKey]int
	failUpdates int
	failing     chan struct{}
	once        sync.Once
	// slowWrite, when set, is how long a first call's write-ahead takes.
	slowWrite func(worker.Ref) time.Duration
	silent    bool          // the server stopped answering: every read and write fails
	slowLoad  time.Duration // how long a read's answer takes
	loads     int
	// hang makes every read and update wait for its context to end; lostAnswers
	// makes that many updates stored but answered with an error.
	hang        bool
	lostAnswers int
	// onUpdate, when set, runs once an update is stored (l.mu not held).
	onUpdate func()
	// unrecorded are the revoked records kept for the sweep;
	// failUnrecorded makes keeping them fail.
	unrecorded     []event.Record
	failUnrecorded bool
}

func (l *fakeLedger) Unrecorded(_ context.Context, rec event.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.silent || l.failUnrecorded {
		return errors.New("ledger unavailable")
	}
	if err := l.fail(); err != nil {
		return err
	}
	l.unrecorded = append(l.unrecorded, rec)
	return nil
}

func (l *fakeLedger) Load(ctx context.Context, ref worker.Ref) (worker.Entry, error) {
	l.mu.Lock()
	hang := l.hang
	l.mu.Unlock()
	if hang {
		<-ctx.Done()
		return worker.Entry{}, ctx.Err()
	}
	select {
	case <-time.After(l.slowLoad): // the answer's latency, not a synchronisation
	case <-ctx.Done():
		return worker.Entry{}, ctx.Err()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.loads++
	if l.silent {
		return worker.Entry{}, errors.New("no answer")
	}
	return l.entry(ref), nil
}

func (l *fakeLedger) entry(ref worker.Ref) worker.Entry {
	e := l.entries[ref.Seq]
	if e.Account != ref.Account || e.Key != ref.Key {
		e = worker.Entry{}
	}
	if j := l.journal[journalKey{ref.Seq, ref.Account, ref.Key}]; j > e.Journaled {
		e.Calls += j - e.Journaled
		e.Journaled = j
	}
	return e
}

// journalKey names an event in the fake's journal.
type journalKey struct {
	seq          uint64
	account, key string
}

// fail makes a write fail while failUpdates says so.
func (l *fakeLedger) fail() error {
	if l.failUpdates == 0 {
		return nil
	}
	l.failUpdates--
	if l.failing != nil {
		l.once.Do(func() { close(l.failing) })
	}
	return errors.New("ledger unavailable")
}

func (l *fakeLedger) Announce(_ context.Context, ref worker.Ref) error {
	if err := l.announce(ref); err != nil {
		return err
	}
	if l.slowWrite != nil {
		// Stored at once, answered late: the answer's latency, not a
		// synchronisation.
		time.Sleep(l.slowWrite(ref))
	}
	return nil
}

func (l *fakeLedger) announce(ref worker.Ref) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.silent {
		return errors.New("no answer")
	}
	if err := l.fail(); err != nil {
		return err
	}
	if l.journal == nil {
		l.journal = map[journalKey]int{}
	}
	l.journal[journalKey{ref.Seq, ref.Account, ref.Key}]++
	return nil
}

func (l *fakeLedger) Update(ctx context.Context, ref worker.Ref, change func(*worker.Entry) error) (worker.Entry, error) {
	if err := ctx.Err(); err != nil {
		return worker.Entry{}, err // as the real ledger, which cannot ask after ctx ends
	}
	l.mu.Lock()
	if l.hang {
		l.mu.Unlock()
		<-ctx.Done()
		return worker.Entry{}, ctx.Err()
	}
	defer l.mu.Unlock()
	if l.silent {
		return worker.Entry{}, errors.New("no answer")
	}
	if err := l.fail(); err != nil {
		return worker.Entry{}, err
	}
	e := l.entry(ref)
	if err := change(&e); err != nil {
		return l.entry(ref), err
	}
	e.Account, e.Key = ref.Account, ref.Key
	l.entries[ref.Seq] = e
	if f := l.onUpdate; f != nil {
		l.mu.Unlock()
		f()
		l.mu.Lock()
	}
	if l.lostAnswers > 0 {
		l.lostAnswers--
		return worker.Entry{}, errors.New("stored, but the answer was lost")
	}
	return e, nil
}

// fakeAPI answers from a script, one answer per call; the last repeats.
// Its key lists hold the keys in listed, and come after every 404.
type fakeAPI struct {
	mu      sync.Mutex
	answers []*cloudflare.Response
	calls   int
	listed  []string
	list    *cloudflare.Response // the list's answer when not a list; nil: a list
	lists   int
	order   []string    // "delete <status>" and "list", as called
	onCall  func()      // runs as each DELETE is answered
	onList  func()      // runs as each key list is answered
	starts  []time.Time // when each DELETE came in
	keys    []string    // the key of each DELETE
	listAt  []time.Time // when each key list came in
}

func (a *fakeAPI) ListSigningKeys(context.Context, string) (*cloudflare.KeyList, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.lists++
	a.listAt = append(a.listAt, time.Now())
	a.order = append(a.order, "list")
	if a.onList != nil {
		a.onList()
	}
	if a.list != nil {
		return &cloudflare.KeyList{Response: a.list}, nil
	}
	return cloudflare.NewKeyList(answer(200, revoked, 0), a.listed...), nil
}

func (a *fakeAPI) DeleteSigningKey(_ context.Context, _, key string) (*cloudflare.Response, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.starts, a.keys = append(a.starts, time.Now()), append(a.keys, key)
	r := a.answers[min(a.calls, len(a.answers)-1)]
	a.calls++
	if a.onCall != nil {
		a.onCall()
	}
	if r != nil {
		a.order = append(a.order, "delete "+strconv.Itoa(r.Status))
	}
	if r == nil {
		return nil, errors.New("connection refused")
	}
	return r, nil
}

// answer is a response as the client would parse it: success decides,
// errors carry a code, retryAfter is what Retry-After(-Ms) said.
func answer(status int, env *cloudflare.Envelope, retryAfter time.Duration) *cloudflare.Response {
	return &cloudflare.Response{Status: status, CFRay: "ray-" + strconv.Itoa(status), Envelope: env,
		RetryAfter: retryAfter, HasRetryAfter: retryAfter > 0}
}

var (
	revoked  = &cloudflare.Envelope{Success: true}
	rejected = &cloudflare.Envelope{Errors: []cloudflare.Message{{Code: 10005, Message: "bad"}}}
	gone     = &cloudflare.Envelope{Errors: []cloudflare.Message{{Code: 10003, Message: "not found"}}}
)

const goodEvent = `{"account_id":"acct1","key_id":"key1"}`

type harness struct {
	m       *metrics.Metrics
	api     *fakeAPI
	records *fakeRecords
	ledger  *fakeLedger
	gate    *throttle.Gate
	ready   *metrics.Readiness
	w       *worker.Worker
}

func newHarness(t *testing.T, tune func(*worker.Config), answers ...*cloudflare.Response) *harness {
	return newHarnessLog(t, tune, zap.NewNop(), answers...)
}

func newHarnessLog(t *testing.T, tune func(*worker.Config), log *zap.Logger, answers ...*cloudflare.Response) *harness {
	return newHarnessGate(t, throttle.Config{Priorities: 2, Concurrency: 4}, tune, log, answers...)
}

func newHarnessGate(t *testing.T, gate throttle.Config, tune func(*worker.Config), log *zap.Logger, answers ...*cloudflare.Response) *harness {
	t.Helper()
	h := &harness{
		api:     &fakeAPI{answers: answers},
		records: &fakeRecords{},
		ledger:  &fakeLedger{entries: map[uint64]worker.Entry{}},
		gate:    throttle.New(gate),
	}
	t.Cleanup(h.gate.Close)
	reg := prometheus.NewRegistry()
	subjects := []string{"revoke.urgent", "revoke.scheduled"}
	m := metrics.New(reg, metrics.Labels{Subjects: subjects, Outcomes: event.Names(event.Outcomes), Reasons: event.Names(event.Reasons)}, metrics.Build{})
	h.ready = metrics.NewReadiness(reg)
	h.m = m
	cfg := worker.Config{
		Subjects: subjects, RetryInitial: time.Millisecond, RetryMaxInterval: 5 * time.Millisecond,
		RetryMaxElapsed: 50 * time.Millisecond, HandBackDelay: time.Millisecond, Name: "test",
	}
	if tune != nil {
		tune(&cfg)
	}
	h.w = worker.New(cfg, worker.Deps{API: h.api, Gate: h.gate, Records: h.records, Ledger: h.ledger,
		Metrics: m, Ready: h.ready, Log: log})
	return h
}

// beside is another replica named name, with its own API answers, gate
// and metrics, sharing h's trail and ledger.
func (h *harness) beside(t *testing.T, name string, answers ...*cloudflare.Response) *worker.Worker {
	t.Helper()
	gate := throttle.New(throttle.Config{Priorities: 2, Concurrency: 4})
	t.Cleanup(gate.Close)
	reg := prometheus.NewRegistry()
	subjects := []string{"revoke.urgent", "revoke.scheduled"}
	m := metrics.New(reg, metrics.Labels{Subjects: subjects, Outcomes: event.Names(event.Outcomes), Reasons: event.Names(event.Reasons)}, metrics.Build{})
	return worker.New(worker.Config{
		Subjects: subjects, RetryInitial: time.Millisecond, RetryMaxInterval: 5 * time.Millisecond,
		RetryMaxElapsed: 50 * time.Millisecond, HandBackDelay: time.Millisecond, Name: name,
	}, worker.Deps{API: &fakeAPI{answers: answers}, Gate: gate, Records: h.records, Ledger: h.ledger,
		Metrics: m, Ready: metrics.NewReadiness(reg), Log: zap.NewNop()})
}

func (h *harness) handle(d *fakeDelivery) {
	if d.maxDeliver == 0 {
		d.maxDeliver = 3
	}
	if d.delivered == 0 {
		d.delivered = 1
	}
	h.w.Handle(context.Background(), context.Background(), d)
}

// TestDecisions runs every row of SPEC §4 through the worker against fakes
// of its interfaces: no server, no network.
func TestDecisions(t *testing.T) {
	for _, tc := range []struct {
		name      string
		body      string
		tune      func(*worker.Config)
		delivered int
		answers   []*cloudflare.Response
		calls     int
		settled   string
		outcome   event.Outcome // "" when no record is written
		reason    event.Reason
		status    int
	}{
		{name: "revoked", body: goodEvent, answers: []*cloudflare.Response{answer(200, revoked, 0)},
			calls: 1, settled: "ack", outcome: event.Revoked, status: 200},
		{name: "404 is already gone", body: goodEvent, answers: []*cloudflare.Response{answer(404, gone, 0)},
			calls: 1, settled: "ack", outcome: event.NotFound, status: 404},
		{name: "404 dead-lettered when told", body: goodEvent, tune: func(c *worker.Config) { c.NotFoundDeadLetter = true },
			answers: []*cloudflare.Response{answer(404, gone, 0)},
			calls:   1, settled: "term", outcome: event.DeadLettered, reason: event.ReasonNotFound, status: 404},
		{name: "400 is rejected", body: goodEvent, answers: []*cloudflare.Response{answer(400, rejected, 0)},
			calls: 1, settled: "term", outcome: event.DeadLettered, reason: event.APIRejected, status: 400},
		{name: "2xx without success", body: goodEvent, answers: []*cloudflare.Response{answer(200, rejected, 0)},
			calls: 1, settled: "term", outcome: event.DeadLettered, reason: event.APIRejected, status: 200},
		{name: "503 then revoked", body: goodEvent, answers: []*cloudflare.Response{answer(503, nil, 0), nil, answer(200, revoked, 0)},
			calls: 3, settled: "ack", outcome: event.Revoked, status: 200},
		{name: "429 pauses, then revoked", body: goodEvent,
			answers: []*cloudflare.Response{answer(429, rejected, 20*time.Millisecond), answer(200, revoked, 0)},
			calls:   2, settled: "ack", outcome: event.Revoked, status: 200},
		{name: "retryable, budget spent, deliveries left", body: goodEvent, answers: []*cloudflare.Response{answer(503, nil, 0)},
			settled: "giveback"},
		{name: "retryable, last delivery", body: goodEvent, delivered: 3, answers: []*cloudflare.Response{answer(503, nil, 0)},
			settled: "term", outcome: event.DeadLettered, reason: event.RetriesExhausted, status: 503},
		{name: "unauthorized, deliveries left", body: goodEvent, answers: []*cloudflare.Response{answer(403, rejected, 0)},
			settled: "giveback"},
		{name: "unauthorized, last delivery", body: goodEvent, delivered: 3, answers: []*cloudflare.Response{answer(401, rejected, 0)},
			settled: "term", outcome: event.DeadLettered, reason: event.Unauthorized, status: 401},
		{name: "invalid event", body: `{"account_id":"acct1","key_id":"../etc"}`,
			settled: "term", outcome: event.DeadLettered, reason: event.InvalidEvent},
		{name: "account not allowed", body: goodEvent, tune: func(c *worker.Config) { c.AllowedAccounts = []string{"other"} },
			settled: "term", outcome: event.DeadLettered, reason: event.AccountNotAllowed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			answers := tc.answers
			if answers == nil {
				answers = []*cloudflare.Response{answer(500, nil, 0)}
			}
			h := newHarness(t, tc.tune, answers...)
			d := &fakeDelivery{body: tc.body, delivered: tc.delivered}
			h.handle(d)
			if len(d.settled) != 1 || d.settled[0] != tc.settled {
				t.Fatalf("settled %v, want [%s]", d.settled, tc.settled)
			}
			if tc.calls > 0 && h.api.calls != tc.calls {
				t.Errorf("calls %d, want %d", h.api.calls, tc.calls)
			}
			if tc.reason == event.InvalidEvent || tc.reason == event.AccountNotAllowed {
				if h.api.calls != 0 {
					t.Errorf("%d calls for an event that must make none", h.api.calls)
				}
			}
			if tc.outcome == "" {
				if len(h.records.outcomes) != 0 {
					t.Fatalf("record written for an unfinished event: %+v", h.records.outcomes)
				}
				return
			}
			if len(h.records.outcomes) != 1 {
				t.Fatalf("%d outcome records, want 1", len(h.records.outcomes))
			}
			o := h.records.outcomes[0]
			if o.Outcome != tc.outcome || o.Reason != tc.reason || o.Status != tc.status || o.Attempts != h.api.calls {
				t.Errorf("record %+v, want outcome %s reason %q status %d attempts %d", o, tc.outcome, tc.reason, tc.status, h.api.calls)
			}
			if (tc.outcome == event.DeadLettered) != (len(h.records.dlq) == 1) {
				t.Errorf("dead letters %+v for outcome %s", h.records.dlq, tc.outcome)
			}
		})
	}
}

// TestCredentialReadiness: a 401/403 turns the worker not-ready, the next
// success ready again.
func TestCredentialReadiness(t *testing.T) {
	h := newHarness(t, nil, answer(403, rejected, 0))
	h.handle(&fakeDelivery{body: goodEvent})
	if v := testutil.ToFloat64(h.ready.Gauge(worker.ReadyCredential)); v != 0 {
		t.Fatalf("ready{credential} = %v after a 403", v)
	}
	h.api.answers = []*cloudflare.Response{answer(200, revoked, 0)}
	h.handle(&fakeDelivery{body: goodEvent})
	if ok, why := h.ready.Ready(); !ok {
		t.Fatalf("not ready after a success: %s", why)
	}
}

// TestRevokedOnceAcrossDeliveries: the confirmation is in the ledger before
// anything else; a later delivery makes no call and records the first
// call's status and CF-Ray, even when the outcome write failed at first.
func TestRevokedOnceAcrossDeliveries(t *testing.T) {
	h := newHarness(t, nil, answer(200, revoked, 0), answer(404, gone, 0))
	h.records.failOutcome = 2
	first := &fakeDelivery{body: goodEvent}
	h.handle(first)
	e := h.ledger.entries[7]
	if e.Confirmed == nil || e.Confirmed.CFRay != "ray-200" || e.Calls != 1 {
		t.Fatalf("ledger after the confirmation: %+v", e)
	}
	if len(first.settled) != 1 || first.settled[0] != "ack" || len(h.records.outcomes) != 1 {
		t.Fatalf("first delivery settled %v with %d records", first.settled, len(h.records.outcomes))
	}
	// The ack was lost: JetStream delivers again.
	again := &fakeDelivery{body: goodEvent, delivered: 2}
	h.handle(again)
	if h.api.calls != 1 {
		t.Fatalf("%d calls; a revoked key must not be called again", h.api.calls)
	}
	o := h.records.outcomes[len(h.records.outcomes)-1]
	if o.Outcome != event.Revoked || o.CFRay != "ray-200" || o.Status != 200 || o.Attempts != 1 {
		t.Fatalf("record of the redelivery %+v", o)
	}
	if again.settled[0] != "ack" {
		t.Fatalf("redelivery settled %v", again.settled)
	}
	if n := testutil.ToFloat64(h.m.OutcomeFailures); n != 2 {
		t.Fatalf("revoker_outcome_publish_failures_total = %v after 2 failed writes", n)
	}
}

// TestFailingDeadLetterWrite: the event is held while its record cannot be
// written, and terminated only once it is.
func TestFailingDeadLetterWrite(t *testing.T) {
	h := newHarness(t, nil, answer(400, rejected, 0))
	h.records.failDLQ = 3
	d := &fakeDelivery{body: goodEvent}
	h.handle(d)
	if len(h.records.dlq) != 1 || len(d.settled) != 1 || d.settled[0] != "term" || h.api.calls != 1 {
		t.Fatalf("dead letters %d, settled %v, calls %d", len(h.records.dlq), d.settled, h.api.calls)
	}
}

// TestRecordNotWrittenAtShutdown: at shutdown an unwritable record gives
// the event back (never acks it without its record).
func TestRecordNotWrittenAtShutdown(t *testing.T) {
	h := newHarness(t, nil, answer(200, revoked, 0))
	h.records.failOutcome = 1 << 30
	stop, cancel := context.WithCancel(context.Background())
	d := &fakeDelivery{body: goodEvent, delivered: 1, maxDeliver: 3}
	go func() {
		for h.api.callCount() == 0 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	h.w.Handle(stop, context.Background(), d)
	if len(d.settled) != 1 || d.settled[0] != "giveback" {
		t.Fatalf("settled %v, want [giveback]", d.settled)
	}
	if e := h.ledger.entries[7]; e.Confirmed == nil {
		t.Fatal("the confirmation is not in the ledger")
	}
}

func (a *fakeAPI) callCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls
}

// TestKeepAliveWhileRetrying: a retry that outlasts the ack wait keeps its
// delivery alive instead of letting the broker hand it to another replica.
func TestKeepAliveWhileRetrying(t *testing.T) {
	h := newHarness(t, func(c *worker.Config) {
		c.RetryInitial, c.RetryMaxInterval, c.RetryMaxElapsed = 20*time.Millisecond, 20*time.Millisecond, time.Second
	}, answer(503, nil, 0), answer(503, nil, 0), answer(503, nil, 0), answer(503, nil, 0), answer(200, revoked, 0))
	d := &fakeDelivery{body: goodEvent, ackWait: 30 * time.Millisecond}
	h.handle(d)
	if d.settled[0] != "ack" {
		t.Fatalf("settled %v", d.settled)
	}
	// Five calls 20 ms apart span 80 ms or more: at least two ack waits.
	if d.keepAlives < 2 {
		t.Fatalf("%d keep-alives during a retry longer than two ack waits", d.keepAlives)
	}
}

// TestLogLinesBounded: ids and free text from an event or an answer are
// cut, so no log line passes 16 KiB whatever they hold.
func TestLogLinesBounded(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	long := strings.Repeat("x", 60<<10)
	h := newHarnessLog(t, nil, zap.New(core),
		answer(503, &cloudflare.Envelope{Errors: []cloudflare.Message{{Code: 1, Message: long}}}, 0),
		answer(400, &cloudflare.Envelope{Errors: []cloudflare.Message{{Code: 2, Message: long}}}, 0))
	// The longest of everything, in four-byte characters: ids are cut
	// in characters (as records cut them), text in bytes.
	key := strings.Repeat("\U0001F511", 16<<10)
	body := `{"account_id":"acct1","key_id":"key1","reason":"` + strings.Repeat("\u202e", 1024) +
		`","requested_by":"` + strings.Repeat("\U0001F511", 256) + `"}`
	h.handle(&fakeDelivery{id: key, body: body, replayOf: key})
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	if logs.Len() == 0 {
		t.Fatal("nothing logged")
	}
	for _, e := range logs.All() {
		buf, err := enc.EncodeEntry(e.Entry, e.Context)
		if err != nil {
			t.Fatal(err)
		}
		if buf.Len() > 16<<10 {
			t.Errorf("log line %q is %d bytes", e.Message, buf.Len())
		}
		if strings.ContainsRune(buf.String(), '\u202e') {
			t.Errorf("log line %q carries a bidirectional control", e.Message)
		}
		buf.Free()
	}
}

// slowLedger fails its first writes of a confirmation, so a delivery
// holds its event while it retries.
type slowLedger struct {
	fakeLedger
	failSaves int
	saving    chan struct{} // closed at the first failed save
	once      sync.Once
}

func (l *slowLedger) Update(ctx context.Context, ref worker.Ref, change func(*worker.Entry) error) (worker.Entry, error) {
	l.mu.Lock()
	probe := l.entry(ref)
	confirming := change(&probe) == nil && probe.Confirmed != nil && l.entry(ref).Confirmed == nil
	if confirming && l.failSaves > 0 {
		l.failSaves--
		l.mu.Unlock()
		l.once.Do(func() { close(l.saving) })
		return worker.Entry{}, errors.New("ledger unavailable")
	}
	l.mu.Unlock()
	return l.fakeLedger.Update(ctx, ref, change)
}

// TestRedeliveryWhileHeldWaits: the broker delivers an event again while
// this process still retries the first delivery's ledger write (the outcome
// stream refused the record, so the confirmation waits in the ledger). The second
// delivery must not call the API again: it waits, then finds the
// confirmation.
func TestRedeliveryWhileHeldWaits(t *testing.T) {
	h := newHarness(t, nil, answer(200, revoked, 0), answer(404, gone, 0))
	// The outcome stream refuses the record's quick write and each retry
	// until the slow ledger has taken the confirmation (on the fourth);
	// then it takes the record.
	h.records.failOutcome = 5
	ledger := &slowLedger{fakeLedger: fakeLedger{entries: map[uint64]worker.Entry{}}, failSaves: 3, saving: make(chan struct{})}
	reg := prometheus.NewRegistry()
	subjects := []string{"revoke.urgent", "revoke.scheduled"}
	m := metrics.New(reg, metrics.Labels{Subjects: subjects, Outcomes: event.Names(event.Outcomes), Reasons: event.Names(event.Reasons)}, metrics.Build{})
	w := worker.New(worker.Config{Subjects: subjects, RetryInitial: time.Millisecond, RetryMaxInterval: 5 * time.Millisecond,
		RetryMaxElapsed: 50 * time.Millisecond, HandBackDelay: time.Millisecond},
		worker.Deps{API: h.api, Gate: h.gate, Records: h.records, Ledger: ledger, Metrics: m, Ready: metrics.NewReadiness(reg), Log: zap.NewNop()})

	first := &fakeDelivery{body: goodEvent, delivered: 1, maxDeliver: 3}
	again := &fakeDelivery{body: goodEvent, delivered: 2, maxDeliver: 3}
	done := make(chan struct{})
	go func() {
		w.Handle(context.Background(), context.Background(), first)
		close(done)
	}()
	<-ledger.saving // the first delivery holds the event, retrying
	w.Handle(context.Background(), context.Background(), again)
	<-done
	if h.api.callCount() != 1 {
		t.Fatalf("%d calls; the redelivery called again while the first delivery held the event", h.api.callCount())
	}
	for _, o := range h.records.outcomes {
		if o.Outcome != event.Revoked || o.CFRay != "ray-200" {
			t.Fatalf("record %+v; every record must name the confirming call", o)
		}
	}
}

// TestRedeliveryAfterLostAck: on the happy path the outcome record is the
// durable confirmation (the ledger holds only the call, stored ahead); a
// delivery after a lost ack finds it, makes no call and writes no second
// record.
func TestRedeliveryAfterLostAck(t *testing.T) {
	h := newHarness(t, nil, answer(200, revoked, 0), answer(404, gone, 0))
	h.handle(&fakeDelivery{body: goodEvent})
	if e := h.ledger.entry(worker.Ref{Seq: 7, Account: "acct1", Key: "key1"}); e.Confirmed != nil || e.Calls != 1 {
		t.Fatalf("ledger after the happy path: %+v; want the one call and no confirmation", e)
	}
	again := &fakeDelivery{body: goodEvent, delivered: 2}
	h.handle(again)
	if h.api.callCount() != 1 {
		t.Fatalf("%d calls; the redelivery called again", h.api.callCount())
	}
	if len(h.records.outcomes) != 1 {
		t.Fatalf("%d records, want the one the first delivery wrote", len(h.records.outcomes))
	}
	if len(again.settled) != 1 || again.settled[0] != "ack" {
		t.Fatalf("redelivery settled %v", again.settled)
	}
	// A dead-lettered event redelivered after a lost term is terminated
	// again, with no call and no second record.
	h2 := newHarness(t, nil, answer(400, rejected, 0))
	h2.handle(&fakeDelivery{body: goodEvent})
	redo := &fakeDelivery{body: goodEvent, delivered: 2}
	h2.handle(redo)
	if h2.api.callCount() != 1 || len(h2.records.outcomes) != 1 || len(h2.records.dlq) != 1 || redo.settled[0] != "term" {
		t.Fatalf("calls %d, records %d, dead letters %d, settled %v", h2.api.callCount(), len(h2.records.outcomes), len(h2.records.dlq), redo.settled)
	}
}

// An event dead-lettered before any call — it does not decode, or its
// account is not served — and redelivered after its Term was lost is
// terminated again with nothing stored twice: its dead letter's id drops
// a repeat only within the stream's duplicate window, which a late
// redelivery is past (the fake dead-letter stream keeps no window).
func TestDeadLetterBeforeAnyCallNotStoredAgain(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		tune       func(*worker.Config)
	}{
		{name: "invalid event", body: `{"account_id":"acct1","key_id":"../etc"}`},
		{name: "not JSON", body: `not json`},
		{name: "account not allowed", body: goodEvent, tune: func(c *worker.Config) { c.AllowedAccounts = []string{"other"} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.tune)
			first := &fakeDelivery{body: tc.body}
			h.handle(first)
			again := &fakeDelivery{body: tc.body, delivered: 2}
			h.handle(again)
			if len(h.records.dlq) != 1 || len(h.records.outcomes) != 1 {
				t.Fatalf("%d dead letters and %d records after a redelivery; want the first delivery's one of each", len(h.records.dlq), len(h.records.outcomes))
			}
			if len(first.settled) != 1 || first.settled[0] != "term" || len(again.settled) != 1 || again.settled[0] != "term" {
				t.Fatalf("settled %v, then %v; want term both times", first.settled, again.settled)
			}
			if h.api.callCount() != 0 {
				t.Fatalf("%d calls for an event that is never called for", h.api.callCount())
			}
		})
	}
}

// TestInvalidEventFiledUnderItsValidIDs: an invalid event's record names
// those of its ids that pass their rule, "_" in place of the others (SPEC
// §5a), so that a look-up of its key finds it.
func TestInvalidEventFiledUnderItsValidIDs(t *testing.T) {
	for _, tc := range []struct{ name, body, account, key string }{
		{"bad requested_at", `{"account_id":"acct1","key_id":"key1","requested_at":"yesterday"}`, "acct1", "key1"},
		{"reason too long", `{"account_id":"acct1","key_id":"key1","reason":"` + strings.Repeat("r", 1025) + `"}`, "acct1", "key1"},
		{"bad key", `{"account_id":"acct1","key_id":"../etc"}`, "acct1", event.NoKey},
		{"bad account", `{"account_id":"a-1","key_id":"key1"}`, event.NoKey, "key1"},
		{"key a number", `{"account_id":"acct1","key_id":7}`, "acct1", event.NoKey},
		{"repeated field", `{"account_id":"acct1","key_id":"key1","key_id":"key2"}`, event.NoKey, event.NoKey},
		{"not json", `{"account_id":"acct1","key_id":"key1"`, event.NoKey, event.NoKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil)
			h.handle(&fakeDelivery{body: tc.body})
			o := onlyRecord(t, h)
			if o.Reason != event.InvalidEvent || o.AccountID != tc.account || o.KeyID != tc.key || h.api.calls != 0 {
				t.Fatalf("record %+v after %d calls; want invalid_event filed under %s/%s, no call", o, h.api.calls, tc.account, tc.key)
			}
		})
	}
}

// A redelivered invalid event whose ledger cannot be read is given back,
// not dead-lettered again blind; a mark that cannot be written does not
// hold the Term back.
func TestInvalidEventWithoutTheLedger(t *testing.T) {
	h := newHarness(t, nil)
	h.ledger.failUpdates = 1
	first := &fakeDelivery{body: `not json`}
	h.handle(first)
	if len(h.records.dlq) != 1 || len(first.settled) != 1 || first.settled[0] != "term" {
		t.Fatalf("with the mark refused: %d dead letters, settled %v; want one, terminated", len(h.records.dlq), first.settled)
	}
	h.ledger.mu.Lock()
	h.ledger.silent = true
	h.ledger.mu.Unlock()
	again := &fakeDelivery{body: `not json`, delivered: 2}
	h.handle(again)
	if len(h.records.dlq) != 1 || len(again.settled) != 1 || !strings.HasPrefix(again.settled[0], "giveback") {
		t.Fatalf("with the ledger silent: %d dead letters, settled %v; want it given back", len(h.records.dlq), again.settled)
	}
}

// A redelivery of an event whose account is no longer served, revoked by
// an earlier delivery while it was, records that confirmation: revoked
// beats a dead letter.
func TestNotServedRedeliveryKeepsItsConfirmation(t *testing.T) {
	h := newHarness(t, func(c *worker.Config) { c.AllowedAccounts = []string{"other"} })
	h.ledger.entries[7] = worker.Entry{Account: "acct1", Key: "key1", Calls: 1, Answered: 1,
		Confirmed: &worker.Call{Status: 200, CFRay: "ray-earlier", At: time.Now()}}
	d := &fakeDelivery{body: goodEvent, delivered: 2}
	h.handle(d)
	if len(h.records.outcomes) != 1 || h.records.outcomes[0].Outcome != event.Revoked || h.records.outcomes[0].CFRay != "ray-earlier" ||
		len(h.records.dlq) != 0 || len(d.settled) != 1 || d.settled[0] != "ack" || h.api.callCount() != 0 {
		t.Fatalf("records %+v, dead letters %d, settled %v, calls %d; want the earlier confirmation recorded and acked",
			h.records.outcomes, len(h.records.dlq), d.settled, h.api.callCount())
	}
}

// TestRateLimitHeaderWithNothingLeftHolds: a Ratelimit header saying no
// call is left holds every call until its reset, however short (SPEC §4).
func TestRateLimitHeaderWithNothingLeftHolds(t *testing.T) {
	for _, reset := range []time.Duration{3 * time.Second, 800 * time.Millisecond} {
		resp := answer(200, revoked, 0)
		resp.RateLimit = cloudflare.RateLimit{Known: true, Remaining: 0, Reset: reset}
		h := newHarness(t, nil, resp)
		h.handle(&fakeDelivery{body: goodEvent})
		// A hold, not a pace: shown as paused (and so shared, and logged).
		if left := h.gate.PausedFor(); left < reset/2 || left > reset {
			t.Fatalf("reset %v: every call held for %v more; want about %v", reset, left, reset)
		}
	}
}

// TestHoldOfA503ChargedToTheEvent: a 503's Retry-After holds every call
// (SPEC §4), and it is this event's wait too: only a 429's hold is kept
// off the retry budget. 20 ms holds against a 50 ms budget: three calls,
// then the event is given back (stop ends the test if it never is). The
// hold is said to be a 503's, not a 429's.
func TestHoldOfA503ChargedToTheEvent(t *testing.T) {
	var mu sync.Mutex
	var causes []string
	h := newHarnessGate(t, throttle.Config{Priorities: 2, Concurrency: 4, OnHold: func(_ time.Duration, cause string) {
		mu.Lock()
		causes = append(causes, cause)
		mu.Unlock()
	}}, nil, zap.NewNop(), answer(503, nil, 20*time.Millisecond))
	stop, cancel := context.WithCancel(context.Background())
	defer cancel()
	h.api.onCall = func() {
		if h.api.calls >= 50 {
			cancel()
		}
	}
	d := &fakeDelivery{body: goodEvent, maxDeliver: 3}
	h.w.Handle(stop, context.Background(), d)
	// Three calls fit (two on a slow machine); uncharged, it runs to 50.
	if h.api.calls < 2 || h.api.calls > 3 || len(d.settled) != 1 || d.settled[0] != "giveback" {
		t.Fatalf("%d calls, settled %v; want 2 or 3 calls within the budget, then given back", h.api.calls, d.settled)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(causes) == 0 || causes[0] != "the API asked to be called again later (Retry-After on a 503)" {
		t.Fatalf("holds reported with causes %q; want the 503's Retry-After named", causes)
	}
}

// slowFirstWrite makes the answer to the write-ahead of key's first call
// take 40 ms, and closes the channel returned as the write is stored.
func slowFirstWrite(l *fakeLedger, key string) <-chan struct{} {
	writing := make(chan struct{})
	var once sync.Once
	l.slowWrite = func(ref worker.Ref) time.Duration {
		if ref.Key != key {
			return 0
		}
		once.Do(func() { close(writing) })
		return 40 * time.Millisecond
	}
	return writing
}

// TestSlowWriteAheadTakesTheNextSlot: at a rate of 4, a first call whose
// write-ahead takes 40 ms does not start on its rate slot, gone by
// meanwhile, but on the next one, ahead of the events that queued behind
// it: five calls never start within one second (SPEC §6), and the call
// keeps its place (SPEC §3).
func TestSlowWriteAheadTakesTheNextSlot(t *testing.T) {
	const rate = 4
	h := newHarnessGate(t, throttle.Config{Priorities: 2, Concurrency: 8, Rate: rate}, nil, zap.NewNop(), answer(200, revoked, 0))
	writing := slowFirstWrite(h.ledger, "slow")
	var wg sync.WaitGroup
	handle := func(seq uint64, key string) {
		d := &fakeDelivery{id: key, seq: seq, body: fmt.Sprintf(`{"account_id":"acct1","key_id":%q}`, key), ackWait: 30 * time.Second}
		wg.Go(func() { h.handle(d) })
	}
	handle(1, "slow")
	<-writing // the slow call holds the first slot; the others queue for theirs
	for i := range rate {
		handle(uint64(2+i), fmt.Sprintf("fast%d", i))
	}
	waitUntil(t, "the others queued at the gate", func() bool { return h.gate.Queued(1) == rate })
	wg.Wait()
	h.api.mu.Lock()
	starts, keys := append([]time.Time(nil), h.api.starts...), append([]string(nil), h.api.keys...)
	h.api.mu.Unlock()
	if len(starts) != rate+1 || keys[0] != "slow" {
		t.Fatalf("calls %v, want %d with the slow one first", keys, rate+1)
	}
	if d := starts[rate].Sub(starts[0]); d < time.Second {
		t.Errorf("%d calls within %v", rate+1, d)
	}
}

// waitUntil polls cond until it holds, or fails the test after 10 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // the poll's pace
	}
}

// TestKeyListTakesTheNextSlotToo: a key list whose permit came after more
// than half the ack wait asks the server first (a ledger read, 40 ms here);
// its slot has gone by meanwhile, so it takes the next: no five calls
// within a second at a rate of 4, key lists included (SPEC §6).
func TestKeyListTakesTheNextSlotToo(t *testing.T) {
	h := newHarnessGate(t, throttle.Config{Priorities: 2, Concurrency: 16, Rate: 4}, nil, zap.NewNop())
	h.api.answers = []*cloudflare.Response{answer(404, gone, 0), answer(200, revoked, 0)}
	h.ledger.slowLoad = 40 * time.Millisecond
	first := make(chan struct{})
	var once sync.Once
	h.api.onCall = func() { once.Do(func() { close(first) }) }
	var wg sync.WaitGroup
	a := &fakeDelivery{id: "A", seq: 1, body: `{"account_id":"acct1","key_id":"gone"}`, ackWait: 300 * time.Millisecond, maxDeliver: 10}
	wg.Go(func() { h.handle(a) })
	<-first
	for i := range 6 {
		d := &fakeDelivery{id: fmt.Sprint("B", i), seq: uint64(10 + i), body: fmt.Sprintf(`{"account_id":"acct1","key_id":"b%d"}`, i), ackWait: 30 * time.Second}
		wg.Go(func() { h.handle(d) })
	}
	wg.Wait()
	h.api.mu.Lock()
	all := append(append([]time.Time(nil), h.api.starts...), h.api.listAt...)
	lists := len(h.api.listAt)
	h.api.mu.Unlock()
	if lists == 0 {
		t.Fatal("no key list")
	}
	slices.SortFunc(all, func(x, y time.Time) int { return x.Compare(y) })
	for i := 0; i+4 < len(all); i++ {
		if d := all[i+4].Sub(all[i]); d < time.Second {
			t.Errorf("5 calls within %v (calls %d to %d)", d, i, i+4)
		}
	}
}

// TestCallNotMadeIsTakenBack: a call stored ahead whose permit went by,
// and whose delivery is stopped while it waits for the next: no call, and
// the ledger no longer counts one, so no record will say a call was made
// (SPEC §5a: attempts count calls).
func TestCallNotMadeIsTakenBack(t *testing.T) {
	h := newHarnessGate(t, throttle.Config{Priorities: 2, Concurrency: 8, Rate: 4}, nil, zap.NewNop(), answer(200, revoked, 0))
	// A call just made holds the gate's next slot 250 ms away.
	h.handle(&fakeDelivery{id: "before", seq: 1, body: `{"account_id":"acct1","key_id":"before"}`, ackWait: 30 * time.Second})
	writing := slowFirstWrite(h.ledger, "key1")
	d := &fakeDelivery{body: goodEvent, ackWait: 30 * time.Second, maxDeliver: 10, delivered: 1}
	stop, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.w.Handle(stop, context.Background(), d)
	}()
	<-writing
	waitUntil(t, "the late call waiting for the next slot", func() bool { return h.gate.Queued(1) == 1 })
	cancel()
	<-done
	e, err := h.ledger.Load(context.Background(), worker.Ref{Stream: "REVOCATIONS", Seq: 7, Account: "acct1", Key: "key1"})
	if err != nil {
		t.Fatal(err)
	}
	if h.api.calls != 1 || e.Calls != 0 {
		t.Errorf("%d calls of key1 made, the ledger counts %d; want none and none", h.api.calls-1, e.Calls)
	}
	if len(d.settled) != 1 || d.settled[0] != "giveback" {
		t.Errorf("settled %v, want [giveback]", d.settled)
	}
}

// TestNoCallAfterALongWaitWithoutTheServersWord: a call stored ahead whose
// permit went by waits for the next; by then more than half the ack wait
// has passed since the server last answered, so it asks again, and gets no
// answer: no call (SPEC §4, "The proof", point 4). The event is given back.
func TestNoCallAfterALongWaitWithoutTheServersWord(t *testing.T) {
	h := newHarnessGate(t, throttle.Config{Priorities: 2, Concurrency: 8, Rate: 4}, nil, zap.NewNop(), answer(200, revoked, 0))
	writing := slowFirstWrite(h.ledger, "key1")
	// The next slot is 250 ms away, over half of the ack wait.
	d := &fakeDelivery{body: goodEvent, ackWait: 300 * time.Millisecond, maxDeliver: 10}
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.handle(d)
	}()
	<-writing
	h.ledger.mu.Lock()
	h.ledger.silent = true // the write under way is stored; nothing after it is answered
	h.ledger.mu.Unlock()
	<-done
	if h.api.calls != 0 || h.ledger.loads == 0 {
		t.Errorf("%d calls, %d questions to the server after the wait; want none and at least one", h.api.calls, h.ledger.loads)
	}
	if len(d.settled) != 1 || d.settled[0] != "giveback" {
		t.Errorf("settled %v, want [giveback]", d.settled)
	}
}

// TestNoKeyListWithoutTheServersWord: a DELETE answered 404 after more
// than half the ack wait, by when the server has gone silent: the key list
// that would prove the absence is an API call for the delivery too, and
// is not made (SPEC §4, "The proof", points 1 and 4). The event is given
// back, not recorded.
func TestNoKeyListWithoutTheServersWord(t *testing.T) {
	h := newHarness(t, nil, answer(404, gone, 0))
	h.api.onCall = func() {
		h.ledger.mu.Lock()
		h.ledger.silent = true
		h.ledger.mu.Unlock()
		time.Sleep(60 * time.Millisecond) // the call's own latency, not a synchronisation
	}
	d := &fakeDelivery{body: goodEvent, ackWait: 100 * time.Millisecond, maxDeliver: 10}
	h.handle(d)
	if h.api.lists != 0 || h.ledger.loads == 0 {
		t.Errorf("%d key lists, %d questions to the server after the 404; want none and at least one", h.api.lists, h.ledger.loads)
	}
	if len(d.settled) != 1 || d.settled[0] != "giveback" || len(h.records.outcomes) != 0 {
		t.Errorf("settled %v with records %+v, want given back with none", d.settled, h.records.outcomes)
	}
}

// TestLateSlotsDoNotRepeatForEver: with the ack wait short beside the
// rate's interval (200 ms, at 4 a second) and the server slow to answer a
// read (130 ms), every replacement permit comes more than half the ack wait
// after the server was last heard, the read made then makes it late
// again, and the call would wait for slot after slot, spending each, for
// ever. The worker gives up after a few: no call on a late slot, the call
// it stored ahead taken back, the event given back.
func TestLateSlotsDoNotRepeatForEver(t *testing.T) {
	h := newHarnessGate(t, throttle.Config{Priorities: 2, Concurrency: 8, Rate: 4}, nil, zap.NewNop(), answer(200, revoked, 0))
	h.ledger.slowWrite = func(worker.Ref) time.Duration { return 100 * time.Millisecond }
	h.ledger.slowLoad = 130 * time.Millisecond
	d := &fakeDelivery{body: goodEvent, ackWait: 200 * time.Millisecond, maxDeliver: 10}
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.handle(d)
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		h.ledger.mu.Lock()
		loads := h.ledger.loads
		h.ledger.mu.Unlock()
		t.Fatalf("still waiting for an on-time slot after 20 s (%d reads of the ledger meanwhile)", loads)
	}
	e, err := h.ledger.Load(context.Background(), worker.Ref{Stream: "REVOCATIONS", Seq: 7, Account: "acct1", Key: "key1"})
	if err != nil {
		t.Fatal(err)
	}
	if e.Calls != h.api.calls {
		t.Errorf("the ledger counts %d calls, %d were made", e.Calls, h.api.calls)
	}
	t.Logf("%d calls, settled %v", h.api.calls, d.settled)
	if h.api.calls == 0 && (len(d.settled) != 1 || d.settled[0] != "giveback") {
		t.Errorf("no call, settled %v; want [giveback]", d.settled)
	}
}
