package queue

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/untrusted"
	"github.com/revoker/revoker/worker"
)

// Header names of the dead-letter record (SPEC §5).
const (
	HeaderReason         = "Revoker-Reason"
	HeaderDetail         = "Revoker-Detail"
	HeaderStatus         = "Revoker-Status"
	HeaderAttempts       = "Revoker-Attempts"
	HeaderEventID        = "Revoker-Event-Id"
	HeaderSourceSubject  = "Revoker-Source-Subject"
	HeaderSourceSequence = "Revoker-Source-Sequence"
	HeaderFailedAt       = "Revoker-Failed-At"
	HeaderReplayOf       = "Revoker-Replay-Of"
	HeaderBodyTruncated  = "Revoker-Body-Truncated"
	HeaderTraceID        = "Revoker-Trace-Id"
	// Headers a dead letter keeps for its replay: the original's
	// Content-Type (without it a CloudEvent would come back as a plain
	// event, and be dead-lettered again as invalid) and the event's trace
	// context.
	HeaderContentType = "Content-Type"
	HeaderTraceParent = "traceparent"
	HeaderTraceState  = "tracestate"
)

// Bounds of what a record carries (SPEC §5).
const (
	maxHeader = 256
	maxDetail = 1024
	// truncatedBody is what is kept of a body too large for its record.
	truncatedBody = 64 << 10
)

// headerBytes is what h takes in a message, as the server counts it
// against a stream's message limit: the version line, a line per value,
// the blank line.
func headerBytes(h nats.Header) int {
	n := len("NATS/1.0\r\n\r\n")
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(": \r\n") + len(v)
		}
	}
	return n
}

// EventID is the event's id: its Nats-Msg-Id, else <stream>:<sequence>.
func EventID(msgID, stream string, seq uint64) string {
	if msgID != "" {
		return msgID
	}
	return stream + ":" + strconv.FormatUint(seq, 10)
}

// DeadLetterMsg builds the record: the original body byte for byte (cut,
// and marked so, only where it could not fit maxMsg), the facts in headers,
// and a Nats-Msg-Id derived from the source position so a retried write
// cannot make two records.
func DeadLetterMsg(subject string, d event.DeadLetter, body []byte, maxMsg int) *nats.Msg {
	return deadLetterMsg(subject, "", d, body, maxMsg, dlqMsgID(d))
}

func dlqMsgID(d event.DeadLetter) string { return fmt.Sprintf("dlq:%s:%d", d.Stream, d.Sequence) }

// deadLetterMsg is DeadLetterMsg under the Nats-Msg-Id id, expecting the
// stream stream when that is not empty: the body's cut is reckoned with
// every header the record is written with, as the server counts them.
func deadLetterMsg(subject, stream string, d event.DeadLetter, body []byte, maxMsg int, id string) *nats.Msg {
	m := nats.NewMsg(subject)
	m.Data = body
	h := m.Header
	h.Set(jetstream.MsgIDHeader, id)
	if stream != "" {
		h.Set(jetstream.ExpectedStreamHeader, stream) // as publish sets it
	}
	h.Set(HeaderReason, string(d.Reason))
	h.Set(HeaderDetail, untrusted.Chars(d.Detail, maxDetail))
	if d.Called {
		st := "error"
		if d.Status != 0 {
			st = strconv.Itoa(d.Status)
		}
		h.Set(HeaderStatus, st)
	}
	h.Set(HeaderAttempts, strconv.Itoa(d.Attempts))
	h.Set(HeaderEventID, untrusted.Chars(d.EventID, maxHeader))
	h.Set(HeaderSourceSubject, untrusted.Chars(d.Subject, maxHeader))
	h.Set(HeaderSourceSequence, strconv.FormatUint(d.Sequence, 10))
	h.Set(HeaderFailedAt, d.FailedAt.UTC().Format(time.RFC3339Nano))
	if d.TraceID != "" {
		h.Set(HeaderTraceID, d.TraceID)
	}
	switch {
	case event.IsCloudEvent(d.ContentType):
		// Its parameters dropped, never cut: a replay must read the
		// body as a CloudEvent again, as the worker did.
		h.Set(HeaderContentType, event.CloudEventsContentType)
	case d.ContentType != "":
		h.Set(HeaderContentType, untrusted.Chars(d.ContentType, maxHeader))
	}
	if d.TraceParent != "" {
		h.Set(HeaderTraceParent, untrusted.Chars(d.TraceParent, maxHeader))
		// Kept only whole: a cut tracestate is none.
		if d.TraceState != "" && len(d.TraceState) <= maxHeader {
			h.Set(HeaderTraceState, d.TraceState)
		}
	}
	// The body is cut only where the record would not fit otherwise, and
	// then to 64 KiB, or less only where 64 KiB would not fit (SPEC §5).
	if room := maxMsg - headerBytes(h); maxMsg > 0 && len(body) > room {
		sum := sha256.Sum256(body)
		h.Set(HeaderBodyTruncated, fmt.Sprintf("%d sha256:%s", len(body), hex.EncodeToString(sum[:])))
		m.Data = body[:min(len(body), truncatedBody, max(maxMsg-headerBytes(h), 0))]
	}
	return m
}

// OutcomeSubject is the subject of the records of one key:
// <prefix>.<account>.<key>, with "_" for an id that is not valid.
func OutcomeSubject(prefix, account, key string) string {
	if !cloudflare.ValidIdentifier(account) {
		account = event.NoKey
	}
	if !cloudflare.ValidIdentifier(key) {
		key = event.NoKey
	}
	return prefix + "." + account + "." + key
}

// OutcomeMsg builds the outcome record of rec under prefix. A record on its
// key's own subject needs no Nats-Msg-Id: its write expects the subject's
// last sequence, so a repeated write is refused and reads what is there.
// Records of events without a valid key share one subject and are written
// without that check: their Nats-Msg-Id makes a repeat of the same outcome
// a no-op, and names the outcome.
func OutcomeMsg(prefix string, rec event.Record) *nats.Msg {
	m := nats.NewMsg(OutcomeSubject(prefix, rec.AccountID, rec.KeyID))
	m.Data = rec.AppendJSON(make([]byte, 0, 512))
	m.Header.Set(HeaderEventID, untrusted.Chars(rec.EventID, maxHeader))
	if rec.TraceID != "" {
		m.Header.Set(HeaderTraceID, rec.TraceID)
	}
	if !cloudflare.ValidIdentifier(rec.AccountID) || !cloudflare.ValidIdentifier(rec.KeyID) {
		m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("outcome:%s:%d:%s", rec.Stream, rec.Sequence, rec.Outcome))
	}
	return m
}

// Records writes dead-letter and outcome records and waits for the
// streams' acknowledgement; it meets worker.Records.
type Records struct {
	JS  jetstream.JetStream
	Log *zap.Logger
	// DLQStream and DLQSubject take the dead letters.
	DLQStream, DLQSubject string
	// OutcomeStream and OutcomePrefix take the outcome records; an empty
	// prefix turns them off.
	OutcomeStream, OutcomePrefix string
	// Timeout bounds one write.
	Timeout time.Duration

	dlqMaxMsg atomic.Int64 // the dead-letter stream's message limit, once known (-1: none)
	// outcomes is the outcome stream's handle, kept between reads: a
	// stream-info request before each would cost more than the read.
	// A failed read drops it, so a stream made again is looked up again.
	outcomes atomic.Pointer[jetstream.Stream]
	first    firstAnswers // the answers to first records (FirstOutcome)
}

var _ worker.Records = (*Records)(nil)

// DeadLetter stores the record of d.
func (r *Records) DeadLetter(ctx context.Context, d event.DeadLetter, body []byte) error {
	err := r.deadLetter(ctx, d, body)
	if errors.Is(err, jetstream.ErrStreamMessageExceedsMaximum) {
		// The stream's limit was lowered since it was read: read it again,
		// so that the record is cut to fit (SPEC §5: a record always fits).
		r.dlqMaxMsg.Store(0)
		err = r.deadLetter(ctx, d, body)
	}
	return err
}

func (r *Records) deadLetter(ctx context.Context, d event.DeadLetter, body []byte) error {
	maxMsg := r.maxRecord(ctx)
	m := deadLetterMsg(r.DLQSubject, r.DLQStream, d, body, maxMsg, dlqMsgID(d))
	ctx, cancel := context.WithTimeout(ctx, r.Timeout)
	defer cancel()
	again := func(id string) *nats.Msg { return deadLetterMsg(r.DLQSubject, r.DLQStream, d, body, maxMsg, id) }
	return r.write(ctx, r.DLQStream, m, again, nil, func(stored *jetstream.RawStreamMsg) bool {
		// Ours if it says what ours says of the same event, from the
		// same place: a retried write of our own record, not one planted
		// in advance. The source subject counts, since a replay follows
		// it, and so does the Content-Type a replay carries back (it
		// would make the event a CloudEvent); so do the calls, their last
		// status and the detail, or a record planted with none, or one
		// of an earlier delivery that made fewer calls, would stand in
		// for the true one (the one written again beside it says more).
		// Only the time and the trace's span may differ.
		return stored.Header.Get(HeaderReason) == m.Header.Get(HeaderReason) &&
			stored.Header.Get(HeaderAttempts) == m.Header.Get(HeaderAttempts) &&
			stored.Header.Get(HeaderStatus) == m.Header.Get(HeaderStatus) &&
			stored.Header.Get(HeaderDetail) == m.Header.Get(HeaderDetail) &&
			stored.Header.Get(HeaderContentType) == m.Header.Get(HeaderContentType) &&
			stored.Header.Get(HeaderSourceSequence) == m.Header.Get(HeaderSourceSequence) &&
			stored.Header.Get(HeaderSourceSubject) == m.Header.Get(HeaderSourceSubject) &&
			stored.Header.Get(HeaderBodyTruncated) == m.Header.Get(HeaderBodyTruncated) &&
			stored.Header.Get(HeaderEventID) == m.Header.Get(HeaderEventID) &&
			bytes.Equal(stored.Data, m.Data)
	})
}

// maxRecord is the largest dead-letter record that can be stored: the
// server's payload limit, or the dead-letter stream's message limit where
// that is smaller.
func (r *Records) maxRecord(ctx context.Context) int {
	limit := int(r.JS.Conn().MaxPayload())
	if r.dlqMaxMsg.Load() == 0 {
		ictx, cancel := context.WithTimeout(ctx, r.Timeout)
		defer cancel()
		if s, err := r.JS.Stream(ictx, r.DLQStream); err == nil {
			r.dlqMaxMsg.Store(max(int64(s.CachedInfo().Config.MaxMsgSize), -1))
		}
	}
	if n := int(r.dlqMaxMsg.Load()); n > 0 && (limit <= 0 || n < limit) {
		limit = n
	}
	return limit
}

// Outcome stores rec as its event's final record on the key's own
// subject, unless a record of the event is there already: then it stores
// nothing and returns that one, except that a revoked record follows any
// other, naming it in Supersedes (SPEC §4, "The proof", point 3). The
// write expects the last sequence it read on the subject, so two replicas
// racing to record one event end with one record (or that pair): the
// loser reads again and finds the winner's. It returns the record the
// trail believes for the event.
func (r *Records) Outcome(ctx context.Context, rec event.Record) (event.Record, error) {
	if r.OutcomePrefix == "" {
		return rec, worker.ErrNoTrail
	}
	ctx, cancel := context.WithTimeout(ctx, r.Timeout)
	defer cancel()
	subject := OutcomeSubject(r.OutcomePrefix, rec.AccountID, rec.KeyID)
	if !cloudflare.ValidIdentifier(rec.AccountID) || !cloudflare.ValidIdentifier(rec.KeyID) {
		// The records of events without a valid key share one subject, too
		// many to read through; the record's Nats-Msg-Id still drops a
		// repeat within the duplicate window.
		m := OutcomeMsg(r.OutcomePrefix, rec)
		return rec, r.write(ctx, r.OutcomeStream, m, nil, nil, func(stored *jetstream.RawStreamMsg) bool {
			var o event.Record
			return json.Unmarshal(stored.Data, &o) == nil && o.SameFacts(rec)
		})
	}
	stored, _ := time.Parse(time.RFC3339Nano, rec.PublishedAt)
	// The first write expects the key's subject to be empty, as it is for
	// a key's first event, and is refused if anything is stored there; only
	// then is the subject read. It is stored exactly when a read first
	// would have found nothing and written the same record, at one request
	// instead of two.
	var b believed
	for read := false; ; read = true {
		if read {
			var err error
			b, err = r.believe(ctx, subject, stored, func(o event.Record) bool {
				return o.Stream == rec.Stream && o.Sequence == rec.Sequence && o.Outcome.Final()
			})
			if err != nil {
				return rec, err
			}
		}
		if b.found {
			if b.rec.Outcome == event.Revoked || rec.Outcome != event.Revoked {
				return b.rec, nil
			}
			rec.Supersedes = b.seq
			// The record corrected counted the confirming call
			// unanswered (its writer did not hear it), and heard its own
			// calls' answers, which this one's writer cannot know (an ack
			// leaves nothing in the ledger). Each count errs only by the
			// calls the other heard: with the same calls known, the lower
			// stands; where the corrected one knew of more (this writer
			// was cut off meanwhile), its count does.
			switch unanswered := max(b.rec.UnansweredCalls-1, 0); {
			case b.rec.Attempts > rec.Attempts:
				rec.Attempts, rec.UnansweredCalls = b.rec.Attempts, unanswered
			case b.rec.Attempts == rec.Attempts:
				rec.UnansweredCalls = min(rec.UnansweredCalls, unanswered)
			}
		}
		m := OutcomeMsg(r.OutcomePrefix, rec)
		err := r.write(ctx, r.OutcomeStream, m, nil, &b.last, func(stored *jetstream.RawStreamMsg) bool {
			var o event.Record
			return json.Unmarshal(stored.Data, &o) == nil && o.SameFacts(rec)
		})
		if !wrongLastSequence(err) {
			return rec, err
		}
		// Another record reached the subject first: read again.
	}
}

// wrongLastSequence reports a write refused because the subject's last
// sequence was not the one expected.
func wrongLastSequence(err error) bool {
	if err == nil {
		return false // the common case, spared the allocation of apiErr
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// Prior returns the record the trail believes for the event, read from the
// key's own subject. found is false when there is none.
func (r *Records) Prior(ctx context.Context, ref worker.Ref) (rec event.Record, found bool, err error) {
	if r.OutcomePrefix == "" {
		return rec, false, nil
	}
	ctx, cancel := context.WithTimeout(ctx, r.Timeout)
	defer cancel()
	b, err := r.believe(ctx, OutcomeSubject(r.OutcomePrefix, ref.Account, ref.Key), ref.Stored, func(o event.Record) bool {
		return o.Stream == ref.Stream && o.Sequence == ref.Seq && o.Outcome.Final()
	})
	return b.rec, b.found, err
}

// believe is queue's believe on the outcome stream, through the kept
// handle.
func (r *Records) believe(ctx context.Context, subject string, stored time.Time, match func(event.Record) bool) (believed, error) {
	sp := r.outcomes.Load()
	if sp == nil {
		s, err := r.JS.Stream(ctx, r.OutcomeStream)
		if err != nil {
			return believed{}, fmt.Errorf("stream %s: %w", r.OutcomeStream, err)
		}
		sp = &s
		r.outcomes.Store(sp)
	}
	b, err := believeIn(ctx, r.JS.Conn(), r.OutcomeStream, *sp, subject, storedAt(stored), match, LogStray(r.Log))
	if err != nil {
		r.outcomes.CompareAndSwap(sp, nil)
	}
	return b, err
}

// write publishes m to stream and waits for its acknowledgement, expecting
// the subject's last sequence to be *expectLast when that is not nil. A
// duplicate answer is taken as written only if ours says the stored record
// is ours; otherwise somebody wrote under our id first, and the record is
// written again under an id nobody can guess: again(id) when again is not
// nil (a record whose size depends on its headers is made again whole),
// else m under that id. The caller bounds ctx (by Timeout): one timer per
// record, not one per write.
func (r *Records) write(ctx context.Context, stream string, m *nats.Msg, again func(id string) *nats.Msg, expectLast *uint64, ours func(*jetstream.RawStreamMsg) bool) error {
	ack, err := publish(ctx, r.JS.Conn(), stream, m, expectLast)
	if err != nil {
		return err
	}
	if !ack.Duplicate {
		return nil
	}
	s, err := r.JS.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("check the record stored under %s: %w", m.Header.Get(jetstream.MsgIDHeader), err)
	}
	stored, err := s.GetMsg(ctx, ack.Seq)
	if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("check the record stored under %s: %w", m.Header.Get(jetstream.MsgIDHeader), err)
	}
	if stored != nil && ours(stored) {
		return nil
	}
	id := m.Header.Get(jetstream.MsgIDHeader)
	// Planted, or an earlier write of ours that says less (a dead letter
	// of a delivery before this one): either way not this record.
	// The event's id and trace, as every line about an event (SPEC §13).
	r.Log.Error("a record that is not this one is stored under its id; writing it again under a new id",
		zap.String("event_id", m.Header.Get(HeaderEventID)), zap.String("trace_id", m.Header.Get(HeaderTraceID)),
		zap.String("stream", stream), zap.String("msg_id", untrusted.Line(id, maxHeader)), zap.Uint64("stored_sequence", ack.Seq))
	if id += ":" + rand.Text(); again != nil {
		m = again(id)
	} else {
		m.Header.Set(jetstream.MsgIDHeader, id)
	}
	_, err = publish(ctx, r.JS.Conn(), stream, m, expectLast)
	return err
}
