package queue

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/untrusted"
)

// DeadLetterRecord is one record of the dead-letter stream as read back: its
// place in the stream, the facts its headers carry (SPEC §5) and the
// original body.
type DeadLetterRecord struct {
	Sequence uint64    `json:"sequence"`  // in the dead-letter stream
	StoredAt time.Time `json:"stored_at"` // when the dead-letter stream stored it
	Reason   string    `json:"reason"`
	Detail   string    `json:"detail"`
	// Status is Revoker-Status as written: an HTTP status, "error", or ""
	// when no call was made.
	Status         string    `json:"status,omitempty"`
	Attempts       int       `json:"attempts"`
	EventID        string    `json:"event_id"`
	SourceSubject  string    `json:"source_subject"`
	SourceSequence uint64    `json:"source_sequence"`
	FailedAt       time.Time `json:"failed_at,omitzero"`
	// ContentType (the original message's) and TraceParent (the event's
	// trace context) are republished with the body by a replay.
	ContentType string `json:"content_type,omitempty"`
	TraceParent string `json:"traceparent,omitempty"`
	TraceState  string `json:"tracestate,omitempty"`
	// BodyTruncated is Revoker-Body-Truncated: set when the record keeps
	// only the start of the event (its size and hash).
	BodyTruncated string `json:"body_truncated,omitempty"`
	// Body is the original event, byte for byte: what a replay publishes.
	Body []byte `json:"-"`
}

// deadLetterRecord reads a stored record. Headers that do not parse are
// left at their zero value: a record is shown and replayed even when a
// header was damaged, since its body is what matters.
func deadLetterRecord(seq uint64, stored time.Time, h nats.Header, body []byte) DeadLetterRecord {
	r := DeadLetterRecord{
		Sequence:      seq,
		StoredAt:      stored.UTC(),
		Reason:        h.Get(HeaderReason),
		Detail:        h.Get(HeaderDetail),
		Status:        h.Get(HeaderStatus),
		EventID:       h.Get(HeaderEventID),
		SourceSubject: h.Get(HeaderSourceSubject),
		ContentType:   h.Get(HeaderContentType),
		TraceParent:   h.Get(HeaderTraceParent),
		TraceState:    h.Get(HeaderTraceState),
		BodyTruncated: h.Get(HeaderBodyTruncated),
		Body:          body,
	}
	r.Attempts, _ = strconv.Atoi(h.Get(HeaderAttempts))
	r.SourceSequence, _ = strconv.ParseUint(h.Get(HeaderSourceSequence), 10, 64)
	if t, err := time.Parse(time.RFC3339Nano, h.Get(HeaderFailedAt)); err == nil {
		r.FailedAt = t.UTC()
	}
	return r
}

// ListDeadLetters reads the dead-letter stream from its first record to the
// last one stored when the call began, and returns the records filter
// accepts (nil accepts all), oldest first, at most limit of them (0: no
// limit). It only reads: nothing is acknowledged or removed.
func ListDeadLetters(ctx context.Context, js jetstream.JetStream, stream string, filter func(DeadLetterRecord) bool, limit int) ([]DeadLetterRecord, error) {
	var out []DeadLetterRecord
	err := scan(ctx, js, stream, "", time.Time{}, func(m *jetstream.RawStreamMsg) (bool, error) {
		r := deadLetterRecord(m.Sequence, m.Time, m.Header, m.Data)
		if filter == nil || filter(r) {
			out = append(out, r)
		}
		return limit <= 0 || len(out) < limit, nil
	})
	return out, err
}

// GetDeadLetter reads the record at sequence seq of the dead-letter stream.
// The error wraps jetstream.ErrMsgNotFound when there is none (never
// written, or already replayed and removed).
func GetDeadLetter(ctx context.Context, js jetstream.JetStream, stream string, seq uint64) (DeadLetterRecord, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return DeadLetterRecord{}, fmt.Errorf("stream %s: %w", stream, err)
	}
	m, err := s.GetMsg(ctx, seq)
	if err != nil {
		return DeadLetterRecord{}, fmt.Errorf("dead letter %d: %w", seq, err)
	}
	return deadLetterRecord(m.Sequence, m.Time, m.Header, m.Data), nil
}

// ReplayMsgID is the Nats-Msg-Id of the replay of the dead letter at seq
// (SPEC §5). It is derived from the record, not from the event, so a replay
// repeated after an interruption is dropped by JetStream as a duplicate
// within the work stream's duplicate window, while the event's own id,
// already seen, would drop the first replay too. Anyone may guess it, so a
// duplicate answer is checked before it is believed (see Republish).
func ReplayMsgID(seq uint64) string { return "replay:" + strconv.FormatUint(seq, 10) }

// unguessableReplayMsgID is the id a replay takes when its own was taken by
// another message: nobody can have published under it beforehand.
func unguessableReplayMsgID(seq uint64) string {
	return ReplayMsgID(seq) + ":" + rand.Text()
}

// ReplayClaim is what a replay of rec carries in Revoker-Replay-Of: the
// original event's id as the record keeps it or, for a record whose id was
// cut to nothing (an id made only of characters records do not keep), the
// dead letter itself. Never empty: the worker removes a record only for a
// replay that claims it (Replays.Take).
func ReplayClaim(rec DeadLetterRecord) string {
	if id := untrusted.Chars(rec.EventID, maxHeader); id != "" {
		return id
	}
	return "dead-letter:" + strconv.FormatUint(rec.Sequence, 10)
}

// ReplayResult is what became of one dead letter's replay.
type ReplayResult struct {
	Sequence uint64 `json:"sequence"` // of the dead letter
	EventID  string `json:"event_id"` // the original event's id (Revoker-Replay-Of)
	MsgID    string `json:"msg_id"`   // the replay's Nats-Msg-Id
	Subject  string `json:"subject"`  // where it was republished
	// WorkSequence is the replay's sequence in the work stream (for a
	// duplicate, the one stored first).
	WorkSequence uint64 `json:"work_sequence"`
	// Duplicate reports that the work stream already had this replay: an
	// earlier run republished it, and no worker has taken it yet (it
	// removes the record then).
	Duplicate bool `json:"duplicate"`
	// Displaced is the replay's own id when the work stream already held
	// another message under it: the record was republished under MsgID,
	// an id nobody could have guessed, instead.
	Displaced string `json:"displaced,omitempty"`
	// Taken reports an earlier republish a worker has taken and recorded
	// as this replay, the record still there: the worker could not remove
	// it then, and nothing was republished now.
	Taken bool `json:"taken,omitempty"`
}

// RequestTimeout bounds one request of a one-shot command.
const RequestTimeout = defaultTimeout

// EachDeadLetter calls fn with each record of the dead-letter stream, oldest
// first, up to the last one stored when the call began, reading as it goes
// (memory stays bounded whatever the number of records). An error from fn
// stops the reading and is returned.
func EachDeadLetter(ctx context.Context, js jetstream.JetStream, stream string, fn func(DeadLetterRecord) error) error {
	return scan(ctx, js, stream, "", time.Time{}, func(m *jetstream.RawStreamMsg) (bool, error) {
		return true, fn(deadLetterRecord(m.Sequence, m.Time, m.Header, m.Data))
	})
}

// Replayer puts dead letters back on their work subjects.
type Replayer struct {
	js       jetstream.JetStream
	stream   string   // the work stream
	subjects []string // the work subjects: the only ones a replay goes to
	replays  *Replays
	// outcomeStream and outcomePrefix are where the worker's records are
	// ("" prefix: none), read to tell a consumed replay as this one's.
	outcomeStream, outcomePrefix string
}

// NewReplayer looks the dead-letter stream and the replays bucket up once,
// for every replay of the run. It creates neither: the worker does.
func NewReplayer(ctx context.Context, js jetstream.JetStream, cfg config.Topology) (*Replayer, error) {
	ctx, cancel := context.WithTimeout(ctx, RequestTimeout)
	defer cancel()
	if _, err := js.Stream(ctx, cfg.DLQStream); err != nil {
		return nil, fmt.Errorf("stream %s: %w", cfg.DLQStream, err)
	}
	replays := &Replays{}
	if err := replays.bind(ctx, js, false, cfg.Replicas, zap.NewNop()); err != nil {
		if errors.Is(err, ErrMissing) {
			return nil, fmt.Errorf("%w: bucket %s does not exist (a worker creates it when it starts)", ErrMissing, ReplaysBucket)
		}
		return nil, err
	}
	return &Replayer{js: js, stream: cfg.Stream, subjects: cfg.Subjects, replays: replays,
		outcomeStream: cfg.OutcomeStream, outcomePrefix: cfg.OutcomePrefix}, nil
}

// Check refuses a record whose source subject is not a work subject (a
// record is data anyone able to write the dead-letter subject controls,
// and a replay to "$JS.API.STREAM.PURGE…" would be the operator purging
// their own streams), and one that keeps only the start of its event.
func (p *Replayer) Check(rec DeadLetterRecord) error {
	if rec.SourceSubject == "" {
		return fmt.Errorf("no %s header: nowhere to replay it", HeaderSourceSubject)
	}
	if !slices.Contains(p.subjects, rec.SourceSubject) {
		return fmt.Errorf("source subject %q is not a work subject (%s)",
			untrusted.Line(rec.SourceSubject, maxHeader), strings.Join(p.subjects, ", "))
	}
	if rec.BodyTruncated != "" {
		// Put back, the start of the event would be a new, invalid event,
		// and removing the record would lose the only copy of the rest.
		return fmt.Errorf("the record keeps only the first %d bytes of the event (%s %s): the whole event is not here to put back",
			len(rec.Body), HeaderBodyTruncated, untrusted.Line(rec.BodyTruncated, maxHeader))
	}
	return nil
}

// Republish puts the record's original body back on its source subject and
// waits for the work stream's acknowledgement. Before publishing, it notes
// the replay in the replays bucket, so the worker can tell it from an event
// that merely claims to be one.
//
// A duplicate answer counts as done only when the message the work stream
// holds under the replay's id is this replay: the one an earlier run
// republished (its sequence noted), or a stored message with the same
// subject, body and Revoker-Replay-Of. Anything else under that id (a
// message published in advance to suppress the replay) is not believed: the
// record is republished under an id nobody could have guessed.
//
// It does not touch the dead-letter stream: the worker removes the record
// when it takes the replay (Replays.Take), so that no role but the worker
// can remove a record, and only one a replay has put back (SPEC §4, "The
// proof", point 8; §5).
func (p *Replayer) Republish(ctx context.Context, rec DeadLetterRecord) (ReplayResult, error) {
	res := ReplayResult{Sequence: rec.Sequence, EventID: rec.EventID, MsgID: ReplayMsgID(rec.Sequence), Subject: rec.SourceSubject}
	if err := p.Check(rec); err != nil {
		return res, err
	}
	// What the header carries is what the note names and the worker
	// compares.
	replayOf := ReplayClaim(rec)
	fail := func(err error) (ReplayResult, error) {
		return res, fmt.Errorf("republish dead letter %d to %s: %w", rec.Sequence, rec.SourceSubject, err)
	}

	// A replay run again while its earlier republish still waits for a
	// worker (which then removes the record) is that republish, past the
	// work stream's duplicate window and under a displaced id too; so is
	// one a worker took without removing the record.
	if earlier, found := p.earlier(ctx, rec, replayOf); found {
		return earlier, nil
	}
	ack, err := p.publish(ctx, rec, res.MsgID, replayOf)
	if err != nil {
		return fail(err)
	}
	res.WorkSequence = ack.Sequence
	if !ack.Duplicate {
		p.published(ctx, rec, res.MsgID, replayOf, ack.Sequence)
		return res, nil
	}
	ours, err := p.isReplay(ctx, rec, res.MsgID, replayOf, ack.Sequence)
	if err != nil {
		return fail(err)
	}
	if ours {
		res.Duplicate = true
		p.published(ctx, rec, res.MsgID, replayOf, ack.Sequence)
		return res, nil
	}

	// Someone else's message holds the id: it must neither stand in for
	// the replay nor pass for one.
	if err := p.replays.forget(ctx, res.MsgID); err != nil {
		return fail(err)
	}
	res.Displaced, res.MsgID = res.MsgID, unguessableReplayMsgID(rec.Sequence)
	ack, err = p.publish(ctx, rec, res.MsgID, replayOf)
	if err != nil {
		return fail(err)
	}
	res.WorkSequence = ack.Sequence
	if ack.Duplicate {
		return fail(fmt.Errorf("the work stream already holds a message under the fresh id %s", res.MsgID))
	}
	p.published(ctx, rec, res.MsgID, replayOf, ack.Sequence)
	return res, nil
}

// earlier finds this record's latest replay (where published noted it
// went) still waiting in the work stream, or consumed and recorded by the
// worker as this replay: then found, with its result (Duplicate; Taken for
// one consumed). A read that fails, or a replay consumed without such a
// record, finds nothing: the republish that follows is checked as ever.
func (p *Replayer) earlier(ctx context.Context, rec DeadLetterRecord, replayOf string) (res ReplayResult, found bool) {
	at, ok, err := p.replays.place(ctx, rec.Sequence)
	if err != nil || !ok || at.WorkSequence == 0 {
		return res, false
	}
	n, ok, err := p.replays.load(ctx, at.MsgID)
	if err != nil || !ok || n.WorkSequence != at.WorkSequence || n.DeadLetter != rec.Sequence || !n.names(replayOf, rec.Body) {
		return res, false
	}
	res = ReplayResult{Sequence: rec.Sequence, EventID: rec.EventID, MsgID: at.MsgID, Subject: rec.SourceSubject,
		WorkSequence: at.WorkSequence, Duplicate: true}
	m, err := msgGet(ctx, p.js, p.stream, msgGetRequest{Seq: at.WorkSequence})
	switch {
	case err != nil:
		return res, false
	case m != nil:
		return res, isReplayMsg(m, rec, at.MsgID, replayOf)
	}
	res.Taken = p.recordedAsReplay(ctx, rec, at.MsgID, replayOf, at.WorkSequence)
	return res, res.Taken
}

// published notes where the work stream stored the replay. It is only a
// help to a run repeated while the record is still there (it knows the
// replay as its own even once consumed: earlier), so a failure is not one
// of the replay: at worst such a run republishes once more.
func (p *Replayer) published(ctx context.Context, rec DeadLetterRecord, msgID, replayOf string, seq uint64) {
	_ = p.replays.published(ctx, msgID, replayOf, rec.Body, seq, rec.Sequence)
}

// publish notes the replay msgID, then publishes it.
func (p *Replayer) publish(ctx context.Context, rec DeadLetterRecord, msgID, replayOf string) (*jetstream.PubAck, error) {
	if err := p.replays.Note(ctx, msgID, replayOf, rec.Body, rec.Sequence); err != nil {
		return nil, err
	}
	// The expected stream makes a subject that left the work stream an
	// error instead of a message stored somewhere nobody consumes.
	return p.js.PublishMsg(ctx, replayMsg(rec, msgID, replayOf), jetstream.WithExpectStream(p.stream))
}

// recordedAsReplay reports whether the worker recorded the event it
// consumed at seq as this replay. It writes a replay's claim into the
// record only when the message matches the note this replay wrote before
// it was published (its id, claim and body), so such a record says the
// message was this replay (a run whose acknowledgement was lost, say).
// No record, one without the claim, or records that cannot be read, say
// nothing: republishing costs at worst one more call, where believing it
// could lose the event, and failing would let anyone who can plant the
// replay's id hold the dead letter back.
func (p *Replayer) recordedAsReplay(ctx context.Context, rec DeadLetterRecord, msgID, replayOf string, seq uint64) bool {
	if p.outcomePrefix == "" {
		return false
	}
	ev, err := event.DecodeMessage(rec.ContentType, rec.Body)
	if err != nil || !cloudflare.ValidIdentifier(ev.AccountID) || !cloudflare.ValidIdentifier(ev.KeyID) {
		return false // its records are under no key of their own
	}
	recs, err := KeyOutcomes(ctx, p.js, p.outcomeStream, p.outcomePrefix, ev.AccountID, ev.KeyID, nil)
	if err != nil {
		return false
	}
	for _, o := range recs {
		if o.Stream == p.stream && o.Sequence == seq && o.EventID == msgID && o.ReplayOf == replayOf && o.Outcome.Final() {
			return true
		}
	}
	return false
}

// replayMsg is the message that replays rec under msgID.
func replayMsg(rec DeadLetterRecord, msgID, replayOf string) *nats.Msg {
	m := nats.NewMsg(rec.SourceSubject)
	m.Data = rec.Body
	m.Header.Set(jetstream.MsgIDHeader, msgID)
	m.Header.Set(HeaderReplayOf, replayOf) // never empty (ReplayClaim)
	if rec.ContentType != "" {
		m.Header.Set(HeaderContentType, rec.ContentType)
	}
	if rec.TraceParent != "" {
		m.Header.Set(HeaderTraceParent, rec.TraceParent)
		if rec.TraceState != "" {
			m.Header.Set(HeaderTraceState, rec.TraceState)
		}
	}
	return m
}

// isReplay reports whether the message the work stream reported as stored
// first under msgID, at seq, is this replay.
func (p *Replayer) isReplay(ctx context.Context, rec DeadLetterRecord, msgID, replayOf string, seq uint64) (bool, error) {
	// The stored message, while there, is the proof: a work stream made
	// again numbers from 1 again, so a noted sequence may now hold another
	// message. STREAM.MSG.GET, not a direct get, even where the stream
	// allows one: a direct get's answer adds headers of its own
	// (Nats-Stream, ...).
	m, err := msgGet(ctx, p.js, p.stream, msgGetRequest{Seq: seq})
	if err != nil {
		return false, fmt.Errorf("read work stream message %d: %w", seq, err)
	}
	if m != nil {
		return isReplayMsg(m, rec, msgID, replayOf), nil
	}
	// Consumed: the noted sequence is proof, as only the replayer writes
	// the bucket.
	n, found, err := p.replays.load(ctx, msgID)
	if err != nil {
		return false, err
	}
	if found && n.WorkSequence == seq && n.names(replayOf, rec.Body) {
		return true, nil
	}
	return p.recordedAsReplay(ctx, rec, msgID, replayOf, seq), nil
}

// isReplayMsg reports whether the stored m is rec's replay under msgID.
// Every header counts: one the replay would not carry (a Content-Type that
// makes the worker read a CloudEvent, say) makes it another event.
func isReplayMsg(m *storedMsg, rec DeadLetterRecord, msgID, replayOf string) bool {
	want := replayMsg(rec, msgID, replayOf)
	return m.Subject == want.Subject && bytes.Equal(m.Data, want.Data) && sameHeaders(m.header(), want.Header)
}

// sameHeaders reports whether stored carries exactly the headers of want,
// apart from the expectations a publish states to the server.
func sameHeaders(stored, want nats.Header) bool {
	n := 0
	for k, v := range stored {
		if strings.HasPrefix(k, "Nats-Expected-") {
			continue
		}
		if !slices.Equal(v, want[k]) {
			return false
		}
		n++
	}
	return n == len(want)
}

// scan calls fn with each message of stream on subject (a literal or a
// wildcard; "" for all), oldest first, from the first stored at since
// onwards (zero: from the first) to the last one stored when the call
// began, until fn returns false or an error. It reads one message at a time
// with STREAM.MSG.GET ("next on this subject from sequence n"), so memory
// stays bounded whatever the number of records, and it needs no consumer:
// the shipped permissions let no role but the worker make one on the
// dead-letter and outcome streams, since a consumer can deliver their bytes
// wherever its creator says (deploy/nats-auth).
func scan(ctx context.Context, js jetstream.JetStream, stream, subject string, since time.Time, fn func(*jetstream.RawStreamMsg) (bool, error)) error {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", stream, err)
	}
	state := s.CachedInfo().State
	if state.Msgs == 0 {
		return nil
	}
	if subject == "" {
		subject = ">"
	}
	seq := state.FirstSeq
	if !since.IsZero() {
		if seq, err = firstSince(ctx, js, stream, subject, since); err != nil || seq == 0 {
			return err
		}
	}
	for seq <= state.LastSeq {
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read stream %s: %w", stream, err)
		}
		if m.Sequence > state.LastSeq {
			return nil
		}
		more, err := fn(m)
		if err != nil || !more {
			return err
		}
		seq = m.Sequence + 1
	}
	return nil
}

// firstSince is the sequence of the first message on subject stored at
// since or later, 0 when there is none.
func firstSince(ctx context.Context, js jetstream.JetStream, stream, subject string, since time.Time) (uint64, error) {
	t := since.UTC()
	m, err := msgGet(ctx, js, stream, msgGetRequest{NextFor: subject, StartTime: &t})
	if err != nil || m == nil {
		return 0, err
	}
	return m.Seq, nil
}
