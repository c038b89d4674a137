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
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/metrics"
	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/tracing"
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
	// First reports whether no delivery of the event can have come
	// before this one: the broker counts it the first, on a consumer
	// that was there before the event was stored (one made again counts
	// from 1 what an older one delivered).
	First() bool
	// StoredAt is when the stream stored the event.
	StoredAt() time.Time
	// ReplayOf is the original event's id when this is a replayed dead letter.
	ReplayOf() string
	// Header is the message header name, whatever its letter case; "" when
	// absent.
	Header(name string) string
	// TraceHeader is Header for the W3C trace context: every letter case
	// of name at once, so that two spellings that disagree are neither
	// believed, as the ingress and the service read them (SPEC §13).
	TraceHeader(name string) string
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
	// Aside lets the events behind this one be taken and worked on while
	// it waits on something of its own, until back is called: its place
	// in hand is not held meanwhile. retrying: a call of this delivery
	// failed (its backoff, or its budget's wait before the next call).
	Aside(retrying bool) (back func())
	// Held reports whether the broker still holds the event, so that a
	// later delivery of it will come: none will once any delivery acked
	// or terminated it. An error means it cannot tell.
	Held(ctx context.Context) (bool, error)
}

// Ref names an event beyond doubt: where it is stored and what it is
// about. A stream deleted and made again reuses sequences, so what is kept
// for an event is believed only for its account and key too.
type Ref struct {
	Stream  string
	Seq     uint64
	Account string
	Key     string
	// Stored is when the stream stored the event: no true record of it
	// can be older.
	Stored time.Time
}

// Records writes the dead-letter and outcome records. Each returns only
// once the record is stored; an error means it may not be.
type Records interface {
	DeadLetter(ctx context.Context, rec event.DeadLetter, body []byte) error
	// Outcome stores rec as the event's final record, unless the trail
	// holds one for the event already: then it stores nothing, except a
	// revoked record correcting an earlier other one (rec.Supersedes names
	// it). It returns the record the trail believes for the event (SPEC
	// §4, "The proof", point 3). ErrNoTrail means records are turned off.
	Outcome(ctx context.Context, rec event.Record) (event.Record, error)
	// Prior is the record the trail believes for the event, if any.
	Prior(ctx context.Context, ref Ref) (rec event.Record, found bool, err error)
}

// FirstRecords is Records that can also store a key's first record
// without a goroutine waiting for the answer: the answer is handled where
// the answers are read, and the event settled there, one after another.
type FirstRecords interface {
	// FirstOutcome stores rec as the only record on its key's subject,
	// which must hold none yet, and calls then once: with nil, where the
	// answers are read, once rec is stored; with an error when it is not
	// known to be (a record is there already, no answer in time), and the
	// caller then writes rec with Outcome, which reads what is there. It
	// reports false, calling nothing, when rec cannot go this way.
	FirstOutcome(rec event.Record, then func(error)) bool
}

// ErrNoTrail is returned by Records.Outcome when outcome records are
// turned off: a confirmation must then be kept in the ledger.
var ErrNoTrail = errors.New("outcome records are turned off")

// Ledger keeps, per event, what one delivery leaves for the next: every
// call before it is made, the answers heard, and the API's confirmation
// while the outcome record cannot hold it. So attempts are counted across
// deliveries, replicas and crashes, and a revocation happens once.
type Ledger interface {
	// Load returns the event's entry; none is an empty entry.
	Load(ctx context.Context, ref Ref) (Entry, error)
	// Update applies change to the entry as stored, by compare-and-swap,
	// and returns the entry stored. If change fails, nothing is stored
	// and the entry as read is returned with change's error.
	Update(ctx context.Context, ref Ref, change func(*Entry) error) (Entry, error)
	// Unrecorded keeps rec, a revoked record the trail refused, where a
	// sweep of the trail finds it and writes it there, whether or not a
	// later delivery of the event comes: another delivery may have
	// finished the event meanwhile, or this process may die before the
	// trail takes it (SPEC §4, "The proof", point 3). An error means it
	// may not be kept.
	Unrecorded(ctx context.Context, rec event.Record) error
	// Announce stores that a delivery knowing of no earlier call of the
	// event is about to make its first, in a journal whose writes the
	// first calls starting together share (the common path costs a
	// fraction of a write); Load counts it. An error means it may not be
	// stored: then no call may be made.
	Announce(ctx context.Context, ref Ref) error
}

// Entry is the ledger's record of one event. It names the event's account
// and key, and is believed only for them.
type Entry struct {
	Account string `json:"account"`
	Key     string `json:"key"`
	// Stored is when the stream stored the event: the same request
	// published again into a stream made again is another event.
	Stored time.Time `json:"stored,omitzero"`
	// Calls counts the DELETE calls made for the event, each stored
	// before it was made.
	Calls int `json:"calls"`
	// Journaled is how many of the journal's first calls Calls took in
	// (less any taken back, never made): Load adds those the journal holds
	// beyond it.
	Journaled int `json:"journaled,omitempty"`
	// Answered counts the calls whose answer a delivery heard and left
	// here; the rest may have revoked the key unheard.
	Answered int `json:"answered"`
	// Replica made the last call.
	Replica string `json:"replica,omitempty"`
	// Confirmed is the call that revoked the key, once there was one.
	Confirmed *Call `json:"confirmed,omitempty"`
	// Last is what the last call of a delivery that gave the event back
	// got (status 0: no answer): a later delivery that makes no call (its
	// credential refused) still reports it (SPEC §5, Revoker-Status).
	Last *Call `json:"last,omitempty"`
	// DeadLettered is set, to invalid_event, once an event that does not
	// decode has its dead letter and outcome record stored: they have no
	// subject of their own to be found under again (SPEC §5a), so a later
	// delivery learns it here.
	DeadLettered event.Reason `json:"dead_lettered,omitempty"`
}

// Call is what the worker keeps of one API call.
type Call struct {
	Status int       `json:"status"`
	CFRay  string    `json:"cf_ray"`
	At     time.Time `json:"at"`
	// Credential names the credential the call was made with (a reload
	// may since have moved the account to another); "" when kept by an
	// earlier version, or with the single credential.
	Credential string `json:"credential,omitempty"`
}

// API is the calls the worker makes; *cloudflare.Client implements it.
type API interface {
	DeleteSigningKey(ctx context.Context, accountID, keyID string) (*cloudflare.Response, error)
	ListSigningKeys(ctx context.Context, accountID string) (*cloudflare.KeyList, error)
}

var _ API = (*cloudflare.Client)(nil)

// Replays tells whether a delivery's claim to replay a dead letter is true:
// only the operator's replay leaves the mark it checks.
type Replays interface {
	// Take reports whether the message msgID with body, at seq of the
	// work stream on subject, read as contentType says, is the operator's
	// replay of the event claimed, and if it is, removes the dead letter
	// it put back: only the worker removes records (SPEC §5). A failed
	// removal is an error with verified still reported.
	Take(ctx context.Context, msgID, claimed string, body []byte, seq uint64, subject, contentType string) (verified bool, err error)
}

// Route is how the calls for one account are made: the credential that
// serves it and the gate of that credential's rate budget (SPEC §6, §9).
type Route struct {
	// Credential names the credential ("" with the single credential of
	// the CLOUDFLARE_* variables); never a secret.
	Credential string
	// Identity tells apart routes of one credential name that a reload
	// made different (another secret, another budget): its secret's short
	// hash and its budget, never the secret. "" for the single credential.
	Identity string
	// Gate is the budget's gate; nil for the worker's own (Deps.Gate).
	Gate *throttle.Gate
	// Budget is the budget's collectors; zero for the single budget's.
	Budget metrics.Budget
	// Rate is the budget's calls per second (0: no limit), when Gate is
	// set; the API's stated quota is followed where it is lower.
	Rate float64
	// API calls with the credential (nil: Deps.API). The route is looked
	// up again before each call, and a call uses one route's API and gate
	// together, so a reload that moves the account elsewhere moves its
	// next call, and never charges one budget for another's token.
	API API
	// Recheck, when set, checks a refused credential with the API again
	// (at priority p) and reports whether it works now: a refused
	// credential is checked before its next call, not called blindly.
	Recheck func(ctx context.Context, p int) bool
}

// Routes picks the route of an account; ok is false when no credential
// serves it.
type Routes interface {
	Route(account string) (r Route, ok bool)
}

// Rerouter is met by Routes whose routes may change while events wait for
// a permit (a reloaded credentials file): Changed is closed at the next
// change, and a wait for the old route's budget ends then.
type Rerouter interface {
	Changed() <-chan struct{}
}

// ReadyCredentialOf is the readiness condition of a named credential.
func ReadyCredentialOf(name string) string {
	if name == "" {
		return ReadyCredential
	}
	return ReadyCredential + ":" + name
}

// The readiness conditions the worker reports on.
const (
	ReadyCredential = "credential"
	// ReadyAPI is false while the API answers 404s without its envelope
	// (the base URL or the way to the API is wrong), and while calls get
	// no answer at all (SPEC §6: an unreachable API, not-ready).
	ReadyAPI = "api"
)

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
	API API
	// Gate bounds every call: the calls in flight and, with several
	// budgets, the address limit; with one budget it is that budget's too.
	Gate *throttle.Gate
	// Routes, when set, picks each account's credential and budget: a
	// call then waits for its budget's gate first, then for Gate.
	Routes  Routes
	Records Records
	Ledger  Ledger
	Replays Replays // nil: no replay claim is believed
	Metrics *metrics.Metrics
	Ready   *metrics.Readiness
	Log     *zap.Logger
	// Carryover, when set, takes a confirmation this worker's connection
	// ended too soon to store, for the process's next connection; nil:
	// it is lost, as at the process's stop.
	Carryover *Carryover
}

// Worker handles deliveries.
type Worker struct {
	cfg Config
	Deps
	allowed map[string]bool
	lanes   []metrics.Lane
	budget  metrics.Budget // the single budget's collectors

	credMu sync.Mutex // one change of a credential's or the API's condition at a time

	listMu sync.Mutex
	lists  map[listKey]*listing // key lists under way, to prove 404s

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
	w := &Worker{cfg: cfg, Deps: d, inHand: map[eventKey]chan struct{}{}, lists: map[listKey]*listing{}}
	if len(cfg.AllowedAccounts) > 0 {
		w.allowed = map[string]bool{}
		for _, a := range cfg.AllowedAccounts {
			w.allowed[a] = true
		}
	}
	for i, s := range cfg.Subjects {
		w.lanes = append(w.lanes, d.Metrics.Lane(s, i))
	}
	if d.Routes == nil {
		// With routes, every route brings its budget's collectors.
		w.budget = d.Metrics.Budget("")
	}
	d.Ready.Declare(ReadyCredential)
	d.Ready.Declare(ReadyAPI)
	return w
}

// recordRetry bounds the wait between tries of a record write: the outcome
// stream may be away for a node's restart, and the event is held meanwhile.
var recordRetry = struct{ initial, max time.Duration }{50 * time.Millisecond, 2 * time.Second}

// attempt is one delivery of one event and what has happened to it.
type attempt struct {
	d       Delivery
	work    context.Context // outlives shutdown by its timeout; carries the delivery's span
	id      string          // the event's id (SPEC §2, §14)
	traceID string
	lane    metrics.Lane
	start   time.Time
	ev      event.Event
	decoded bool
	ref     Ref
	route   Route // the account's credential and budget

	seen int // calls known to be made for the event, ours included
	// blind: the next write-ahead may skip reading what is stored, as a
	// first delivery's first may if it comes within half the ack wait
	// (nothing came before it, and nothing can be beside it yet). Any
	// later one reads: a delivery held or cut off meanwhile may find the
	// event handed to another replica, called for and recorded.
	blind bool
	// journaled is how many of seen are the journal's first calls, which
	// the ledger's entry must be told so as not to count them twice.
	journaled int
	answered  int // of those, answered on earlier deliveries
	heard     int // calls of this delivery whose answer was heard
	calls     int // calls made on this delivery
	// unmade: the last call this delivery stored ahead was not made, and
	// is still counted (the server went silent before it, and taking it
	// back would have failed too): the next call stored ahead is that one,
	// if nobody counted a call since, and a give-back takes it back.
	unmade  bool
	revoked *Call // the confirming call, from this delivery or an earlier one
	kept    bool  // the confirmation is in the ledger
	// orphaned: kept in the ledger, but the broker no longer holds the
	// event, so no later delivery will read it there.
	orphaned bool
	absentAt time.Time

	status int // the deciding (or last) call's status, 0 if none came back
	cfRay  string
	last   Decision
	callAt time.Time     // when the last DELETE started
	word   time.Time     // when the server last answered for this delivery (a ledger write or read)
	rewait time.Duration // waited, since the call was stored, for a permit to replace a late one
	// recordErr is why the last outcome record was refused.
	recordErr error
}

func (a *attempt) attempts() int { return a.seen }

// countIn makes the entry e count at least calls calls, and tells it how
// many of them are the journal's, so that Load does not count those twice.
func (a *attempt) countIn(e *Entry, calls int) {
	e.Calls, e.Journaled = max(e.Calls, calls), max(e.Journaled, a.journaled)
}

// aside is what sets the delivery aside while it waits for its budget of
// its own (acquire); nil with the single budget, which every event waits
// for alike. It never waits as a retrying one, even after a failed call:
// a wait for one budget's slot or hold is that budget's alone, and what
// the lane fetches in its place, of other budgets, would be called (SPEC
// §9: an incident in one account never waits behind another account's
// hold or backlog). Its backoff sleep, which every event's failure shares
// while the API fails, still does (sleepAside).
func (a *attempt) aside() throttle.Aside {
	if a.route.Gate == nil {
		return nil
	}
	return func() func() { return a.d.Aside(false) }
}

// unanswered counts the event's calls whose answer nobody heard.
func (a *attempt) unanswered() int { return max(a.seen-a.answered-a.heard, 0) }

// ending is how the calls of one delivery ended.
type ending int

const (
	decided   ending = iota // a.last holds the decision
	exhausted               // the delivery's retry budget ran out on a retryable answer
	stopped                 // shutdown came first
	settled                 // the delivery was settled on the way
	unserved                // a reload left no credential serving the account: a.last says so
)

// Handle decides and settles one delivery. stop ends with shutdown: no new
// call starts after it. work outlives stop by the shutdown timeout, so a
// call in flight can finish and its outcome be made durable.
func (w *Worker) Handle(stop, work context.Context, d Delivery) {
	a := &attempt{d: d, id: d.ID(), lane: w.lane(d.Priority()), start: time.Now(), blind: d.First()}
	// One event's spans form one trace, across deliveries and replicas: the
	// context it carries, or one derived from where it is stored.
	work = tracing.Extract(work, d.TraceHeader)
	headerTrace := tracing.TraceID(work) != "" // a valid traceparent header
	if tracing.Enabled() {
		// Only a recording provider makes trace ids from it; with tracing
		// off, an event carries the trace id it was given, if any.
		work = tracing.ForEvent(work, d.Stream()+"/"+strconv.FormatUint(d.Sequence(), 10)+"/"+strconv.FormatInt(d.StoredAt().UnixNano(), 10))
	}
	var (
		ce        event.CloudEvent
		decodeErr error
	)
	cloudEvent := event.IsCloudEvent(d.Header("Content-Type"))
	if cloudEvent {
		// A CloudEvent carries its id and trace context in its envelope.
		a.ev, ce, decodeErr = event.DecodeCloudEvent(d.Body())
		if ce.TraceParent != "" && !headerTrace {
			work = tracing.FromTraceParent(work, ce.TraceParent, ce.TraceState)
		}
		// Unless the message has an id of its own: a Nats-Msg-Id header
		// as JetStream reads it (in that letter case), which ID returns.
		if ce.ID != "" && a.id == d.Stream()+":"+strconv.FormatUint(d.Sequence(), 10) {
			a.id = ce.ID
		}
	}
	work, span := tracing.StartProcess(work, d.Subject(), tracing.MessageID(a.id), tracing.Delivery(uint64(d.Delivered())))
	defer span.End()
	a.work, a.traceID = work, tracing.TraceID(work)
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

	err := decodeErr
	if !cloudEvent {
		a.ev, err = event.Decode(d.Body())
	}
	if err != nil {
		w.invalid(stop, work, a, err)
		return
	}
	a.decoded = true
	a.ref = Ref{Stream: d.Stream(), Seq: d.Sequence(), Account: a.ev.AccountID, Key: a.ev.KeyID, Stored: d.StoredAt()}
	var notAllowed string
	if w.Routes != nil {
		// Looked up whatever else is decided: a confirmation found below
		// names its credential.
		if a.route, ok = w.Routes.Route(a.ev.AccountID); !ok {
			notAllowed = fmt.Sprintf("no credential in REVOKER_CREDENTIALS_FILE serves account %s", a.ev.AccountID)
		}
	}
	if w.allowed != nil && !w.allowed[a.ev.AccountID] {
		notAllowed = fmt.Sprintf("account %s is not in REVOKER_ALLOWED_ACCOUNTS", a.ev.AccountID)
	}
	// A redelivery first reads what earlier ones left, whatever becomes of
	// the event now: a dead letter stored before a Term that was lost must
	// not be stored again. Only a first delivery may go straight on.
	if !d.First() && !w.recall(stop, work, a) {
		return
	}
	if notAllowed != "" {
		if a.seen == 0 {
			a.route = Route{} // no credential was used: the record names none
		}
		w.deadLetter(stop, work, a, event.AccountNotAllowed, notAllowed)
		return
	}

	switch end := w.call(stop, work, a); {
	case end == settled:
	case end == stopped:
		w.giveBack(a, w.cfg.HandBackDelay, "shutting down")
	case end == unserved:
		w.deadLetter(stop, work, a, event.AccountNotAllowed, a.last.Detail)
	case a.last.Kind == Revoked:
		w.confirmed(stop, work, a)
	case a.last.Kind == NotFound && w.cfg.NotFoundDeadLetter:
		w.deadLetter(stop, work, a, event.ReasonNotFound, a.last.Detail)
	case a.last.Kind == NotFound:
		w.finish(stop, work, a, event.NotFound, "", d.Ack)
	case a.last.Kind == Rejected:
		w.deadLetter(stop, work, a, event.APIRejected, a.last.Detail)
	case end == exhausted && a.last.Kind != Unrecorded && d.Delivered() >= d.MaxDeliver():
		w.deadLetter(stop, work, a, a.last.Kind.exhaustedReason(), fmt.Sprintf("%d deliveries, %d calls; last: %s",
			d.Delivered(), a.attempts(), a.last.Detail))
	default:
		w.giveBack(a, w.cfg.RetryMaxInterval, "retry budget of this delivery spent")
	}
}

// invalid dead-letters an event that does not decode. Its records are
// found under no key of their own (SPEC §5a), and their ids drop a repeat
// only within the streams' duplicate window: so once they are stored, the
// ledger keeps that the event was dead-lettered, and a later delivery
// (after a Term that was lost) settles as recorded, writing nothing again.
func (w *Worker) invalid(stop, work context.Context, a *attempt, err error) {
	a.ref = Ref{Stream: a.d.Stream(), Seq: a.d.Sequence(), Account: event.NoKey, Key: event.NoKey, Stored: a.d.StoredAt()}
	if !a.d.First() {
		e, lerr := w.Ledger.Load(work, a.ref)
		if lerr != nil {
			w.giveBack(a, w.cfg.RetryMaxInterval, "ledger not readable: "+lerr.Error())
			return
		}
		if e.DeadLettered == event.InvalidEvent {
			w.Log.Info("finished by another delivery; settling it as recorded", w.fields(a, zap.String("outcome", string(event.DeadLettered)))...)
			w.done(a, event.DeadLettered, event.InvalidEvent, a.d.Term)
			return
		}
	}
	w.deadLetter(stop, work, a, event.InvalidEvent, err.Error())
}

// recall reads what earlier deliveries (here or on other replicas) left:
// the calls and a confirmation in the ledger, a final record in the trail.
// When they finished the event, it settles the delivery as they did and
// reports false; it does the same, giving the event back, when it cannot
// read them.
func (w *Worker) recall(stop, work context.Context, a *attempt) bool {
	e, err := w.Ledger.Load(work, a.ref)
	if err != nil {
		// Without the ledger we cannot know whether an earlier delivery
		// revoked the key; calling again could bury that confirmation
		// under a 404. Wait for the ledger instead.
		w.giveBack(a, w.cfg.RetryMaxInterval, "ledger not readable: "+err.Error())
		return false
	}
	w.learn(a, e)
	if a.revoked != nil {
		w.Log.Info("revoked on an earlier delivery; recording it without a call", w.fields(a)...)
		w.confirmed(stop, work, a)
		return false
	}
	prior, found, err := w.Records.Prior(work, a.ref)
	if err != nil {
		w.giveBack(a, w.cfg.RetryMaxInterval, "outcome records not readable: "+err.Error())
		return false
	}
	if found {
		w.settlePrior(a, prior)
		return false
	}
	return true
}

// learn takes in what the ledger says of the event's calls.
func (w *Worker) learn(a *attempt, e Entry) {
	if e.Calls >= a.seen {
		answered := e.Answered
		if c := e.Confirmed; c != nil && a.revoked != nil && c.At.Equal(a.revoked.At) && c.CFRay == a.revoked.CFRay {
			// The entry holds this delivery's confirmation, so it may
			// count the answers this delivery heard (keepConfirmation),
			// which a.heard counts again: whether or not that write was
			// answered. Taking them out when they were not in only counts
			// a call more as unanswered, never one less.
			answered -= a.heard
		}
		if e.Calls > a.seen {
			a.seen, a.answered = e.Calls, max(answered, 0)
		} else {
			// Answers stored by another delivery meanwhile count even
			// where no call was counted since (its give-back, say).
			a.answered = max(a.answered, answered)
		}
	}
	a.journaled = max(a.journaled, e.Journaled)
	if e.Last != nil && a.status == 0 && a.calls == 0 {
		a.status, a.cfRay = e.Last.Status, e.Last.CFRay
	}
	adopt(a, e.Confirmed)
}

// adopt takes in c, a confirmation read from the ledger (so kept there),
// unless a has one.
func adopt(a *attempt, c *Call) {
	if c != nil && a.revoked == nil {
		a.revoked, a.kept = c, true
		a.status, a.cfRay, a.last = c.Status, c.CFRay, Decision{Kind: Revoked}
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

// errMoved: the event's ledger entry changed since this delivery last read
// it (another replica's delivery, or one before a crash, made calls).
var errMoved = errors.New("the event's calls changed under this delivery")

// errNoWord: the server did not answer when asked before a call (hasWord).
var errNoWord = errors.New("no word from the server before the call")

// errLate: a call found its rate slot gone by, after asking the server
// for its word, maxLateSlots times (onTime), and was not made.
var errLate = errors.New("its rate slot went by each time before it could start")

// maxLateSlots bounds the slots one call may find gone by while it asked
// the server for its word. Where a
// read of the server outlasts the rate's slack and the ack wait is short
// beside the rate's interval, every permit would come too long after the
// server was last heard, and the read made then would make it late: the
// call would spend slot after slot of the budget, for ever.
const maxLateSlots = 3

// call makes the API call, retrying retryable answers with exponential
// backoff within this delivery's budget, and proves a 404 with a key list.
// Before each call it stores in the ledger that the call is about to be
// made: no store, no call. So a replica cut off from NATS makes no call,
// and every call is counted whatever becomes of this process.
func (w *Worker) call(stop, work context.Context, a *attempt) ending {
	var next func() time.Duration // made at its first use: most events never back off
	nextBackOff := func() time.Duration {
		if next == nil {
			next = retryBackOff(w.cfg.RetryInitial, w.cfg.RetryMaxInterval)
		}
		return next()
	}
	// spent is the delivery's retry budget used: calls, backoff sleeps and
	// holds asked for by answers other than a 429, but not waits for a
	// permit, so a 429 pause cannot dead-letter (SPEC §4).
	var spent time.Duration
	for {
		if !w.reroute(a) {
			return unserved
		}
		if w.refused(stop, a) {
			if stop.Err() != nil {
				return stopped
			}
			wait := w.cfg.RetryMaxInterval
			if spent+wait > w.cfg.RetryMaxElapsed {
				return exhausted
			}
			if !sleepAside(stop, a, wait, a.apiWide()) {
				return stopped
			}
			spent += wait
			continue
		}
		waitFrom := time.Now()
		permit, moved, err := w.acquireRouted(stop, a)
		if err != nil {
			return stopped
		}
		if moved {
			continue // its account's credential changed while it waited
		}
		callFrom := time.Now()
		a.rewait = 0
		resp, made, end, err := w.delete(stop, work, a, &permit)
		permit.Release()
		// One wait per call: the permit's, and any taken again for a
		// slot that went by meanwhile.
		w.metricsOf(a.route).Wait.Observe((callFrom.Sub(waitFrom) + a.rewait).Seconds())
		// took is charged to the retry budget: the call, or the failed
		// write that stopped it, never a wait for a permit (a hold).
		took := time.Since(callFrom) - a.rewait
		if made {
			w.metricsOf(a.route).Calls.Inc()
			took = time.Since(a.callAt)
		}
		switch {
		case end != decided:
			return end
		case !made && err == nil:
			return decided // revoked by another delivery: a.last says so
		case !made:
			// The call was not stored ahead (or the server went silent
			// after), so not made: retry within the budget, but never
			// dead-letter the event for it.
			a.last = Decision{Kind: Unrecorded, Detail: "no call made: " + err.Error()}
		default:
			a.calls++
			if a.seen > 1 {
				w.Metrics.APIRetries.Inc() // the event was called for before
			}
			a.status, a.cfRay = 0, ""
			var rl cloudflare.RateLimit
			if resp != nil {
				a.status, a.cfRay, rl = resp.Status, resp.CFRay, resp.RateLimit
				w.followQuota(a.route, resp)
			}
			if a.status != 0 {
				a.heard++
			}
			w.Metrics.APIRequests.WithLabelValues(metrics.Code(a.status)).Inc()
			w.Metrics.APIDuration.Observe(took.Seconds())
			a.last = Classify(resp, err)
			w.pace(a.route, rl)
			if a.last.Kind != NotFound {
				// A 404 tells nothing of the API or the credential
				// until its key list answers (proveAbsence heeds that).
				w.heed(a.route, a.last, a.status, unanswered(work, a.status, err))
			}
			if a.last.Kind == NotFound {
				if a.last.Pause {
					w.holdAsked(a, nextBackOff) // the key list waits it out too
				}
				if a.last, end = w.proveAbsence(stop, work, a, time.Now()); end != decided {
					return end
				}
			}
		}

		var wait, held time.Duration // held: a hold of every call, charged to this event
		switch a.last.Kind {
		case Revoked, Rejected:
			if a.last.Pause {
				// Settled, yet the hold the answer asks for holds every call.
				w.holdAsked(a, nextBackOff)
			}
			return decided
		case NotFound:
			// Proven; still, a confirmation elsewhere beats it.
			return w.checkBeforeNotFound(stop, work, a)
		case Unauthorized, NoAPI:
			wait = w.cfg.RetryMaxInterval
			if a.last.Pause {
				// The hold and the longest backoff run at once: the event
				// is charged the longer, once.
				held = w.holdAsked(a, nextBackOff)
				wait = max(0, wait-held)
			}
		default:
			switch {
			case a.last.Pause:
				held = w.holdAsked(a, nextBackOff) // the next Acquire waits it out
			case a.last.RetryAfter > 0:
				wait = a.last.RetryAfter
			default:
				wait = nextBackOff()
			}
		}
		spent += took + held
		if spent+wait > w.cfg.RetryMaxElapsed {
			return exhausted
		}
		if a.calls <= 1 {
			w.Log.Warn("call failed, retrying", w.fields(a, zap.Duration("wait", wait))...)
		} else {
			w.Log.Debug("call failed, retrying", w.fields(a, zap.Duration("wait", wait))...)
		}
		// A refused credential is its own accounts' trouble when there are
		// several: its events must not take the places of the others'.
		if !sleepAside(stop, a, wait, a.last.Kind != Unauthorized || a.apiWide()) {
			return stopped
		}
		spent += wait
	}
}

// holdAsked holds every call of a's budget as its answer asks: a 429's
// pause, or another answer's Retry-After; for the current backoff when a
// 429 names no length. It returns what the event is charged: nothing for a
// 429 (SPEC §4: its pause is off the budget), else the hold as long as the
// gate keeps it, capped at throttle.MaxPause.
func (w *Worker) holdAsked(a *attempt, backoff func() time.Duration) (charged time.Duration) {
	pause := a.last.RetryAfter
	if pause == 0 {
		pause = backoff()
	}
	if a.last.RateLimited {
		w.gate(a.route).Pause(pause)
		return 0
	}
	status := a.last.Status // a key list's, when it asked
	if status == 0 {
		status = a.status
	}
	w.gate(a.route).Hold(pause, fmt.Sprintf(throttle.CauseRetryAfter, status))
	return min(pause, throttle.MaxPause)
}

// sleepAside waits d between calls, or until ctx ends (false), its
// delivery set aside meanwhile: the events behind it, an urgent one among
// them, must not wait for its backoff. retrying says the wait is the
// API's trouble, shared by every event (a lane sets aside only so many of
// those); otherwise it is one credential's, and bounded as events waiting
// for their own budget are.
func sleepAside(ctx context.Context, a *attempt, d time.Duration, retrying bool) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	back := a.d.Aside(retrying)
	defer back()
	return throttle.Sleep(ctx, d)
}

// apiWide reports whether trouble with a's credential is every event's:
// with a single credential; not with a credentials file, where a refused
// credential makes only its own accounts wait (SPEC §6).
func (a *attempt) apiWide() bool { return a.route.Gate == nil }

// reroute looks the account's route up again before a call: a reload of
// the credentials file that moved the account to another credential moves
// its next call too (SPEC §6: the account picks its credential), with that
// credential's budget. It reports false, with a.last saying why, when no
// credential serves the account any more: then no call is made.
func (w *Worker) reroute(a *attempt) bool {
	if w.Routes == nil {
		return true
	}
	r, ok := w.Routes.Route(a.ev.AccountID)
	if !ok {
		a.last = Decision{Kind: a.last.Kind, Detail: fmt.Sprintf("no credential in REVOKER_CREDENTIALS_FILE serves account %s any more (the file was changed)", a.ev.AccountID)}
		if a.seen == 0 {
			a.route = Route{} // no credential was used: the record names none
		}
		return false
	}
	if r.Credential != a.route.Credential || r.Identity != a.route.Identity {
		w.Log.Info("the account's credential changed; its next call uses the new one",
			w.fields(a, zap.String("was", a.route.Credential), zap.String("now", r.Credential))...)
	}
	a.route = r
	return true
}

// refused reports whether the delivery's credential is refused and, with
// a recheck, still refused when checked again: then no DELETE is made,
// and a.last says why (retried like unauthorized, SPEC §6).
func (w *Worker) refused(stop context.Context, a *attempt) bool {
	r := a.route
	if r.Recheck == nil || w.Ready.Met(ReadyCredentialOf(r.Credential)) {
		return false
	}
	// The check waits on the credential's budget (a hold its refusal
	// brought) and on its other events' check: set aside meanwhile, so
	// that other accounts' events are fetched and called (SPEC §6: a
	// refused credential makes only its own accounts wait).
	back := a.d.Aside(false) // its credential's wait alone, as aside says
	works := r.Recheck(stop, a.d.Priority())
	back()
	if works {
		return false
	}
	a.last = Decision{Kind: Unauthorized, Detail: "credential " + r.Credential + " is refused: its check, made again before this call, says so"}
	w.Log.Debug("credential refused; no call", w.fields(a)...)
	return true
}

// delete stores the call in the ledger, then makes it on pm, or on the
// permit that replaced pm if the write made it late; made is false when no
// call was made (err then says why, unless another delivery's
// confirmation made the call needless). A call that may come after the
// event's record (recordedMeanwhile) reads it first, and is not made if
// there is one.
func (w *Worker) delete(stop, work context.Context, a *attempt, pm *permit) (resp *cloudflare.Response, made bool, end ending, err error) {
	if a.seen == 0 && a.blind && !w.late(a) {
		// The common path: a first call, announced in a write it shares
		// with the first calls starting with it.
		a.blind = false
		if err := w.Ledger.Announce(work, a.ref); err != nil {
			return nil, false, decided, fmt.Errorf("not stored ahead in the ledger: %w", err)
		}
		a.seen, a.journaled, a.word = 1, a.journaled+1, time.Now()
		if end, err := w.onTime(stop, work, a, pm, readIfLate); end != decided || err != nil || a.revoked != nil {
			return w.notMade(work, a, end, err)
		}
		a.callAt = time.Now()
		resp, err := w.apiOf(a.route).DeleteSigningKey(work, a.ev.AccountID, a.ev.KeyID)
		return resp, true, decided, err
	}
	// Any other call reads what is stored: a first delivery held for half
	// its ack wait (a pause, a backlog, higher priorities) may meanwhile
	// have been handed to another replica, as a redelivery may have been.
	a.blind = false
	moved := false
	for {
		e, err := w.Ledger.Update(work, a.ref, func(e *Entry) error {
			if e.Confirmed != nil || e.Calls > a.seen {
				return errMoved
			}
			// Counted from what this delivery knows, in case the entry
			// was lost meanwhile; a call stored ahead and not made is
			// this one.
			calls := a.seen + 1
			if a.unmade {
				calls = a.seen
			}
			a.countIn(e, calls)
			e.Replica = w.cfg.Name
			return nil
		})
		if err == nil {
			a.seen, a.word, a.unmade = e.Calls, time.Now(), false
			read := readIfLate
			switch {
			case moved:
				read = readOrGiveBack
			case a.calls > 0:
				read = readOrCall
			}
			if end, err := w.onTime(stop, work, a, pm, read); end != decided || err != nil || a.revoked != nil {
				return w.notMade(work, a, end, err)
			}
			a.callAt = time.Now()
			resp, err := w.apiOf(a.route).DeleteSigningKey(work, a.ev.AccountID, a.ev.KeyID)
			return resp, true, decided, err
		}
		if !errors.Is(err, errMoved) {
			return nil, false, decided, fmt.Errorf("not stored ahead in the ledger: %w", err)
		}
		w.learn(a, e)
		if a.revoked != nil {
			w.Log.Info("revoked by another delivery; recording it without a call", w.fields(a)...)
			return nil, false, decided, nil
		}
		moved = true // calls this delivery did not know of: their outcome is read before its call
	}
}

// notMade ends delete for a call stored ahead and then not made, as
// onTime ended it: taken back where it must be (retract), and, if a
// confirmation was found meanwhile, decided without an error, so that
// Handle records it.
func (w *Worker) notMade(work context.Context, a *attempt, end ending, err error) (*cloudflare.Response, bool, ending, error) {
	counted := a.seen
	w.retract(work, a, end, err)
	a.unmade = a.seen == counted && a.revoked == nil
	if a.revoked != nil && end == decided {
		return nil, false, decided, nil
	}
	return nil, false, end, err
}

// late reports whether a was held for half its ack wait: the broker may
// have handed the event to another replica meanwhile.
func (w *Worker) late(a *attempt) bool {
	return time.Since(a.start) >= a.d.AckWait()/2
}

// trailRead says whether a call stored ahead reads the event's record
// just before it starts (recordedMeanwhile): a call that may come after
// one does, since a record cannot count a call made after it.
type trailRead int

const (
	noTrailRead    trailRead = iota // a key list: no call of the event
	readIfLate                      // once held half the ack wait; a read that fails lets the call go
	readOrCall                      // a retry; a read that fails lets the call go: the revocation matters more than the count
	readOrGiveBack                  // after calls this delivery did not know of, whose end it must know: a read that fails gives the event back
)

// recordedMeanwhile reads the event's record before a call stored ahead
// (as read says): a delivery beside this one may have recorded the event
// meanwhile. If it has, or the read fails under readOrGiveBack, the call
// is taken back and the delivery settled, as recorded or given back; if
// taking it back finds a confirmation, it ends decided with the
// confirmation learned, and no call. done is false when the call may go.
func (w *Worker) recordedMeanwhile(work context.Context, a *attempt, read trailRead) (end ending, done bool) {
	prior, found, err := w.Records.Prior(work, a.ref)
	switch {
	case err != nil && read == readOrGiveBack:
		if w.takeBack(work, a); a.revoked != nil {
			return decided, true
		}
		w.giveBack(a, w.cfg.RetryMaxInterval, "outcome records not readable: "+err.Error())
		return settled, true
	case err != nil || !found:
		return decided, false
	}
	if w.takeBack(work, a); a.revoked != nil {
		return decided, true
	}
	w.settlePrior(a, prior)
	return settled, true
}

// onTime makes sure that the call just stored ahead may start now, on *pm
// or on a permit that replaces it (SPEC §6; §4, "The proof", point 4). A
// permit whose rate slot went by while the call was stored is late: a call
// started on it could come within a second of the rate's next calls, so it
// is given back, its slot spent, and the next one taken. And the server
// must have answered within half the ack wait (hasWord): after a long
// wait for a permit it is asked again. Before those checks, a call that
// may come after the event's record reads it (read, recordedMeanwhile),
// and is not made if there is one: then onTime ends settled, or decided
// with a confirmation learned. An error means it did not answer,
// or that slot after slot went by (errLate): no call, as when the write
// fails (the call is counted, and a later delivery reports it unanswered,
// unless retract takes it back).
func (w *Worker) onTime(stop, work context.Context, a *attempt, pm *permit, read trailRead) (ending, error) {
	var (
		readAt   time.Time
		readLate bool // the last read made its slot late
	)
	for late := 0; ; {
		if stop.Err() != nil {
			// Shutdown came while the call was stored: it is not in a
			// call yet, so none starts (SPEC §7); retract takes it back.
			return stopped, nil
		}
		// The record is read before the checks below, as it may take a
		// while: once per call, and again after a wait for a slot of a
		// quarter of the ack wait, but not on the slot after one the read
		// itself made late: a read on every slot could make each late.
		if (read == readOrCall || read == readOrGiveBack || read == readIfLate && w.late(a)) &&
			(readAt.IsZero() || !readLate && time.Since(readAt) >= a.d.AckWait()/4) {
			lateBefore := (*pm).Late()
			if end, done := w.recordedMeanwhile(work, a, read); done {
				return end, nil
			}
			readAt, readLate = time.Now(), !lateBefore && (*pm).Late()
			if stop.Err() != nil {
				return stopped, nil
			}
		} else {
			readLate = false
		}
		asked, err := w.hasWord(work, a)
		if err != nil {
			return decided, err
		}
		if stop.Err() != nil {
			return stopped, nil // shutdown came while the server was asked
		}
		if !(*pm).Late() {
			return decided, nil
		}
		// Only a slot made late by asking the server counts towards the
		// bound: that can repeat for ever; a slot missed by a slow write,
		// a read or a busy machine is taken again as often as it comes.
		if asked {
			if late++; late == maxLateSlots {
				return decided, fmt.Errorf("%w (%d slots)", errLate, maxLateSlots)
			}
		}
		w.Log.Debug("call's rate slot went by before it could start; it takes the next", w.fields(a)...)
		(*pm).Release()
		waitFrom := time.Now()
		next, err := w.reacquireHearing(stop, work, a)
		if err != nil {
			return stopped, nil
		}
		a.rewait += time.Since(waitFrom) // observed with the call's first wait
		*pm = next
	}
}

// reacquireHearing is reacquire for a's call, keeping the server's word
// fresh while it waits (a ledger read every quarter of the ack wait): a
// read made once the permit came would make it late again, and at a slow
// enough rate no permit would ever be on time.
func (w *Worker) reacquireHearing(stop, work context.Context, a *attempt) (permit, error) {
	every := a.d.AckWait() / 4
	if every <= 0 {
		return w.reacquire(stop, a.route, a.d.Priority(), a.aside())
	}
	ctx, cancel := context.WithCancel(work)
	heard := make(chan time.Time, 1)
	go func() {
		defer close(heard)
		t := time.NewTicker(every)
		defer t.Stop()
		var last time.Time
		for {
			select {
			case <-ctx.Done():
				heard <- last
				return
			case <-t.C:
				if _, err := w.Ledger.Load(ctx, a.ref); err == nil {
					last = time.Now()
				}
			}
		}
	}()
	pm, err := w.reacquire(stop, a.route, a.d.Priority(), a.aside())
	cancel()
	if last := <-heard; last.After(a.word) {
		a.word = last
	}
	return pm, err
}

// retract takes back the call just stored ahead and then not made because
// the delivery stopped or its slots kept going by (errLate), unless a call
// was counted after it: attempts count calls made. When the server went
// silent instead (errNoWord, or the write failed), a write would fail
// too, and only hold the permit: the call stays counted, and a later
// delivery reports it unanswered.
func (w *Worker) retract(work context.Context, a *attempt, end ending, err error) {
	if end != stopped && !errors.Is(err, errLate) {
		return
	}
	w.takeBack(work, a)
}

// takeBack takes back the call just stored ahead and not made, unless a
// call was counted after it.
func (w *Worker) takeBack(work context.Context, a *attempt) {
	e, err := w.Ledger.Update(work, a.ref, func(e *Entry) error {
		// With a confirmation there, the last call counted may be the
		// confirming one (an entry lost and written again counts from
		// what its writer knew): it stays counted, one too many at worst.
		if e.Calls != a.seen || e.Confirmed != nil {
			return errMoved
		}
		e.Calls--
		return nil
	})
	if err == nil {
		a.seen = e.Calls
	}
	// A confirmation kept meanwhile by another delivery is not left
	// behind; calls this delivery did not know of are for its next
	// write-ahead to find (errMoved).
	adopt(a, e.Confirmed)
}

// hasWord makes sure the server answered for the delivery within half the
// ack wait, asking it again (a ledger read) if not: a replica cut off from
// NATS, silently too, makes no call for a delivery JetStream may meanwhile
// hand to another replica (SPEC §4, "The proof", point 4). asked says
// whether it had to ask.
func (w *Worker) hasWord(work context.Context, a *attempt) (asked bool, err error) {
	if time.Since(a.word) < a.d.AckWait()/2 {
		return false, nil
	}
	if _, err := w.Ledger.Load(work, a.ref); err != nil {
		return true, fmt.Errorf("%w: %w", errNoWord, err)
	}
	a.word = time.Now()
	return true, nil
}

// proveAbsence turns a 404 into not_found only if a key list of the
// account, fetched after it arrived (at the event's priority, through the
// same gate), answers without the key (SPEC §4, "The proof", point 1).
func (w *Worker) proveAbsence(stop, work context.Context, a *attempt, at time.Time) (Decision, ending) {
	rewait := a.rewait
	list, fetched, waited, own, err := w.keyList(stop, work, a.route, a.ev.AccountID, a.d.Priority(), at,
		func(pm *permit) (ending, error) { return w.onTime(stop, work, a, pm, noTrailRead) })
	if own {
		w.metricsOf(a.route).Wait.Observe((waited + a.rewait - rewait).Seconds())
	}
	if list == nil && err == nil {
		return Decision{}, stopped
	}
	if errors.Is(err, errNoWord) || errors.Is(err, errLate) {
		return Decision{Kind: Unrecorded, Detail: "no key list made: " + err.Error()}, decided
	}
	var lrl cloudflare.RateLimit
	status := 0
	if list != nil && list.Response != nil {
		lrl, status = list.RateLimit, list.Status
	}
	d := ClassifyList(list, err, a.ev.KeyID)
	if list != nil {
		w.followQuota(a.route, list.Response)
	}
	w.pace(a.route, lrl)
	w.heed(a.route, d, status, unanswered(work, status, err))
	result := metrics.AbsenceFailed
	switch d.Kind {
	case NotFound:
		result = metrics.AbsenceAbsent
		a.absentAt = fetched
		// The DELETE's own words (its 404's codes and messages) stay in
		// the detail (SPEC §5).
		d.Detail = a.last.Detail + "; the key list fetched after it does not hold the key"
	case StillListed:
		result = metrics.AbsenceListed
	}
	if own {
		// Counted once per list fetched (SPEC §8), by the 404 that fetched it.
		w.Metrics.AbsenceChecks.WithLabelValues(result).Inc()
	}
	return d, decided
}

// checkBeforeNotFound reads the event's calls and records once more before
// a not_found or a dead letter is recorded: a confirmation heard by another
// delivery beats it (SPEC §4, "The proof", point 3).
func (w *Worker) checkBeforeNotFound(stop, work context.Context, a *attempt) ending {
	e, err := w.Ledger.Load(work, a.ref)
	if err != nil {
		w.giveBack(a, w.cfg.RetryMaxInterval, "ledger not readable: "+err.Error())
		return settled
	}
	w.learn(a, e)
	if a.revoked != nil {
		return decided
	}
	prior, found, err := w.Records.Prior(work, a.ref)
	if err != nil {
		w.giveBack(a, w.cfg.RetryMaxInterval, "outcome records not readable: "+err.Error())
		return settled
	}
	if found {
		w.settlePrior(a, prior)
		return settled
	}
	return decided
}

// listKey names the key lists that can be shared: one account, one
// priority, so that no urgent proof waits on a scheduled list's permit;
// one credential, as a reload left it (Route.Identity), so that a 404
// heard through one is proven by a list through the same, charged to the
// same budget (SPEC §4, point 1).
type listKey struct {
	account            string
	priority           int
	credential, secret string
}

// listing is one key list, shared by every 404 of its account that
// arrived before it was fetched.
type listing struct {
	started time.Time // when the request went out; zero while waiting for a permit
	sharers int       // other 404s waiting for it
	done    chan struct{}
	list    *cloudflare.KeyList
	err     error
}

// keyList returns a key list of account fetched after `after`, sharing one
// under way when it qualifies; fetched is when its request went out. A
// list it fetches itself (own) goes out only once ready, called with the
// permit held (and free to replace it), says so; waited is how long the
// permit took. A nil list with a nil error means stop ended first.
func (w *Worker) keyList(stop, work context.Context, route Route, account string, priority int, after time.Time,
	ready func(*permit) (ending, error)) (list *cloudflare.KeyList, fetched time.Time, waited time.Duration, own bool, err error) {
	k := listKey{account, priority, route.Credential, route.Identity}
	w.listMu.Lock()
	l := w.lists[k]
	if l != nil && (l.started.IsZero() || l.started.After(after)) {
		l.sharers++
		w.listMu.Unlock()
		select {
		case <-l.done:
			return l.list, l.started, 0, false, l.err
		case <-stop.Done():
			return nil, time.Time{}, 0, false, nil
		}
	}
	l = &listing{done: make(chan struct{})}
	w.lists[k] = l
	w.listMu.Unlock()
	defer func() {
		w.listMu.Lock()
		if w.lists[k] == l {
			delete(w.lists, k)
		}
		w.listMu.Unlock()
		close(l.done)
	}()

	waitFrom := time.Now()
	permit, err := w.acquire(stop, route, priority, nil)
	waited = time.Since(waitFrom)
	if err != nil {
		l.err = err
		return nil, time.Time{}, waited, true, nil
	}
	defer func() { permit.Release() }() // ready may replace it
	end, err := ready(&permit)
	if end != decided {
		l.err = context.Canceled // sharers retry, as after any list that failed
		return nil, time.Time{}, waited, true, nil
	}
	if err != nil {
		l.err = err
		return nil, time.Time{}, waited, true, err
	}
	w.listMu.Lock()
	l.started = time.Now()
	w.listMu.Unlock()
	w.metricsOf(route).Calls.Inc()
	l.list, l.err = w.apiOf(route).ListSigningKeys(work, account)
	return l.list, l.started, waited, true, l.err
}

// followQuota spaces the calls of r's budget to the quota the API states
// (Ratelimit-Policy) where it is lower than the configured rate (SPEC §6):
// the budget's rate itself is lowered, for every replica, so calls already
// started, whose answers have not come, cannot take it past the quota.
func (w *Worker) followQuota(r Route, resp *cloudflare.Response) {
	if resp != nil && resp.Policy.Known {
		w.gate(r).Quota(resp.Policy.PerSecond())
	}
}

// gate is the gate of r's budget.
func (w *Worker) gate(r Route) *throttle.Gate {
	if r.Gate != nil {
		return r.Gate
	}
	return w.Gate
}

// apiOf is what calls the API for r.
func (w *Worker) apiOf(r Route) API {
	if r.API != nil {
		return r.API
	}
	return w.API
}

// metricsOf is the collectors of r's budget.
func (w *Worker) metricsOf(r Route) metrics.Budget {
	if r.Budget.Calls != nil {
		return r.Budget
	}
	return w.budget
}

// permit is leave to make one call: the worker's own gate's, or a
// budget's and the shared gate's.
type permit interface {
	Release()
	// Late: the call may no longer start on it (throttle.Permit.Late).
	Late() bool
}

// acquire waits for leave to call on route at priority p: with a budget
// of its own, first the budget's rate (so an account never waits behind
// another budget's backlog or hold), then the shared calls in flight and
// address limit. While it waits for its budget, aside (when not nil) lets
// the delivery's place in hand go to the events behind it, another
// budget's among them (SPEC §9).
func (w *Worker) acquire(ctx context.Context, r Route, p int, aside throttle.Aside) (permit, error) {
	return w.acquireFrom(ctx, r, p, aside, w.Gate.Acquire, throttle.AcquirePairAside)
}

// acquireRouted is acquire for a's route, given up when the routes change
// meanwhile, and again when its route changed while the permit was
// granted: a reload may move the account to another credential and
// budget, and the event must neither wait out the old one's hold nor call
// with its token (SPEC §6: the account picks the credential; §9). moved is
// true then, with no permit held, and a's route is to be looked up again.
func (w *Worker) acquireRouted(stop context.Context, a *attempt) (pm permit, moved bool, err error) {
	if a.seen == 0 {
		// Events' first calls are served as the events were stored; a
		// call after one (a retry, a redelivery) queues as it comes, so
		// that an earlier event failing again and again cannot keep later
		// events from their first call.
		stop = throttle.InOrder(stop, a.ref.Seq)
	}
	rr, ok := w.Routes.(Rerouter)
	if !ok {
		pm, err = w.acquire(stop, a.route, a.d.Priority(), a.aside())
		return pm, false, err
	}
	changed := rr.Changed()
	ctx, cancel := context.WithCancel(stop)
	defer cancel()
	watched := make(chan struct{})
	defer close(watched)
	go func() {
		select {
		case <-changed:
			cancel()
		case <-watched:
		}
	}()
	pm, err = w.acquire(ctx, a.route, a.d.Priority(), a.aside())
	if err != nil {
		if stop.Err() == nil && isClosed(changed) {
			return nil, true, nil
		}
		return nil, false, err
	}
	if r, ok := w.Routes.Route(a.ev.AccountID); !ok || r.Credential != a.route.Credential || r.Identity != a.route.Identity {
		pm.Release()
		return nil, true, nil
	}
	return pm, false, nil
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// reacquire is acquire for a call whose permit went by before it could
// start (permit.Late): first in line, so it keeps its place.
func (w *Worker) reacquire(ctx context.Context, r Route, p int, aside throttle.Aside) (permit, error) {
	return w.acquireFrom(ctx, r, p, aside, w.Gate.Reacquire, throttle.ReacquirePairAside)
}

func (w *Worker) acquireFrom(ctx context.Context, r Route, p int, aside throttle.Aside,
	one func(context.Context, int) (*throttle.Permit, error),
	pair func(context.Context, *throttle.Gate, *throttle.Gate, int, throttle.Aside) (throttle.Pair, error)) (permit, error) {
	if r.Gate == nil || r.Gate == w.Gate {
		pm, err := one(ctx, p)
		if err != nil {
			return nil, err
		}
		return pm, nil
	}
	pm, err := pair(ctx, r.Gate, w.Gate, p, aside)
	if err != nil {
		return nil, err
	}
	return pm, nil
}

// minHeededReset: rate-limit headers count whole seconds, so over a window
// of a few seconds they cannot pace calls more finely than our own limiter;
// they pace calls over longer windows, such as Cloudflare's five minutes.
// A window with nothing left is a hold whatever its length (SPEC §4).
const minHeededReset = 5 * time.Second

// pace applies what an answer's rate-limit headers say of r's budget:
// nothing left holds every call of it until the reset, however short, as
// a hold the API asks for (shared, shown, logged: SPEC §4, §9).
func (w *Worker) pace(r Route, rl cloudflare.RateLimit) {
	if rl.Known && rl.Remaining == 0 && rl.Reset > 0 {
		w.gate(r).Hold(rl.Reset, throttle.CauseRateHeader)
		return
	}
	if rl.Known && rl.Reset >= minHeededReset {
		// Spread what is left over the rest of the window when it cannot
		// sustain our rate until the reset (with no limit of our own, always).
		rate := w.cfg.RateLimit
		if r.Gate != nil {
			rate = r.Rate
		}
		if rate == 0 || float64(rl.Remaining) < rate*rl.Reset.Seconds() {
			w.gate(r).Slow(time.Now().Add(rl.Reset / time.Duration(rl.Remaining+1)))
		}
	}
}

// unreachablePrefix begins condition api's reason while calls get no
// answer, as against the API answering without its envelope.
const unreachablePrefix = "the API cannot be reached: "

// unreachableFor is how long condition api stays unmet after the last call
// that got no answer, when no call answers meanwhile: an idle worker has
// no other way to learn that the API is back.
func (w *Worker) unreachableFor() time.Duration {
	return max(2*w.cfg.RetryMaxInterval, minUnreachableFor)
}

// minUnreachableFor is unreachableFor's least: a minute's alert should
// not fire for one call a moment's trouble left unanswered.
var minUnreachableFor = 30 * time.Second

// unanswered reports whether a call or key list that ended with err and
// status got no HTTP answer at all: not one given up, by this delivery's
// end (work) or by another's (a list it shared, cancelled), which heard
// nothing of the API.
func unanswered(work context.Context, status int, err error) bool {
	return status == 0 && err != nil && work.Err() == nil && !errors.Is(err, context.Canceled)
}

// heed applies what a decided answer says about the API as a whole:
// whether our credential works, and whether the API is there. noAnswer
// says the call got no HTTP answer at all (and was not given up by this
// worker): the API cannot be reached.
func (w *Worker) heed(r Route, d Decision, status int, noAnswer bool) {
	w.credMu.Lock()
	defer w.credMu.Unlock()
	// Any 401 or 403 means the credential is in doubt, whatever
	// x-should-retry made of the event.
	refused := d.Kind == Unauthorized || status == 401 || status == 403
	works := d.Kind == Revoked || d.Kind == NotFound || d.Kind == StillListed
	cond := ReadyCredentialOf(r.Credential)
	// The condition itself is the state, whoever set it (a call, a
	// credential's check, an earlier worker on a connection given up).
	switch {
	case refused && w.Ready.Met(cond):
		// Not for a credential a reload took out meanwhile.
		if w.Ready.Update(cond, "the API refused the credential: "+d.Detail) {
			w.Log.Error("the API refused the credential; not ready until a call succeeds",
				zap.String("credential", r.Credential), zap.String("detail", d.Detail))
		}
	case works && !w.Ready.Met(cond):
		w.Ready.Update(cond, "")
		w.Log.Info("the API accepts the credential again", zap.String("credential", r.Credential))
	}
	// So is condition api: a worker on an earlier connection may have set it.
	why := w.Ready.Why(ReadyAPI)
	unreachable := strings.HasPrefix(why, unreachablePrefix)
	switch {
	case d.Kind == NoAPI && (why == "" || unreachable):
		w.Ready.Set(ReadyAPI, "the API is not where it should be: "+d.Detail)
		w.Log.Error("the API answers without its envelope; check CLOUDFLARE_BASE_URL and the way to the API; not ready until it answers",
			zap.String("detail", d.Detail))
	case noAnswer && (why == "" || unreachable):
		if why == "" {
			w.Log.Error("the API cannot be reached; not ready until it answers", zap.String("detail", d.Detail))
		}
		// Met again once no call, of this worker or of another on a
		// later connection, has gone unanswered for a while.
		every := w.unreachableFor()
		w.Ready.Lapse(ReadyAPI, unreachablePrefix+d.Detail, every, func() {
			w.Log.Info("no call has gone unanswered for a while; ready again", zap.Duration("for", every))
		})
	case unreachable && status != 0,
		why != "" && status != 0 && d.Kind != NoAPI && d.Kind != Retry:
		w.Ready.Set(ReadyAPI, "")
		w.Log.Info("the API answers again")
	}
}

// confirmed makes the API's confirmation durable before anything else, so
// no later delivery can call again and record a 404 in its place: in the
// outcome record itself, which a later delivery finds, or while that cannot
// be written, in the ledger. Then it acks.
func (w *Worker) confirmed(stop, work context.Context, a *attempt) {
	if a.revoked == nil {
		a.revoked = &Call{Status: a.status, CFRay: a.cfRay, At: time.Now(), Credential: a.route.Credential}
		observe(a.lane.Latency, time.Since(a.d.StoredAt()).Seconds(), a.work)
	}
	// The trail's first tries end when shutdown begins (or are not made
	// after): each may hang until its own timeout, longer than the time
	// left, and the ledger below must not wait for them (SPEC §4, "The
	// proof", point 6). A record they stored meanwhile is found by the
	// tries below, which read what is there.
	if stop.Err() == nil && (w.firstRecord(work, stop, a) || w.writeOnceUntil(stop, work, a)) {
		return
	}
	// The trail refused it, or shutdown came. The ledger is asked to keep it, in a loop of
	// its own, while this one asks the trail again: neither store, hanging
	// until its timeout, holds the other back (SPEC §4, "The proof", point
	// 6: lost only when both refuse for the whole shutdown timeout). The
	// ledger's writes work on a copy of what the delivery knows, as the
	// trail's may learn more meanwhile; a record written settles the event.
	keeping, stopKeeping := context.WithCancel(work)
	defer stopKeeping()
	kept, swept, kdone := make(chan struct{}), make(chan struct{}), make(chan struct{})
	snap := *a
	go func() {
		defer close(kdone)
		b := recordBackoff()
		for i := 0; ; i++ {
			err := error(nil)
			if !snap.kept {
				if err = w.keepConfirmation(keeping, &snap); err == nil {
					close(kept)
				}
			}
			if snap.kept {
				// And the record itself, for the sweep: only a later
				// delivery reads the entry.
				if err = w.Ledger.Unrecorded(keeping, w.record(&snap, event.Revoked, "")); err == nil {
					close(swept)
					return
				}
			}
			if i == 0 && keeping.Err() == nil {
				w.Log.Error("revocation not written; holding the event and retrying", w.fields(&snap, zap.Error(err))...)
			}
			if !throttle.Sleep(keeping, b.NextBackOff()) {
				return
			}
		}
	}()
	isKept := func() bool {
		select {
		case <-kept:
			a.kept = true // durably then waits for the record only until shutdown
		default:
		}
		return a.kept
	}
	recorded := w.durably(stop, work, a, "outcome record", func(ctx context.Context, a *attempt) error {
		isKept()
		if w.writeOutcome(stop, ctx, a, event.Revoked, "", a.d.Ack, true) {
			return nil
		}
		isKept()
		if a.recordErr != nil {
			return fmt.Errorf("%w; the ledger is asked to keep the confirmation meanwhile", a.recordErr)
		}
		return errNotRecorded
	})
	if recorded {
		stopKeeping()
	}
	<-kdone
	switch {
	case recorded:
	case isSwept(swept):
		w.Log.Error("the API revoked the key, but the outcome record could not be stored before shutdown; the ledger keeps the record, and a sweep of the trail writes it",
			w.fields(a, zap.String("outcome", string(event.Revoked)))...)
	case isKept() && !a.orphaned && w.comesAgain(a):
		// The ledger holds it, and the event's next delivery reads it.
	case w.carry(a):
		// The connection ended, not the process: the next one stores it.
	case !isKept():
		w.Metrics.ConfirmationsLost.Inc()
		w.Log.Error("CONFIRMATION LOST: the API revoked the key, but neither the outcome record nor the ledger could store it before shutdown",
			w.fields(a, zap.String("outcome", string(event.Revoked)))...)
	default:
		// The ledger holds it, but only a later delivery of the event
		// reads the ledger, and none will come: another delivery finished
		// the event (its record, a not_found say, stands in the trail), or
		// the broker cannot say that it still holds it.
		w.Metrics.ConfirmationsLost.Inc()
		w.Log.Error("CONFIRMATION LOST: the API revoked the key and the ledger holds it, but the outcome record could not be stored before shutdown and no later delivery of the event will record it",
			w.fields(a, zap.String("outcome", string(event.Revoked)))...)
	}
}

// carry hands a's confirmation to the process's next connection, which
// stores it before it fetches anything, and reports whether it did: not
// without a Carryover, nor once the process stops.
func (w *Worker) carry(a *attempt) bool {
	if !w.Carryover.carry(a.ref, w.record(a, event.Revoked, ""), a.revoked) {
		return false
	}
	w.Log.Warn("the connection ended before the confirmation was stored; the next connection stores it before it fetches anything",
		w.fields(a, zap.String("outcome", string(event.Revoked)))...)
	return true
}

// writeOnceUntil tries once to store a's revoked record, in the event's
// trace (work's), giving up when stop ends.
func (w *Worker) writeOnceUntil(stop, work context.Context, a *attempt) bool {
	ctx, cancel := context.WithCancel(work)
	defer cancel()
	defer context.AfterFunc(stop, cancel)()
	return w.writeOutcome(stop, ctx, a, event.Revoked, "", a.d.Ack, true)
}

// isSwept reports whether swept is closed: the ledger keeps the record for
// the sweep.
func isSwept(swept chan struct{}) bool {
	select {
	case <-swept:
		return true
	default:
		return false
	}
}

// heldTimeout bounds asking the broker, at shutdown, whether it still holds
// an event.
const heldTimeout = 2 * time.Second

// comesAgain reports whether the broker still holds a's event, so that a
// later delivery will come and find what this one left in the ledger; false
// when it cannot tell. Asked once the delivery's time is up, it has a
// bound of its own.
func (w *Worker) comesAgain(a *attempt) bool {
	ctx, cancel := lastWord(a.work, heldTimeout)
	defer cancel()
	held, err := a.d.Held(ctx)
	if err != nil {
		w.Log.Warn("cannot tell whether the broker still holds the event", w.fields(a, zap.Error(err))...)
	}
	return held && err == nil
}

// firstRecord stores the revoked record of a first delivery held briefly
// (writeOutcome spares it the ledger's read) the way of the common case, a
// key's first record, when Records can (FirstRecords): the event is then
// acked, counted and logged where the stream's answers are read, as done
// does, one event after another, and this goroutine only told. It reports
// false, having settled nothing, when the record was not stored that way:
// it is then written as any other, reading what is there.
func (w *Worker) firstRecord(work, stop context.Context, a *attempt) bool {
	fr, ok := w.Records.(FirstRecords)
	if !ok || !a.d.First() || w.late(a) {
		return false
	}
	_, span := tracing.StartRecordWrite(work, "outcome")
	var (
		mu     sync.Mutex
		gaveUp bool // stop ended first: the answer settles nothing
	)
	stored := make(chan error, 1)
	if !fr.FirstOutcome(w.record(a, event.Revoked, ""), func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if gaveUp {
			return
		}
		if err == nil {
			w.done(a, event.Revoked, "", a.d.Ack)
		}
		stored <- err
	}) {
		tracing.End(span, nil)
		return false
	}
	var err error
	select {
	case err = <-stored:
	case <-stop.Done():
		// Shutdown began: the answer, if it comes, settles nothing; a
		// record stored meanwhile is found by the writes that follow, or
		// by the event's next delivery.
		mu.Lock()
		gaveUp = true
		mu.Unlock()
		select {
		case err = <-stored: // told just before
		default:
			err = stop.Err()
		}
	}
	tracing.End(span, err)
	return err == nil
}

// refreshTimeout bounds the ledger read before a revoked record once
// shutdown has come: only a refinement of the record's counts, it must not
// use up the shutdown timeout while the ledger hangs. Before that it has
// the ledger's own timeout, as a busy ledger's read can take seconds.
const refreshTimeout = time.Second

// errNotRecorded: the revoked record was not written on this try; the
// ledger is asked to keep the confirmation meanwhile.
var errNotRecorded = errors.New("the outcome record was not written; the ledger is asked to keep the confirmation meanwhile")

// observe records v in h, with the event's trace as an exemplar when it
// is kept (SPEC §13).
func observe(h prometheus.Observer, v float64, ctx context.Context) {
	if labels := tracing.ExemplarLabels(ctx); labels != nil {
		if eo, ok := h.(prometheus.ExemplarObserver); ok {
			eo.ObserveWithExemplar(v, labels)
			return
		}
	}
	h.Observe(v)
}

// keepConfirmation stores a's confirmation in the ledger, and the answers
// this delivery heard: the confirming call among them is no unanswered
// call for the delivery that records it. Answered is raised to what this
// delivery knows, never added to, so a retried write counts no answer
// twice (counting too few only makes a call look unanswered).
func (w *Worker) keepConfirmation(ctx context.Context, a *attempt) error {
	_, err := w.Ledger.Update(ctx, a.ref, func(e *Entry) error {
		a.countIn(e, a.seen)
		e.Answered = min(max(e.Answered, a.answered+a.heard), e.Calls)
		e.Confirmed = a.revoked
		return nil
	})
	if err == nil {
		a.kept = true
	}
	return err
}

// finish writes the outcome record and only then settles the message with
// settle (ack or term): the audit trail never misses an acked event.
func (w *Worker) finish(stop, work context.Context, a *attempt, outcome event.Outcome, reason event.Reason, settle func() error) {
	w.writeOutcome(stop, work, a, outcome, reason, settle, false)
}

// writeOutcome writes the outcome record, retrying while the delivery is
// kept alive (once only, with once), then settles as the trail believes.
// It reports whether the record was written.
func (w *Worker) writeOutcome(stop, work context.Context, a *attempt, outcome event.Outcome, reason event.Reason, settle func() error, once bool) bool {
	var rec, believed event.Record
	write := func(ctx context.Context, a *attempt) (err error) {
		ctx, span := tracing.StartRecordWrite(ctx, "outcome")
		defer func() { tracing.End(span, err) }()
		if !a.d.First() || w.late(a) {
			// Held this long, the event may have been handed to another
			// replica meanwhile; and a later delivery may have an earlier
			// one, back from a cut, calling beside it: the record counts
			// their calls (and a confirmation) too, whatever its outcome.
			// A first delivery held briefly has neither, and is spared
			// the read. Only a refinement: a ledger that cannot be read
			// must not keep the record out of the trail.
			lctx, cancel := ctx, context.CancelFunc(func() {})
			if stop.Err() != nil {
				// Shutdown came: the ledger read must not use up the
				// time left for the record while the ledger hangs.
				lctx, cancel = context.WithTimeout(ctx, refreshTimeout)
			}
			if e, lerr := w.Ledger.Load(lctx, a.ref); lerr == nil {
				w.learn(a, e)
				if a.revoked != nil && outcome != event.Revoked {
					// A confirmation another delivery kept, and gave
					// the event back before its record was written: it
					// beats this outcome (SPEC §4, "The proof", point 3).
					if outcome == event.DeadLettered {
						w.Log.Warn("revoked by another delivery after this one stored its dead letter: recording the revocation; the dead letter stays, and a replay of it would find the key gone",
							w.fields(a, zap.String("reason", string(reason)))...)
					}
					outcome, reason, settle = event.Revoked, "", a.d.Ack
				}
			}
			cancel()
		}
		rec = w.record(a, outcome, reason)
		believed, err = w.Records.Outcome(ctx, rec)
		switch {
		case errors.Is(err, ErrNoTrail) && a.revoked != nil:
			// No trail to hold the confirmation: the ledger must.
			believed = rec
			return w.keepConfirmation(ctx, a)
		case errors.Is(err, ErrNoTrail):
			believed = rec
			return nil
		case err != nil:
			if ctx.Err() == nil { // not a write cut short by shutdown
				w.Metrics.OutcomeFailures.Inc()
			}
			a.recordErr = err
		}
		return err
	}
	if once {
		if write(work, a) != nil {
			return false
		}
	} else if !w.durably(stop, work, a, "outcome record", write) {
		return true
	}
	if believed.Outcome != rec.Outcome && a.decoded {
		// Another delivery finished the event first; its record stands.
		w.settlePrior(a, believed)
		return true
	}
	w.done(a, outcome, reason, settle)
	return true
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
	a.status, a.cfRay, a.seen = prior.Status, prior.CFRay, max(a.seen, prior.Attempts)
	settle := a.d.Ack
	if prior.Outcome == event.DeadLettered {
		settle = a.d.Term
	}
	w.Log.Info("finished by another delivery; settling it as recorded", w.fields(a, zap.String("outcome", string(prior.Outcome)))...)
	w.done(a, prior.Outcome, prior.Reason, settle)
}

// deadLetter writes the dead-letter record, then the outcome record, and
// only then terminates the original.
func (w *Worker) deadLetter(stop, work context.Context, a *attempt, reason event.Reason, detail string) {
	if a.decoded && a.revoked == nil && (a.seen > 0 || !a.d.First() || w.late(a)) {
		// Calls were made, or may have been beside this delivery: one of
		// them, heard elsewhere, may have revoked the key. A confirmation
		// beats a dead letter (SPEC §4, "The proof", point 3).
		switch w.checkBeforeNotFound(stop, work, a) {
		case settled:
			return
		case decided:
			if a.revoked != nil {
				w.confirmed(stop, work, a)
				return
			}
		}
	}
	rec := event.DeadLetter{
		Reason: reason, Detail: detail,
		Status: a.status, Called: a.attempts() > 0, Attempts: a.attempts(),
		EventID: a.id, Stream: a.d.Stream(), Subject: a.d.Subject(), TraceID: a.traceID,
		Sequence: a.d.Sequence(), FailedAt: time.Now(),
		// What a replay needs to be read as this delivery was.
		ContentType: a.d.Header("Content-Type"),
	}
	tracing.Inject(a.work, func(name, value string) {
		switch name {
		case "traceparent":
			rec.TraceParent = value
		case "tracestate":
			rec.TraceState = value
		}
	})
	if !w.durably(stop, work, a, "dead-letter record", func(ctx context.Context, a *attempt) (err error) {
		ctx, span := tracing.StartRecordWrite(ctx, "dead_letter")
		defer func() { tracing.End(span, err) }()
		return w.Records.DeadLetter(ctx, rec, a.d.Body())
	}) {
		return
	}
	w.Metrics.DeadLetters.WithLabelValues(string(reason)).Inc()
	settle := a.d.Term
	if !a.decoded && !a.ref.Stored.IsZero() { // without its storing time, no delivery could believe the mark
		settle = func() error {
			// Its records are stored: kept for a later delivery to find
			// (invalid). Best effort, bounded, at shutdown too: if it
			// cannot be kept, only a delivery after the duplicate window
			// would store them again, which is all the more reason to
			// terminate the message now.
			ctx, cancel := context.WithTimeout(context.WithoutCancel(work), markTimeout)
			defer cancel()
			if _, err := w.Ledger.Update(ctx, a.ref, func(e *Entry) error {
				e.DeadLettered = event.InvalidEvent
				return nil
			}); err != nil {
				w.Log.Warn("dead-lettered invalid event not kept in the ledger; a delivery after the duplicate window would dead-letter it again",
					w.fields(a, zap.Error(err))...)
			}
			return a.d.Term()
		}
	}
	w.finish(stop, work, a, event.DeadLettered, reason, settle)
}

// markTimeout bounds the write that keeps an invalid event's dead letter
// in the ledger before its Term.
const markTimeout = 2 * time.Second

// retryBackOff is the waits between one delivery's calls: exponential,
// from initial, with jitter, and never longer than max (SPEC §4: the
// longest backoff is REVOKER_RETRY_MAX_INTERVAL). The library caps the
// interval before its jitter, which may add half of it again.
func retryBackOff(initial, max time.Duration) func() time.Duration {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(initial),
		backoff.WithMaxInterval(max),
		backoff.WithMaxElapsedTime(0), // the delivery's budget is kept by its caller, without pauses
	)
	return func() time.Duration { return min(b.NextBackOff(), max) }
}

// recordBackoff spaces the tries of a record write.
func recordBackoff() *backoff.ExponentialBackOff {
	return backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(recordRetry.initial),
		backoff.WithMaxInterval(recordRetry.max),
		backoff.WithMaxElapsedTime(0),
	)
}

// durably runs write until it succeeds, retrying with backoff while the
// delivery is kept alive. If shutdown comes first, it tries until the work
// context ends (the shutdown timeout) and then gives the event back (the
// ledger spares the next delivery a second call); it reports whether the
// write succeeded.
func (w *Worker) durably(stop, work context.Context, a *attempt, what string, write func(context.Context, *attempt) error) bool {
	b := recordBackoff()
	for i := 0; ; i++ {
		err := write(work, a)
		if err == nil {
			if i > 0 {
				w.Log.Info(what+" written after retries", w.fields(a, zap.Int("tries", i+1))...)
			}
			return true
		}
		if i == 0 {
			w.Log.Error(what+" not written; holding the event and retrying", w.fields(a, zap.Error(err))...)
		}
		wait := stop
		if a.revoked != nil && (!a.kept || a.orphaned) {
			// A confirmation not yet durable is worth the whole shutdown
			// timeout.
			wait = work
		}
		if wait.Err() != nil || !throttle.Sleep(wait, b.NextBackOff()) {
			if a.revoked != nil && a.kept && !a.orphaned && work.Err() == nil && !w.comesAgain(a) {
				// Only a later delivery reads the ledger's copy, and none
				// will come: the trail is the only place left for it.
				a.orphaned = true
				continue
			}
			if err := write(work, a); err == nil {
				return true
			}
			w.giveBack(a, w.cfg.HandBackDelay, what+" not written before shutdown")
			return false
		}
	}
}

// giveBack returns the event to the broker for a later delivery, leaving
// in the ledger how many of this delivery's calls were answered, and what
// the last of them got.
func (w *Worker) giveBack(a *attempt, delay time.Duration, why string) {
	if (a.calls > 0 || a.unmade) && a.revoked == nil {
		ctx, cancel := lastWord(a.work, 2*time.Second)
		// Compare-and-swap: another replica's confirmation is kept.
		_, err := w.Ledger.Update(ctx, a.ref, func(e *Entry) error {
			a.countIn(e, a.seen)
			if a.unmade && e.Calls == a.seen && e.Confirmed == nil {
				e.Calls-- // stored ahead, never made, and the last counted
			}
			e.Answered = min(e.Answered+a.heard, e.Calls)
			// Status 0: the last call got no answer.
			e.Last = &Call{Status: a.status, CFRay: a.cfRay, At: time.Now()}
			return nil
		})
		cancel()
		if err != nil {
			w.Log.Warn("answered calls not stored", w.fields(a, zap.Error(err))...)
		}
	}
	if err := a.d.GiveBack(delay); err != nil {
		w.Log.Warn("give back failed; the event comes back after its ack wait", w.fields(a, zap.Error(err))...)
	}
	a.lane.Processed(string(event.Requeued))
	w.Log.Warn("event requeued", w.fields(a, zap.String("outcome", string(event.Requeued)),
		zap.String("why", why), zap.Duration("delay", delay))...)
}

// lastWordGrace is how long a delivery's last request to the server (a
// write before its give-back, asking whether the broker still holds it)
// may outlast its work: one made as the shutdown timeout ends gets that
// much, so that a server that answers at once is still heard, and one that
// does not holds the process no longer (SPEC §7).
const lastWordGrace = 100 * time.Millisecond

// lastWord bounds a delivery's last request to the server by d, and by the
// end of its work with lastWordGrace.
func lastWord(work context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(work), d)
	stopWatch := context.AfterFunc(work, func() { time.AfterFunc(lastWordGrace, cancel) })
	return ctx, func() {
		stopWatch()
		cancel()
	}
}

// record is the outcome record of a.
func (w *Worker) record(a *attempt, outcome event.Outcome, reason event.Reason) event.Record {
	r := event.Record{
		// Cut as in the dead-letter record and the logs (SPEC §10), so the
		// three name the event alike.
		EventID: untrusted.Chars(a.id, maxLoggedID), TraceID: a.traceID,
		Outcome: outcome, Reason: reason,
		Status: a.status, CFRay: a.cfRay, Attempts: a.attempts(),
		Stream: a.d.Stream(), Subject: a.d.Subject(), Sequence: a.d.Sequence(),
		PublishedAt:     a.d.StoredAt().UTC().Format(time.RFC3339Nano),
		CompletedAt:     time.Now().UTC().Format(time.RFC3339Nano),
		Worker:          w.cfg.Name,
		Credential:      a.route.Credential,
		ReplayOf:        w.replayOf(a),
		UnansweredCalls: a.unanswered(),
	}
	if a.revoked != nil {
		// Whatever happened afterwards, the record names the call that
		// revoked the key, and the credential it was made with.
		r.Outcome, r.Reason, r.Status, r.CFRay = event.Revoked, "", a.revoked.Status, a.revoked.CFRay
		if a.revoked.Credential != "" {
			r.Credential = a.revoked.Credential
		}
	} else if !a.absentAt.IsZero() {
		r.AbsenceCheckedAt = a.absentAt.UTC().Format(time.RFC3339Nano)
	}
	r.AccountID, r.KeyID = a.filedUnder()
	if a.decoded {
		r.RequestedBy = a.ev.RequestedBy
		if !a.ev.RequestedAt.IsZero() {
			r.RequestedAt = a.ev.RequestedAt.Format(time.RFC3339Nano)
		}
	}
	return r
}

// filedUnder is the account and key the event's records and log lines
// name: its own, or for an invalid event those of its ids that pass their
// rule (SPEC §5a), which the decoder alone kept, and event.NoKey for the
// others.
func (a *attempt) filedUnder() (account, key string) {
	if a.decoded {
		return a.ev.AccountID, a.ev.KeyID
	}
	account, key = event.NoKey, event.NoKey
	if cloudflare.ValidIdentifier(a.ev.AccountID) {
		account = a.ev.AccountID
	}
	if cloudflare.ValidIdentifier(a.ev.KeyID) {
		key = a.ev.KeyID
	}
	return account, key
}

// replayOf is the dead letter the delivery replays, only when the replay's
// own mark says so: anyone who may publish could set the header.
func (w *Worker) replayOf(a *attempt) string {
	claimed := a.d.ReplayOf()
	if claimed == "" || w.Replays == nil {
		return ""
	}
	// Asked once: the record waits for the answer, and at shutdown the
	// ledger's keeping of a confirmation waits for the record's first
	// tries (SPEC §4, "The proof", point 6). A claim left out is logged.
	ok, err := w.Replays.Take(a.work, a.d.ID(), claimed, a.d.Body(), a.d.Sequence(), a.d.Subject(), a.d.Header("Content-Type"))
	switch {
	case ok && err != nil:
		w.Log.Error("the event replays a dead letter, which could not be removed: it stays in the dead-letter stream (a replay run again says so, and republishes nothing)",
			w.fields(a, zap.Error(err))...)
	case err != nil:
		w.Log.Warn("the event claims to replay a dead letter, but the replays' marks cannot be read; replay_of left out",
			w.fields(a, zap.String("claimed", untrusted.Chars(claimed, maxLoggedID)), zap.Error(err))...)
		return ""
	case !ok:
		w.Log.Warn("the event claims to replay a dead letter, but no replay left its mark; replay_of left out",
			w.fields(a, zap.String("claimed", untrusted.Chars(claimed, maxLoggedID)))...)
		return ""
	}
	return claimed
}

// Bounds of what a log line carries from an event or an answer, so that no
// line grows past 16 KiB whatever they hold.
const (
	maxLoggedID     = event.MaxRecordedID
	maxLoggedText   = 1024
	maxLoggedDetail = 2048
)

// fields are the log fields that identify a delivery and its last call.
func (w *Worker) fields(a *attempt, extra ...zap.Field) []zap.Field {
	d := a.d
	f := make([]zap.Field, 0, 16+len(extra))
	f = append(f,
		zap.String("event_id", untrusted.Chars(a.id, maxLoggedID)),
		zap.String("subject", d.Subject()),
		zap.Uint64("sequence", d.Sequence()),
		zap.Int("delivery", d.Delivered()),
	)
	if r := d.ReplayOf(); r != "" {
		f = append(f, zap.String("replay_of", untrusted.Chars(r, maxLoggedID)))
	}
	if a.traceID != "" {
		f = append(f, zap.String("trace_id", a.traceID))
	}
	account, key := a.filedUnder()
	f = append(f, zap.String("account", account), zap.String("key", key))
	if a.decoded {
		if a.route.Credential != "" {
			f = append(f, zap.String("credential", a.route.Credential))
		}
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
