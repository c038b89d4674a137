package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/tracing"
	"github.com/revoker/revoker/untrusted"
)

// Client publishes revoke events and awaits their outcomes: what `revoker
// publish` does, for any Go program that must revoke a key and know it was.
type Client struct {
	nc *nats.Conn
	js jetstream.JetStream
	// Stream is the work stream; OutcomeStream and OutcomePrefix are where
	// outcome records are kept ("" prefix: off).
	Stream, OutcomeStream, OutcomePrefix string
	// Timeout bounds one request (default 10 s).
	Timeout time.Duration
	// Stray hears of each message found on a key's outcome subject that
	// is not a record of that key, and so is not believed (SPEC §4 "The
	// proof", point 8); nil: not reported.
	Stray func(Stray)
}

// ClientTimeouts of a one-shot connection: an operator is told at once
// that NATS cannot be reached instead of waiting for ever as the worker does.
const (
	dialTimeout    = 5 * time.Second
	defaultTimeout = 10 * time.Second
	// publishWindow is how many publishes may await their acknowledgement
	// at once: enough to keep the server busy, few enough that a stalled
	// server does not leave thousands in doubt.
	publishWindow = 256
)

// Dial connects a client for one command to the streams of t, with conn's
// credentials and TLS; onError hears the connection's asynchronous errors
// (nil: ignored).
func Dial(conn config.Connection, t config.Topology, onError func(error)) (*Client, error) {
	opts := []nats.Option{
		nats.Name("revoker-cli"),
		nats.Timeout(dialTimeout),
		// Once connected, an outage is waited out however long it lasts:
		// `outcomes --follow` runs until interrupted, and every other read
		// or wait is bounded by its own timeout.
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		// Nothing is kept to be sent after a reconnect: a publish made while
		// the server is away is refused at once (Refused), so a command
		// that reports an event not published never stores it later.
		nats.ReconnectBufSize(-1),
		// A refused subscription then fails its reads instead of waiting
		// for messages that never come.
		nats.PermissionErrOnSubscribe(true),
	}
	if onError != nil {
		opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { onError(err) }))
	}
	nc, err := nats.Connect(conn.URL, append(opts, AuthOptions(conn)...)...)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to NATS at %s: %w", conn.RedactedURL(), err)
	}
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(2*publishWindow),
		jetstream.WithPublishAsyncTimeout(defaultTimeout))
	if err != nil {
		nc.Close()
		return nil, err
	}
	return ClientOn(nc, js, t), nil
}

// Close closes the connection.
func (c *Client) Close() { c.nc.Close() }

// JetStream is the client's JetStream handle, for the reading commands.
func (c *Client) JetStream() jetstream.JetStream { return c.js }

func (c *Client) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return defaultTimeout
}

// Published is a stored event: what an outcome record must name to be its.
type Published struct {
	EventID   string `json:"event_id"`
	AccountID string `json:"account_id"`
	KeyID     string `json:"key_id"`
	Subject   string `json:"subject"`
	Stream    string `json:"stream"`
	Sequence  uint64 `json:"sequence"`
	// Duplicate: the stream already held an event with this id, and
	// Stream/Sequence name that one.
	Duplicate bool `json:"duplicate"`
	// TraceID is the trace the event was published in (SPEC §13).
	TraceID string `json:"trace_id,omitempty"`
	// StoredAt is when the stream stored the event, where it could be read
	// (zero otherwise): a record stored before it was planted.
	StoredAt time.Time `json:"-"`
	// StoredAfter, where StoredAt is not known, is when the stream that
	// stored the event was made (zero: not known either): a record of an
	// event stored before then is an older stream's (Recorded).
	StoredAfter time.Time `json:"-"`
}

// Answers reports whether rec is the outcome of p: the same account, key,
// stream and sequence, and, where p knows it, the same event id (cut as
// records cut it). An event id alone proves nothing (ids can be reused or
// forged), but another id proves another event: one of a stream since
// deleted and made again, at the same sequence. A record of an invalid
// event never is: p was checked before it was published, so such a record
// at its sequence is another event's (one published raw under the same id,
// filed under the same key).
func (p Published) Answers(rec event.Record) bool {
	return rec.AccountID == p.AccountID && rec.KeyID == p.KeyID &&
		rec.Stream == p.Stream && rec.Sequence == p.Sequence && rec.Reason != event.InvalidEvent &&
		(p.EventID == "" || rec.EventID == untrusted.Chars(p.EventID, event.MaxRecordedID))
}

// CheckSubject makes sure the work stream exists and holds subject: a
// publisher creates nothing, and a clear refusal beats an event stored
// where no worker reads it. A publisher allowed only to publish cannot
// look the stream up; the publish itself then decides.
func (c *Client) CheckSubject(ctx context.Context, subject string) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout())
	defer cancel()
	s, err := c.js.Stream(ctx, c.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("the work stream %s does not exist; publish creates nothing: start the worker (it creates its streams) or create the stream", c.Stream)
	}
	if err != nil {
		return nil
	}
	if Covers(s.CachedInfo().Config.Subjects, subject) {
		return nil
	}
	return fmt.Errorf("the work stream %s does not hold subject %s (it holds %s)",
		c.Stream, subject, strings.Join(s.CachedInfo().Config.Subjects, ", "))
}

// msg is the message of one event, with its id and, in lower case, the
// trace context of ctx (SPEC §13), whose trace id it returns.
func (c *Client) msg(ctx context.Context, subject, id string, body []byte) (*nats.Msg, string) {
	m := nats.NewMsg(subject)
	m.Data = body
	m.Header.Set(jetstream.MsgIDHeader, id)
	tracing.Inject(ctx, tracing.HeaderSetter(m.Header))
	return m, tracing.TraceID(ctx)
}

// ErrIDTaken means the event's id already names another event in the
// work stream's duplicate window: the event was not published.
var ErrIDTaken = errors.New("the id already names another event")

// Publish stores one event (body, already valid) on subject with id as
// its Nats-Msg-Id, and returns once the work stream acknowledged it. When
// the stream reports a duplicate, the stored event is read back: if it
// names another key, the error wraps ErrIDTaken (nothing was published).
func (c *Client) Publish(ctx context.Context, subject, id string, ev event.Event, body []byte) (Published, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout())
	defer cancel()
	ctx, span := tracing.StartPublish(ctx, subject)
	defer span.End()
	m, traceID := c.msg(ctx, subject, id, body)
	ack, err := c.js.PublishMsg(ctx, m, jetstream.WithExpectStream(c.Stream))
	if err != nil {
		return Published{}, c.publishError(subject, err)
	}
	p := Published{EventID: id, AccountID: ev.AccountID, KeyID: ev.KeyID, Subject: subject,
		Stream: ack.Stream, Sequence: ack.Sequence, Duplicate: ack.Duplicate, TraceID: traceID}
	if p.Duplicate {
		if err := c.sameEvent(ctx, &p); err != nil {
			return p, err
		}
		return p, nil
	}
	// When the stream stored it, read back while it waits there: readers
	// then believe only records of this very event, not one of an older
	// event at the same sequence of a stream made again (SPEC §4, "The
	// proof", point 5). An event already done is read without it.
	if m, err := c.storedEvent(ctx, p.Stream, p.Sequence); err == nil && m.Subject == subject && bytes.Equal(m.Data, body) {
		p.StoredAt = m.Time
	} else if made, err := c.streamMade(ctx, p.Stream); err == nil {
		p.StoredAfter = made
	}
	return p, nil
}

// RepublishMargin is taken off the work stream's duplicate window for
// how long after an event's first publish it may be published again under
// its id without being stored twice: for the clocks of replicas and
// server.
const RepublishMargin = 30 * time.Second

// RepublishWithin is how long after an event's first publish it may be
// published again under its id without being stored twice: the work
// stream's duplicate window, as the stream says (as revoker makes it, when
// the stream cannot be asked), less RepublishMargin.
func (c *Client) RepublishWithin(ctx context.Context) time.Duration {
	window := DuplicateWindow
	if st, err := c.js.Stream(ctx, c.Stream); err == nil {
		window = st.CachedInfo().Config.Duplicates
	}
	return window - RepublishMargin
}

// Refused reports whether a publish error proves the event was not
// stored: the stream answered no, no stream answered at all, another
// event holds the id, the connection was down and kept nothing to send,
// or the message was larger than the server takes and was never sent. A timeout or a connection lost in between proves nothing, nor
// does a duplicate that could not be checked (it may be this very event,
// stored by an earlier try).
func Refused(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) || errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, ErrIDTaken) || errors.Is(err, nats.ErrReconnectBufExceeded) || errors.Is(err, nats.ErrMaxPayload)
}

// Store is Publish, made again under the same id, pause apart, while its
// answer is lost (a timeout, a dropped connection: the event may be
// stored), until one is answered, ctx ends, or RepublishWithin has passed
// since the first (after it, a copy would be stored twice). unanswered
// reports whether any publish went unanswered: then the event may be
// stored whatever err says.
func (c *Client) Store(ctx context.Context, subject, id string, ev event.Event, body []byte, pause time.Duration) (p Published, unanswered bool, err error) {
	began := time.Now()
	var window time.Duration
	for {
		p, err = c.Publish(ctx, subject, id, ev, body)
		unanswered = unanswered || err != nil && !Refused(err)
		// A duplicate that could not be checked will not check better now.
		// A publish refused while the connection is made again was never
		// sent: it is tried again like a lost one.
		if err == nil || Refused(err) && !errors.Is(err, nats.ErrReconnectBufExceeded) || errors.Is(err, ErrIDUnverified) {
			return p, unanswered, err
		}
		if window == 0 {
			window = c.RepublishWithin(ctx)
		}
		if time.Since(began) >= window || !throttle.Sleep(ctx, pause) {
			return p, unanswered, err
		}
	}
}

// streamMade is when stream, as it is now, was made.
func (c *Client) streamMade(ctx context.Context, stream string) (time.Time, error) {
	s, err := c.js.Stream(ctx, stream)
	if err != nil {
		return time.Time{}, fmt.Errorf("when stream %q was made, to tell its events' records from an older stream's: %w", stream, err)
	}
	return s.CachedInfo().Created, nil
}

// maxFindStored bounds the messages FindStored reads: a backlog stored in
// the same moments is read through to that many.
const maxFindStored = 2000

// FindStored looks in the work stream for the event stored under id on
// subject with body, among the messages of subject the server stored from
// from to until (its clock): an event whose store went unanswered, still
// waiting there after the duplicate window that would have dropped a
// second copy. It reads at most maxFindStored messages; found is false
// when it did not come to it.
func (c *Client) FindStored(ctx context.Context, subject, id string, body []byte, from, until time.Time) (p Published, found bool, err error) {
	req := msgGetRequest{NextFor: subject, StartTime: &from}
	for range maxFindStored {
		m, err := msgGetOn(ctx, c.nc, c.Stream, req)
		if err != nil || m == nil || m.Time.After(until) {
			return Published{}, false, err
		}
		if h := m.header(); m.Subject == subject && h.Get(jetstream.MsgIDHeader) == id && bytes.Equal(m.Data, body) {
			return Published{EventID: id, Subject: subject, Stream: c.Stream, Sequence: m.Seq,
				StoredAt: m.Time, TraceID: storedTraceID(h, m.Data)}, true, nil
		}
		req = msgGetRequest{Seq: m.Seq + 1, NextFor: subject}
	}
	return Published{}, false, nil
}

// ErrIDUnverified means the event's id already names an event in the work
// stream's duplicate window, and whether that event is this one could not
// be checked: the event may not have been published.
var ErrIDUnverified = errors.New("the id already names an event that could not be checked")

// sameEvent checks that the event stored at p's sequence is for p's key,
// on p's subject (an event planted under the id on a lower priority must
// not pass for an urgent one):
// read back while it is in the stream; once it is done, its outcome record
// must be on p's key's own subject (records are stored before an event
// leaves the stream). What cannot be read is not given the benefit of the
// doubt: reporting "published" for an event dropped as another's duplicate
// would leave a key alive while its revocation looks done.
func (c *Client) sameEvent(ctx context.Context, p *Published) error {
	unverified := func(why string, err error) error {
		return fmt.Errorf("%w: id %s names the event at sequence %d of %s, and whether it is %s/%s could not be checked (%s: %v); it may NOT have been published: publish it under another id",
			ErrIDUnverified, p.EventID, p.Sequence, p.Stream, p.AccountID, p.KeyID, why, err)
	}
	same := false
	switch m, err := c.storedEvent(ctx, p.Stream, p.Sequence); {
	case err == nil:
		// Read as the worker will read it: the same body under another
		// Content-Type (a CloudEvent) is another event.
		h := m.header()
		stored, err := event.DecodeMessage(HeaderFold(h, "Content-Type"), m.Data)
		same = err == nil && stored.AccountID == p.AccountID && stored.KeyID == p.KeyID && m.Subject == p.Subject
		p.StoredAt = m.Time
		// The event is in the trace it was stored with, not this
		// publish's (SPEC §13: the trace id printed is the event's), or
		// in none.
		p.TraceID = storedTraceID(h, m.Data)
	case !errors.Is(err, jetstream.ErrMsgNotFound):
		return unverified("reading it back", err)
	case c.OutcomePrefix == "":
		return unverified("it is done and outcome records are off", err)
	default:
		// Only a record of an event the stream as it is now stored: one of
		// an older stream at the same sequence proves nothing of this id,
		// and the servers' clocks get no margin here, where doubt costs a
		// second event for the key, not a key left alive.
		made, err := c.streamMade(ctx, p.Stream)
		if err != nil {
			return unverified("it is done, and reading its stream", err)
		}
		p.StoredAfter = made
		rec, recorded, rerr := c.recorded(ctx, *p, storedWhen{after: made})
		if rerr != nil {
			return unverified("it is done, and reading its outcome record", rerr)
		}
		same = recorded && rec.Subject == p.Subject
		// The event's trace, as its record names it: a record's field,
		// shown to the publisher only as a trace id, else none.
		p.TraceID = ""
		if tracing.ValidTraceID(rec.TraceID) {
			p.TraceID = rec.TraceID
		}
	}
	if !same {
		return fmt.Errorf("%w: id %s was used for the event at sequence %d of %s (another key, or another subject) within the duplicate window; %s/%s was NOT published to %s: use another id",
			ErrIDTaken, p.EventID, p.Sequence, p.Stream, p.AccountID, p.KeyID, p.Subject)
	}
	return nil
}

// storedTraceID is the trace a stored event is in, as the worker reads
// it: its traceparent header in any letter case, else, for a CloudEvent,
// its traceparent extension (SPEC §13, §14).
func storedTraceID(h nats.Header, body []byte) string {
	ctx := tracing.Extract(context.Background(), tracing.HeaderGetter(h))
	if id := tracing.TraceID(ctx); id != "" {
		return id
	}
	if event.IsCloudEvent(HeaderFold(h, "Content-Type")) {
		_, ce, _ := event.DecodeCloudEvent(body)
		return tracing.TraceID(tracing.FromTraceParent(context.Background(), ce.TraceParent, ce.TraceState))
	}
	return ""
}

// storedEvent reads the message at seq of stream with STREAM.MSG.GET,
// whatever the stream's AllowDirect: the server answers it in its own JSON
// envelope, so the permission to ask (the publisher's, deploy/nats-auth)
// cannot be turned into writing a stored body onto another subject, as a
// direct get's raw answer could.
func (c *Client) storedEvent(ctx context.Context, stream string, seq uint64) (*storedMsg, error) {
	m, err := msgGetOn(ctx, c.nc, stream, msgGetRequest{Seq: seq})
	switch {
	case err != nil:
		return nil, err
	case m == nil:
		return nil, jetstream.ErrMsgNotFound
	case m.Seq != seq:
		return nil, fmt.Errorf("read message %d of %s: no such message in the answer", seq, stream)
	}
	return m, nil
}

// Batch publishes many events with up to publishWindow acknowledgements
// awaited at once.
type Batch struct {
	c        *Client
	subject  string
	inflight []pending
	done     func(Published, error)
	made     time.Time // when the work stream was made, read once
}

type pending struct {
	p   Published
	fut jetstream.PubAckFuture
}

// NewBatch starts a batch on subject; done hears each event's fate, in
// the order they were added.
func (c *Client) NewBatch(subject string, done func(Published, error)) *Batch {
	return &Batch{c: c, subject: subject, done: done}
}

// Add publishes one event, first waiting for the oldest acknowledgement
// when the window is full.
func (b *Batch) Add(ctx context.Context, id string, ev event.Event, body []byte) {
	for len(b.inflight) >= publishWindow {
		b.settle(ctx)
	}
	tctx, span := tracing.StartPublish(ctx, b.subject)
	m, traceID := b.c.msg(tctx, b.subject, id, body)
	span.End()
	p := Published{EventID: id, AccountID: ev.AccountID, KeyID: ev.KeyID, Subject: b.subject, TraceID: traceID}
	fut, err := b.c.js.PublishMsgAsync(m, jetstream.WithExpectStream(b.c.Stream))
	if err != nil {
		b.done(p, b.c.publishError(b.subject, err))
		return
	}
	b.inflight = append(b.inflight, pending{p, fut})
}

// Wait waits for every acknowledgement still awaited.
func (b *Batch) Wait(ctx context.Context) {
	for len(b.inflight) > 0 {
		b.settle(ctx)
	}
}

func (b *Batch) settle(ctx context.Context) {
	f := b.inflight[0]
	b.inflight = b.inflight[1:]
	select {
	case ack := <-f.fut.Ok():
		f.p.Stream, f.p.Sequence, f.p.Duplicate = ack.Stream, ack.Sequence, ack.Duplicate
		if f.p.Duplicate {
			// As Publish: a duplicate is this event only if the stored
			// one names its key, on its subject.
			b.done(f.p, b.c.sameEvent(ctx, &f.p))
			return
		}
		if b.made.IsZero() {
			b.made, _ = b.c.streamMade(ctx, ack.Stream) // zero if not: Recorded reads it then
		}
		f.p.StoredAfter = b.made
		b.done(f.p, nil)
	case err := <-f.fut.Err():
		b.done(f.p, b.c.publishError(b.subject, err))
	case <-ctx.Done():
		b.done(f.p, ctx.Err())
	}
}

// publishError explains a failed publish.
func (c *Client) publishError(subject string, err error) error {
	if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("no stream stored the event on %s: does the work stream %s exist? (%w)", subject, c.Stream, err)
	}
	return err
}

// Watcher receives outcome records as they are stored. Start it before
// publishing, so a fast worker's record cannot be missed.
type Watcher struct {
	c   *Client
	sub *nats.Subscription
	// reconnects is the connection's count when the watch began: one
	// more, and notices may have been lost meanwhile.
	reconnects uint64
}

// Watch listens for the records of one key (account and key given) or of
// every key (both empty).
func (c *Client) Watch(account, key string) (*Watcher, error) {
	if c.OutcomePrefix == "" {
		return nil, errors.New("outcome records are off (REVOKER_OUTCOME_SUBJECT is empty)")
	}
	subject := c.OutcomePrefix + ".>"
	if account != "" || key != "" {
		subject = OutcomeSubject(c.OutcomePrefix, account, key)
	}
	sub, err := c.subscribeOutcomes(subject, nil)
	if err != nil {
		return nil, err
	}
	return &Watcher{c: c, sub: sub, reconnects: c.nc.Stats().Reconnects}, nil
}

// subscribeOutcomes subscribes to outcome records on subject (with cb, or
// synchronously when cb is nil) and makes sure the server took it.
func (c *Client) subscribeOutcomes(subject string, cb nats.MsgHandler) (*nats.Subscription, error) {
	var (
		sub *nats.Subscription
		err error
	)
	if cb != nil {
		sub, err = c.nc.Subscribe(subject, cb)
	} else {
		sub, err = c.nc.SubscribeSync(subject)
	}
	if err != nil {
		return nil, fmt.Errorf("subscribe to outcome records on %s: %w", subject, err)
	}
	// A burst of outcomes (a large batch's) may all arrive before they are
	// read, and must not be dropped as a slow consumer's.
	_ = sub.SetPendingLimits(-1, 256<<20)
	if err := c.nc.FlushTimeout(c.timeout()); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("subscribe to outcome records on %s: %w", subject, err)
	}
	// The server refuses a subscription asynchronously, before it answers
	// the flush: a refusal missed here would end the wait as "no outcome
	// in time" though no outcome could ever have been heard.
	if err := refused(c.nc, subject); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("subscribe to outcome records on %s: %w (may this user subscribe there? see deploy/nats-auth)", subject, err)
	}
	return sub, nil
}

// refused returns the permissions violation the server reported for a
// subscription to subject, if it was the connection's last error.
func refused(nc *nats.Conn, subject string) error {
	err := nc.LastError()
	if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), `Subscription to "`+subject+`"`) {
		return err
	}
	return nil
}

// Close stops the watcher.
func (w *Watcher) Close() { _ = w.sub.Unsubscribe() }

// Await waits until every event in want has its outcome, calling on with
// each (want loses the events answered), or until deadline (nil error,
// events left in want) or ctx ends. What the subscription hears is only a
// notice, as for Waiter: a record published on the subject may yet be
// refused by the stream (a racing replica's), so an answer is always read
// back from the key's own subject, where the believed-record rule holds
// (a revoked record beats every other). A record answers an event only
// when it names the event's account, key, stream and sequence. Events that
// were duplicates of one stored earlier are first looked up in the trail;
// so, at the deadline, is every event still waiting if the connection was
// made again since the watch began (a notice sent while it was down is
// lost for good), for at most one request timeout more.
func (w *Watcher) Await(ctx context.Context, want map[uint64]Published, deadline time.Time, on func(Published, event.Record)) error {
	answer := func(ctx context.Context, p Published) (bool, error) {
		rec, ok, err := w.c.Recorded(ctx, p)
		if err != nil || !ok {
			return false, err
		}
		delete(want, p.Sequence)
		on(p, rec)
		return true, nil
	}
	for _, p := range want {
		if p.Duplicate {
			_, _ = answer(ctx, p)
		}
	}
	// heard holds the events whose record was heard but not yet read back,
	// with when to read again: soon, then less often, then, once the trail
	// answered without it, not until the next notice (the stream refused
	// that record).
	type recheck struct {
		at    time.Time
		retry time.Duration
	}
	heard := map[uint64]*recheck{}
	for len(want) > 0 {
		next := deadline
		for _, r := range heard {
			if r.at.Before(next) {
				next = r.at
			}
		}
		wctx, cancel := context.WithDeadline(ctx, next)
		m, err := w.sub.NextMsgWithContext(wctx)
		timedOut := wctx.Err() != nil
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err == nil:
			rec, err := event.DecodeRecord(m.Data)
			if err != nil || !onOwnSubject(m.Subject, rec) {
				break
			}
			if p, ok := want[rec.Sequence]; ok && p.Answers(rec) {
				// A new notice (the real record after a refused one, say)
				// is read soon, whatever was planned for an earlier one.
				heard[rec.Sequence] = &recheck{at: time.Now(), retry: noticeRetryFirst}
			}
		case !timedOut:
			return err // the subscription failed: nothing more can be heard
		}
		now := time.Now()
		if !now.Before(deadline) {
			break
		}
		for seq, r := range heard {
			if r.at.After(now) {
				continue
			}
			ok, err := answer(ctx, want[seq])
			switch {
			case ok, err == nil && r.retry > noticeRetryMax:
				delete(heard, seq)
			case err != nil:
				// A trail that cannot be read is read again, a second
				// apart at most, until it answers (the record heard may
				// be stored there all along), and then once more.
				r.at, r.retry = now.Add(min(r.retry, noticeRetryMax)), min(2*r.retry, noticeRetryMax)
			default:
				r.at, r.retry = now.Add(r.retry), 2*r.retry
			}
		}
	}
	// At the deadline: the events heard of and not yet read back, and,
	// if notices can have been lost (the connection made again, or
	// messages dropped), every event still waiting.
	last := make([]Published, 0, len(heard))
	for seq := range heard {
		if p, ok := want[seq]; ok {
			last = append(last, p)
		}
	}
	if dropped, _ := w.sub.Dropped(); w.c.nc.Stats().Reconnects != w.reconnects || dropped != 0 {
		last = last[:0]
		for _, p := range want {
			last = append(last, p)
		}
	}
	sctx, cancel := context.WithTimeout(ctx, w.c.timeout())
	defer cancel()
	for _, p := range last {
		if _, err := answer(sctx, p); err != nil {
			break // the trail cannot be read, or the time is up
		}
	}
	return nil
}

// Recorded looks up the outcome record of p on its key's own subject, so
// its cost does not grow with the trail. Where several records name p, a
// revoked one is believed over any other, and else the last one stored (see
// believe). Where p does not know when its event was stored, a record of
// an event stored before its stream was made (StoredAfter, else the
// stream as it is now), less a margin for the servers' clocks, is an older
// stream's and not believed: a stream deleted and made again numbers its
// events from 1 again (SPEC §4, "The proof", point 5).
func (c *Client) Recorded(ctx context.Context, p Published) (event.Record, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout())
	defer cancel()
	stored := storedAt(p.StoredAt)
	if p.StoredAt.IsZero() {
		made := p.StoredAfter
		if made.IsZero() {
			var err error
			if made, err = c.streamMade(ctx, p.Stream); err != nil {
				return event.Record{}, false, err
			}
		}
		stored.after = made.Add(-createdMargin)
	}
	return c.recorded(ctx, p, stored)
}

// recorded is Recorded with what is known of when p's event was stored.
func (c *Client) recorded(ctx context.Context, p Published, stored storedWhen) (event.Record, bool, error) {
	b, err := believe(ctx, c.js, c.OutcomeStream, OutcomeSubject(c.OutcomePrefix, p.AccountID, p.KeyID), stored, p.Answers, c.Stray)
	return b.rec, b.found, err
}
