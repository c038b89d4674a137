// Package service is the NATS service `revoker` (SPEC §12): the same
// JetStream path as `revoker publish`, for programs that speak NATS
// request/reply. A revoke request is stored in the work stream before
// anything is answered, so a reply that is lost loses no revocation; its
// reply is the event's believed outcome record when one is known within
// the wait asked for, else the event's place in the work stream.
package service

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/tracing"
	"github.com/revoker/revoker/untrusted"
)

// The service's names: its name, queue group and subjects.
const (
	Name          = "revoker"
	QueueGroup    = "revoker"
	RevokeSubject = "revoker.revoke"
	StatusSubject = "revoker.status"
)

// Request headers of revoker.revoke.
const (
	HeaderUrgent = "Revoker-Urgent" // "true": the highest-priority subject
	HeaderWait   = "Revoker-Wait"   // a Go duration: how long to wait for the outcome
)

// Defaults of Config.
const (
	DefaultMaxWait     = 60 * time.Second
	DefaultMaxInFlight = 1024
	// maxIDLen bounds a caller's event id: it is kept in headers and
	// records.
	maxIDLen = 256
	// republishPause spaces the publishes of an event whose answer was
	// lost.
	republishPause = 500 * time.Millisecond
)

// storeTimeout bounds storing one request's event, publishes made again
// after a lost answer included (a variable for tests).
var storeTimeout = 15 * time.Second

// StateQueued is the state of a stored event with no outcome record yet.
const StateQueued = "queued"

// Queued is the reply for a stored event whose outcome is not known yet.
// Sent back as a status request, it asks for that event's outcome.
type Queued struct {
	EventID   string `json:"event_id"`
	State     string `json:"state"`
	AccountID string `json:"account_id,omitempty"`
	KeyID     string `json:"key_id,omitempty"`
	Stream    string `json:"stream,omitempty"`
	Sequence  uint64 `json:"sequence,omitempty"`
	// TraceID is the event's trace (SPEC §13): the caller's, when its
	// request carried a traceparent.
	TraceID string `json:"trace_id,omitempty"`
}

// StatusRequest is the body of revoker.status. Stream and Sequence (from
// the revoke reply) name one event beyond doubt; AccountID and KeyID name
// a key, whose latest believed record is the answer when no sequence is
// given. An event id alone names an event this service stored in the last
// day (its index, kept by the worker, says where; the answer is then read
// by stream and sequence, never by the id, which proves nothing alone);
// with a key it picks among that key's records.
type StatusRequest struct {
	EventID   string `json:"event_id,omitempty"`
	AccountID string `json:"account_id,omitempty"`
	KeyID     string `json:"key_id,omitempty"`
	Stream    string `json:"stream,omitempty"`
	Sequence  uint64 `json:"sequence,omitempty"`
}

// Config is what the service is built from.
type Config struct {
	// Client stores events in the work stream and reads the audit trail.
	Client *queue.Client
	// Waiter hears outcomes; nil when outcome records are off (replies are
	// then always the queued state).
	Waiter *queue.Waiter
	// Subjects of the work stream, highest priority first.
	Subjects []string
	// Index, when set, notes where each event stored through revoker.revoke
	// is, so that revoker.status answers for its id alone.
	Index *queue.EventIndex
	// Version is the binary's version; one that is not semantic becomes
	// 0.0.0-<it> (micro requires semver).
	Version string
	// MaxWait caps Revoker-Wait (default DefaultMaxWait).
	MaxWait time.Duration
	// MaxInFlight bounds the requests handled at once; beyond, 503
	// (default DefaultMaxInFlight).
	MaxInFlight int
	Log         *zap.Logger
	// OwnInbox is the inbox prefix of the service's own connection; a
	// request asking for its reply there is dropped (Start fills it in).
	OwnInbox string
}

// Service is the running service.
type Service struct {
	cfg    Config
	nc     *nats.Conn
	svc    micro.Service
	ctx    context.Context
	cancel context.CancelFunc
	slots  chan struct{}
	wg     sync.WaitGroup
	once   sync.Once

	mu      sync.Mutex
	stopped bool // no new goroutine once Stop waits for them
	// indexErr is the index's last failure, logged once until it changes
	// or the index takes an event again (a missing bucket would otherwise
	// fill the log, one line per request).
	indexErr string
}

// Start registers the service on nc. The requests it takes run until ctx
// ends or Stop is called.
func Start(ctx context.Context, nc *nats.Conn, cfg Config) (*Service, error) {
	if cfg.Client == nil || len(cfg.Subjects) == 0 {
		return nil, errors.New("service: a client and the work subjects are required")
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = DefaultMaxWait
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.OwnInbox == "" {
		cfg.OwnInbox, _, _ = strings.Cut(nc.NewInbox(), ".")
	}
	s := &Service{cfg: cfg, nc: nc, slots: make(chan struct{}, cfg.MaxInFlight)}
	s.ctx, s.cancel = context.WithCancel(ctx)
	svc, err := micro.AddService(nc, micro.Config{
		Name:        Name,
		Version:     semver(cfg.Version),
		Description: "revokes Cloudflare Stream signing keys through the work stream (SPEC §12)",
		QueueGroup:  QueueGroup,
	})
	if err != nil {
		s.cancel()
		return nil, fmt.Errorf("start the NATS service: %w", err)
	}
	g := svc.AddGroup(Name)
	for name, h := range map[string]micro.HandlerFunc{"revoke": s.revoke, "status": s.status} {
		if err := g.AddEndpoint(name, s.guard(h)); err != nil {
			_ = svc.Stop()
			s.cancel()
			return nil, fmt.Errorf("start the NATS service: endpoint %s: %w", name, err)
		}
	}
	s.svc = svc
	// Registered at the server when Start returns; if NATS is away, the
	// client subscribes when it connects, and nothing waits for it here.
	if nc.IsConnected() {
		_ = nc.FlushTimeout(5 * time.Second)
	}
	return s, nil
}

// Stop stops taking requests and ends the waits in progress: each answers
// with its event's queued state (its event is stored already).
func (s *Service) Stop() error {
	var err error
	s.once.Do(func() {
		err = s.svc.Stop()
		s.cancel()
		s.mu.Lock()
		s.stopped = true
		s.mu.Unlock()
		s.wg.Wait()
	})
	return err
}

// Micro is the underlying micro service (its info and stats).
func (s *Service) Micro() micro.Service { return s.svc }

// semver returns v when it is a semantic version, else 0.0.0-<v>.
func semver(v string) string {
	v = strings.TrimPrefix(v, "v")
	parts := strings.SplitN(strings.SplitN(v, "-", 2)[0], ".", 3)
	ok := len(parts) == 3
	for _, p := range parts {
		if _, err := strconv.ParseUint(p, 10, 32); err != nil {
			ok = false
		}
	}
	if ok {
		return v
	}
	clean := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, v)
	if clean == "" {
		clean = "unknown"
	}
	return "0.0.0-" + clean
}

// guard drops a request whose reply subject is not a caller's inbox. The
// reply is published with the worker's own permissions, which may write
// records, events and shared state: a caller choosing "revoke.outcome.…"
// or "revoke.urgent" as its reply subject must not have the worker write
// there, nor answer into the worker's own inbox (its pending JetStream
// requests).
func (s *Service) guard(h micro.HandlerFunc) micro.HandlerFunc {
	return func(req micro.Request) {
		if !ReplyAllowed(req.Reply(), s.cfg.OwnInbox) {
			s.cfg.Log.Debug("service: request dropped: its reply subject is not an inbox")
			return
		}
		h(req)
	}
}

// ReplyAllowed reports whether reply is a subject the service answers on:
// under an inbox prefix (a first token starting with "_INBOX", as
// REVOKER_NATS_INBOX_PREFIX values do), and not under own unless own is
// the default "_INBOX" that callers share without roles (the worker's
// inboxes then end in random tokens no caller can guess); or the reply
// subject the server made for a request from another account, "_R_.…",
// which leads back into that account (deploy/nats-auth).
func ReplyAllowed(reply, own string) bool {
	first, rest, ok := strings.Cut(reply, ".")
	return ok && rest != "" && (strings.HasPrefix(first, "_INBOX") && (first != own || own == "_INBOX") || first == "_R_") &&
		!strings.ContainsAny(reply, "*> \t\r\n")
}

// fail answers req with an error in the service headers; the description
// is made one safe line, as it may quote what the caller sent.
func (s *Service) fail(req micro.Request, code int, format string, args ...any) {
	desc := untrusted.Line(fmt.Sprintf(format, args...), 512)
	if err := req.Error(strconv.Itoa(code), desc, nil); err != nil {
		s.cfg.Log.Debug("service: reply lost", zap.Error(err))
	}
}

func (s *Service) reply(req micro.Request, v any) {
	body, err := json.Marshal(v)
	if err == nil {
		// Records hold free text from events: C1 and bidirectional
		// controls, which encoding/json leaves raw, are escaped for the
		// terminal a `nats req` prints to (SPEC §10).
		err = req.Respond(untrusted.EscapeJSON(body))
	}
	if err != nil {
		s.cfg.Log.Debug("service: reply lost", zap.Error(err))
	}
}

// async runs f on its own goroutine, so a long wait does not hold the
// endpoint's subscription (micro calls handlers one at a time), within
// MaxInFlight requests.
func (s *Service) async(req micro.Request, f func(req micro.Request)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		s.fail(req, 503, "the service is stopping; try again")
		return
	}
	select {
	case s.slots <- struct{}{}:
	default:
		s.fail(req, 503, "too many requests in progress; try again")
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() { <-s.slots }()
		f(detached{Request: req, nc: s.nc})
	}()
}

// detached answers a request after its handler has returned. micro's own
// request keeps state (the answer's error) that its handler loop reads once
// the handler returns, so answering through it later would race; this
// publishes the same answer on the reply subject directly.
type detached struct {
	micro.Request
	nc *nats.Conn
}

// Respond sends data, as micro's Respond does.
func (d detached) Respond(data []byte, opts ...micro.RespondOpt) error {
	m := &nats.Msg{Subject: d.Reply(), Data: data}
	for _, opt := range opts {
		opt(m)
	}
	return d.nc.PublishMsg(m)
}

// RespondJSON sends v as JSON.
func (d detached) RespondJSON(v any, opts ...micro.RespondOpt) error {
	b, err := json.Marshal(v)
	if err != nil {
		return micro.ErrMarshalResponse
	}
	return d.Respond(b, opts...)
}

// Error sends an error in the service headers, as micro's Error does.
func (d detached) Error(code, description string, data []byte, opts ...micro.RespondOpt) error {
	m := &nats.Msg{Subject: d.Reply(), Data: data, Header: nats.Header{
		micro.ErrorHeader:     []string{description},
		micro.ErrorCodeHeader: []string{code},
	}}
	for _, opt := range opts {
		opt(m)
	}
	return d.nc.PublishMsg(m)
}

// revoke handles revoker.revoke. What can be refused without NATS is
// refused at once (and counted in the endpoint's error stats); the rest
// runs in its own goroutine.
func (s *Service) revoke(req micro.Request) {
	body := req.Data()
	if len(body) > event.MaxBytes {
		s.fail(req, 413, "invalid event: %d bytes, over the %d-byte limit", len(body), event.MaxBytes)
		return
	}
	ev, err := event.Decode(body)
	if err != nil {
		s.fail(req, 400, "%v", err)
		return
	}
	// Headers count in any letter case, as the trace context does: a
	// caller's lower-case revoker-urgent must not leave an incident's
	// revocation behind the scheduled backlog.
	h := nats.Header(req.Headers())
	header := func(name string) string { return queue.HeaderFold(h, name) }
	subject := s.cfg.Subjects[len(s.cfg.Subjects)-1]
	if v := header(HeaderUrgent); v != "" {
		urgent, err := strconv.ParseBool(v)
		if err != nil {
			s.fail(req, 400, "%s must be true or false", HeaderUrgent)
			return
		}
		if urgent {
			subject = s.cfg.Subjects[0]
		}
	}
	var wait time.Duration
	if v := header(HeaderWait); v != "" {
		wait, err = time.ParseDuration(v)
		if err != nil || wait < 0 {
			s.fail(req, 400, "%s must be a Go duration such as 10s", HeaderWait)
			return
		}
		wait = min(wait, s.cfg.MaxWait)
	}
	id := header(jetstream.MsgIDHeader)
	switch {
	case id == "":
		id = newID()
	case len(id) > maxIDLen || strings.IndexFunc(id, untrusted.Unsafe) >= 0:
		s.fail(req, 400, "%s must be at most %d bytes with no control characters", jetstream.MsgIDHeader, maxIDLen)
		return
	}
	// The caller's trace goes on in the event (SPEC §13), whatever the
	// letter case of its header.
	traced := tracing.Extract(s.ctx, tracing.HeaderGetter(h))
	s.async(req, func(req micro.Request) {
		// Stored before anything is answered: a lost reply loses nothing.
		// A publish whose answer was lost is made again under the id,
		// which the stream cannot store twice, until one is answered.
		sctx, cancel := context.WithTimeout(traced, storeTimeout)
		p, unanswered, err := s.cfg.Client.Store(sctx, subject, id, ev, body, republishPause)
		// Anyone who may publish events may have used the id first, to
		// have this revocation dropped: it is stored under an id of its
		// own, which the answer names. That id follows from the request,
		// so a repeat (its reply lost) is the same event again; only if
		// it is taken too is it one nobody could guess.
		for _, suffix := range []string{ownSuffix(id, subject, body), rand.Text()} {
			if !errors.Is(err, queue.ErrIDTaken) {
				break
			}
			s.cfg.Log.Warn("service: another event holds the request's id; storing it under an id of its own",
				zap.String("event_id", untrusted.Line(id, 256)), zap.String("trace_id", tracing.TraceID(traced)), zap.Error(err))
			var lost bool
			p, lost, err = s.cfg.Client.Store(sctx, subject, withSuffix(id, suffix), ev, body, republishPause)
			unanswered = unanswered || lost
			if err == nil || !errors.Is(err, queue.ErrIDTaken) {
				id = withSuffix(id, suffix)
			}
		}
		cancel()
		switch {
		case errors.Is(err, queue.ErrIDTaken):
			s.fail(req, 409, "%v", err)
			return
		case err != nil && unanswered:
			// Not "not stored": the event may be, and will be revoked.
			s.cfg.Log.Warn("service: the work stream's answer was lost; the event may be stored",
				zap.String("event_id", untrusted.Line(id, 256)), zap.String("trace_id", tracing.TraceID(traced)), zap.Error(err))
			s.fail(req, 504, "the work stream's answer was lost, and NATS did not answer again: event %s may have been stored; repeat the request with %s: %s, which cannot store it twice",
				id, jetstream.MsgIDHeader, id)
			return
		case errors.Is(err, queue.ErrIDUnverified):
			s.fail(req, 409, "%v", err)
			return
		case err != nil:
			s.cfg.Log.Warn("service: an event could not be stored", zap.Error(err))
			s.fail(req, 503, "the event was not stored (NATS unreachable or the work stream refused it): try again")
			return
		}
		if s.cfg.Index != nil {
			// Only a help to revoker.status by id: the event is stored,
			// so a failure here fails nothing. A duplicate names the
			// event stored first, which a retried request is.
			ictx, cancel := context.WithTimeout(s.ctx, s.cfg.Client.Timeout)
			err := s.cfg.Index.Remember(ictx, p)
			cancel()
			s.indexed(p, err)
		}
		queued := Queued{EventID: p.EventID, State: StateQueued, AccountID: p.AccountID, KeyID: p.KeyID,
			Stream: p.Stream, Sequence: p.Sequence, TraceID: p.TraceID}
		if p.Duplicate {
			// A retried request: the event stored first may be done, and
			// "queued" would say it is not.
			rctx, cancel := context.WithTimeout(s.ctx, s.cfg.Client.Timeout)
			rec, ok, err := s.cfg.Client.Recorded(rctx, p)
			cancel()
			if err == nil && ok {
				s.reply(req, rec)
				return
			}
		}
		if wait > 0 && s.cfg.Waiter != nil {
			ctx, cancel := context.WithTimeout(s.ctx, wait)
			rec, ok, _ := s.cfg.Waiter.Wait(ctx, p)
			cancel()
			if ok {
				s.reply(req, rec)
				return
			}
		}
		s.reply(req, queued)
	})
}

// status handles revoker.status.
func (s *Service) status(req micro.Request) {
	var r StatusRequest
	if err := json.Unmarshal(req.Data(), &r); err != nil {
		s.fail(req, 400, "the request must be a JSON object with stream and sequence, or account_id and key_id")
		return
	}
	for _, id := range []string{r.AccountID, r.KeyID} {
		if id != "" && !cloudflare.ValidIdentifier(id) {
			s.fail(req, 400, "account_id and key_id must be 1-32 characters of [A-Za-z0-9]")
			return
		}
	}
	hasKey := r.AccountID != "" && r.KeyID != ""
	hasSeq := r.Stream != "" && r.Sequence > 0
	switch {
	case (r.AccountID != "") != (r.KeyID != ""):
		s.fail(req, 400, "account_id and key_id go together")
		return
	case s.cfg.Client.OutcomePrefix == "":
		s.fail(req, 503, "outcome records are off: no outcome can be known")
		return
	case !hasKey && !hasSeq && r.EventID != "" && s.cfg.Index == nil:
		s.fail(req, 400, "no event index here: give stream and sequence (from the revoke reply), or account_id and key_id")
		return
	case !hasKey && !hasSeq && r.EventID != "":
		s.async(req, func(req micro.Request) {
			ctx, cancel := context.WithTimeout(s.ctx, s.cfg.Client.Timeout)
			defer cancel()
			p, found, err := s.cfg.Index.Find(ctx, r.EventID)
			switch {
			case errors.Is(err, queue.ErrSeveralEvents):
				s.fail(req, 409, "more than one event was stored under this id in the last %s: give account_id and key_id, or stream and sequence", queue.EventIndexTTL)
			case err != nil:
				s.cfg.Log.Warn("service: the event index cannot be read", zap.Error(err))
				s.fail(req, 503, "the event index cannot be read: try again")
			case !found:
				s.fail(req, 404, "no event with this id was stored through revoker.revoke in the last %s: give stream and sequence, or account_id and key_id", queue.EventIndexTTL)
			default:
				r.AccountID, r.KeyID, r.Stream, r.Sequence = p.AccountID, p.KeyID, p.Stream, p.Sequence
				s.statusOfEvent(ctx, req, r, p.StoredAt, p.StoredAfter, nil)
			}
		})
		return
	case !hasKey && !hasSeq:
		s.fail(req, 400, "give stream and sequence, or account_id and key_id")
		return
	case hasSeq && r.Stream != s.cfg.Client.Stream:
		s.fail(req, 404, "stream %s is not the work stream", r.Stream)
		return
	}
	s.async(req, func(req micro.Request) {
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.Client.Timeout)
		defer cancel()
		if hasSeq {
			s.statusOfEvent(ctx, req, r, time.Time{}, time.Time{}, nil)
			return
		}
		s.statusOfKey(ctx, req, r)
	})
}

// statusOfEvent answers for the event at stream/sequence: its believed
// record, else queued while it is still in the work stream, else known
// (the key's believed record, when asked by key), else 404.
// storedAt, when known (the index keeps it), is when the event was
// stored: only records of that very event are believed. Else storedAfter
// (the index's), or the work stream as it is now, says when its stream was
// made: records of an older stream's events are not believed.
func (s *Service) statusOfEvent(ctx context.Context, req micro.Request, r StatusRequest, storedAt, storedAfter time.Time, known *event.Record) {
	c := s.cfg.Client
	p := queue.Published{EventID: r.EventID, AccountID: r.AccountID, KeyID: r.KeyID, Stream: r.Stream, Sequence: r.Sequence,
		StoredAt: storedAt, StoredAfter: storedAfter}
	// The event still in the work stream names its key (and is the truth
	// about it); one that is done must be asked for with its key.
	st, err := c.JetStream().Stream(ctx, r.Stream)
	if err != nil {
		s.fail(req, 503, "the work stream cannot be read: try again")
		return
	}
	if p.StoredAfter.IsZero() {
		p.StoredAfter = st.CachedInfo().Created
	}
	inStream := false
	m, err := st.GetMsg(ctx, r.Sequence)
	switch {
	case err == nil:
		// The message at the sequence is the event asked for only if it
		// names the key asked for and, when the index knows when the event
		// was stored, was stored then: a stream made again reuses sequences.
		// Where that time is not known (the event was done before it could
		// be read back), a message under another Nats-Msg-Id is another
		// event: an id proves nothing, but another id disproves.
		ev, derr := event.DecodeMessage(queue.HeaderFold(m.Header, "Content-Type"), m.Data)
		msgID := m.Header.Get(jetstream.MsgIDHeader)
		if derr == nil && (!hasKeyOf(r) || ev.AccountID == r.AccountID && ev.KeyID == r.KeyID) &&
			(storedAt.IsZero() || m.Time.Equal(storedAt)) &&
			(p.EventID == "" || msgID == "" || msgID == p.EventID) {
			p.AccountID, p.KeyID, p.StoredAt, inStream = ev.AccountID, ev.KeyID, m.Time, true
			if p.EventID == "" {
				p.EventID = msgID
			}
		}
	case !errors.Is(err, jetstream.ErrMsgNotFound):
		s.fail(req, 503, "the work stream cannot be read: try again")
		return
	}
	if p.AccountID == "" {
		s.fail(req, 404, "no event at sequence %d of %s (it may be done: give account_id and key_id to read its record)", r.Sequence, r.Stream)
		return
	}
	rec, ok, err := c.Recorded(ctx, p)
	switch {
	case err != nil:
		s.fail(req, 503, "the audit trail cannot be read: try again")
	case ok:
		s.reply(req, rec)
	case inStream:
		s.reply(req, Queued{EventID: p.EventID, State: StateQueued, AccountID: p.AccountID, KeyID: p.KeyID,
			Stream: p.Stream, Sequence: p.Sequence})
	case known != nil:
		// Asked by key: the event left the stream without a record (a
		// purge, a stream made again), so the key's believed record
		// stands.
		s.reply(req, *known)
	default:
		s.fail(req, 404, "nothing is known of the event at sequence %d of %s for %s/%s", r.Sequence, r.Stream, r.AccountID, r.KeyID)
	}
}

func hasKeyOf(r StatusRequest) bool { return r.AccountID != "" }

// statusOfKey answers with the key's believed record: its last revoked
// record, whichever event it is of (key ids are never reused, so a key
// once revoked stays gone, whatever a later event of it became), else the
// state of the key's latest event stored here when it is newer and has no
// record yet, else the believed record of the event recorded last. With an event id, only
// records naming that id count (a weaker match than a sequence: ids can
// be reused).
func (s *Service) statusOfKey(ctx context.Context, req micro.Request, r StatusRequest) {
	c := s.cfg.Client
	if r.EventID != "" && s.cfg.Index != nil {
		// An event this service stored under the id is read by its stream
		// and sequence: the id alone would match an older event of the key
		// under the same id (ids can be reused, SPEC §5a).
		// (Several events under the id: the key narrows them, below.)
		if p, found, err := s.cfg.Index.Find(ctx, r.EventID); err == nil && found && p.AccountID == r.AccountID && p.KeyID == r.KeyID {
			r.Stream, r.Sequence = p.Stream, p.Sequence
			s.statusOfEvent(ctx, req, r, p.StoredAt, p.StoredAfter, nil)
			return
		}
	}
	recs, err := queue.KeyOutcomes(ctx, c.JetStream(), c.OutcomeStream, c.OutcomePrefix, r.AccountID, r.KeyID, c.Stray)
	if err != nil {
		s.fail(req, 503, "the audit trail cannot be read: try again")
		return
	}
	if r.EventID != "" {
		kept := recs[:0]
		id := untrusted.Chars(r.EventID, event.MaxRecordedID) // as records keep it
		for _, rec := range recs {
			if rec.EventID == id {
				kept = append(kept, rec)
			}
		}
		recs = kept
	}
	rec, ok := latestBelieved(recs)
	if r.EventID == "" && s.cfg.Index != nil && (!ok || rec.Outcome != event.Revoked) {
		// The key's latest event stored here, found by stream and
		// sequence, when it has no record yet and came after the one
		// believed: its state is the key's (SPEC §12: the record, or the
		// state). An older event's dead letter would tell the caller
		// that a revocation still under way failed.
		p, found, err := s.cfg.Index.FindKey(ctx, r.AccountID, r.KeyID)
		if err == nil && found && !recordedIn(recs, p) && (!ok || storedAfter(p, rec)) {
			var known *event.Record
			if ok {
				known = &rec // if nothing is known of the newer event after all
			}
			r.EventID, r.Stream, r.Sequence = p.EventID, p.Stream, p.Sequence
			s.statusOfEvent(ctx, req, r, p.StoredAt, p.StoredAfter, known)
			return
		}
	}
	if !ok {
		s.fail(req, 404, "no outcome record of %s/%s", r.AccountID, r.KeyID)
		return
	}
	s.reply(req, rec)
}

// recordedIn reports whether one of recs is a record of the event p.
func recordedIn(recs []event.Record, p queue.Published) bool {
	for _, rec := range recs {
		if rec.Stream == p.Stream && rec.Sequence == p.Sequence && (p.StoredAt.IsZero() || storedAt(rec).Equal(p.StoredAt)) {
			return true
		}
	}
	return false
}

// storedAfter reports whether the event p was stored after the event of
// rec: by the stream's storing times where both are known, else by
// sequence in one stream.
func storedAfter(p queue.Published, rec event.Record) bool {
	if at := storedAt(rec); !p.StoredAt.IsZero() && !at.IsZero() {
		return p.StoredAt.After(at)
	}
	return p.Stream == rec.Stream && p.Sequence > rec.Sequence
}

// storedAt is when the stream stored rec's event (zero: not known).
func storedAt(rec event.Record) time.Time {
	t, err := time.Parse(time.RFC3339Nano, rec.PublishedAt)
	if err != nil {
		return time.Time{}
	}
	return t
}

// latestBelieved picks, among one key's records (oldest first), the last
// revoked one, else the believed record of the event recorded last.
// Records of invalid events filed under the key say nothing of it (no call
// was made), and anyone who may publish can add them: they are passed
// over.
func latestBelieved(recs []event.Record) (event.Record, bool) {
	kept := make([]event.Record, 0, len(recs))
	for _, rec := range recs {
		if rec.Reason != event.InvalidEvent {
			kept = append(kept, rec)
		}
	}
	recs = kept
	if len(recs) == 0 {
		return event.Record{}, false
	}
	for i := len(recs) - 1; i >= 0; i-- {
		if recs[i].Outcome == event.Revoked {
			return recs[i], true
		}
	}
	return recs[len(recs)-1], true
}

// newID is the id of an event whose request named none: random, so that
// a retried request without an id is a new event (set Nats-Msg-Id to make
// retries safe).
func newID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return "svc-" + hex.EncodeToString(b)
}

// Serve runs the service on the worker's connection for `revoker serve`,
// with the process's one client and waiter (nil when outcome records are
// off), which it shares with the HTTP ingress and does not close. A
// service that cannot start (a connection not allowed to serve its
// subjects, say) is logged and left off: the worker's own work does not
// depend on it. The returned stop ends it.
func Serve(ctx context.Context, nc *nats.Conn, cfg Config) (stop func()) {
	log := cfg.Log
	svc, err := Start(ctx, nc, cfg)
	if err != nil {
		log.Error("the NATS service is off", zap.Error(err))
		return func() {}
	}
	log.Info("NATS service started", zap.String("name", Name),
		zap.Strings("subjects", []string{RevokeSubject, StatusSubject}))
	return func() {
		if err := svc.Stop(); err != nil {
			log.Warn("stopping the NATS service", zap.Error(err))
		}
	}
}

// indexed logs the index's failure to take p, once per distinct cause.
func (s *Service) indexed(p queue.Published, err error) {
	why := ""
	if err != nil {
		why = err.Error()
	}
	s.mu.Lock()
	changed := why != s.indexErr
	s.indexErr = why
	s.mu.Unlock()
	switch {
	case changed && err != nil:
		s.cfg.Log.Warn("service: the event index does not take events; status by an event id alone will not find them",
			zap.String("event_id", p.EventID), zap.Error(err))
	case changed:
		s.cfg.Log.Info("service: the event index takes events again")
	}
}

// ownSuffix is the id of its own a request gets when its id is taken: 26
// characters that follow from the id, the subject and the body, so that a
// repeat of the request is a duplicate of the event it stored.
func ownSuffix(id, subject string, body []byte) string {
	h := sha256.New()
	for _, part := range [][]byte{[]byte(id), []byte(subject), body} {
		h.Write(binary.AppendUvarint(nil, uint64(len(part))))
		h.Write(part)
	}
	return base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(h.Sum(nil))[:26]
}

// withSuffix is id and ":"+suffix, id cut (on a rune) to keep it within
// maxIDLen.
func withSuffix(id, suffix string) string {
	suffix = ":" + suffix
	for len(id)+len(suffix) > maxIDLen {
		_, size := utf8.DecodeLastRuneInString(id)
		id = id[:len(id)-size]
	}
	return id + suffix
}
