package queue

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
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
)

// maxDetail bounds Revoker-Detail: one line a person can read.
const maxDetail = 1024

// EventID is the event's id: its Nats-Msg-Id, else <stream>:<sequence>.
func EventID(msg jetstream.Msg, meta *jetstream.MsgMetadata) string {
	if id := msg.Headers().Get(jetstream.MsgIDHeader); id != "" {
		return id
	}
	return meta.Stream + ":" + strconv.FormatUint(meta.Sequence.Stream, 10)
}

// DeadLetter is what the dead-letter record says of an event.
type DeadLetter struct {
	Reason   string
	Detail   string
	Status   int  // last HTTP status, 0 if the last call got none
	Called   bool // whether any call was made; Revoker-Status is absent if not
	Attempts int
	EventID  string
	Stream   string
	Subject  string
	Sequence uint64
	FailedAt time.Time
}

// Msg builds the record: the original body byte for byte, the facts in
// headers, and a Nats-Msg-Id derived from the source position so a retried
// write cannot make two records.
func (d DeadLetter) Msg(subject string, body []byte) *nats.Msg {
	m := nats.NewMsg(subject)
	m.Data = body
	h := m.Header
	h.Set(jetstream.MsgIDHeader, fmt.Sprintf("dlq:%s:%d", d.Stream, d.Sequence))
	h.Set(HeaderReason, d.Reason)
	h.Set(HeaderDetail, OneLine(d.Detail, maxDetail))
	if d.Called {
		st := "error"
		if d.Status != 0 {
			st = strconv.Itoa(d.Status)
		}
		h.Set(HeaderStatus, st)
	}
	h.Set(HeaderAttempts, strconv.Itoa(d.Attempts))
	h.Set(HeaderEventID, OneLine(d.EventID, 256))
	h.Set(HeaderSourceSubject, d.Subject)
	h.Set(HeaderSourceSequence, strconv.FormatUint(d.Sequence, 10))
	h.Set(HeaderFailedAt, d.FailedAt.UTC().Format(time.RFC3339Nano))
	return m
}

// Outcome is the audit record of an event's final outcome (SPEC §5a).
type Outcome struct {
	EventID     string `json:"event_id"`
	AccountID   string `json:"account_id"`
	KeyID       string `json:"key_id"`
	Outcome     string `json:"outcome"`
	Reason      string `json:"reason,omitempty"`
	Status      int    `json:"status"`
	CFRay       string `json:"cf_ray"`
	Attempts    int    `json:"attempts"`
	Subject     string `json:"subject"`
	Sequence    uint64 `json:"sequence"`
	RequestedAt string `json:"requested_at,omitempty"`
	PublishedAt string `json:"published_at"`
	CompletedAt string `json:"completed_at"`
	RequestedBy string `json:"requested_by,omitempty"`
	Worker      string `json:"worker"`
	// ReplayOf is the original event's id when this one is a replay of a
	// dead letter, so the audit trail links the two.
	ReplayOf string `json:"replay_of,omitempty"`
}

// Msg builds the outcome record; stream is the work stream the event came
// from. Its Nats-Msg-Id makes a repeated write of the same outcome a no-op.
func (o Outcome) Msg(subject, stream string) (*nats.Msg, error) {
	body, err := json.Marshal(o)
	if err != nil {
		return nil, err
	}
	m := nats.NewMsg(subject)
	m.Data = body
	m.Header.Set(HeaderEventID, OneLine(o.EventID, 256))
	m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("outcome:%s:%d", stream, o.Sequence))
	return m, nil
}

// Publisher writes records and waits for the stream's acknowledgement.
type Publisher struct {
	JS      jetstream.JetStream
	Timeout time.Duration
}

// Publish writes msg to stream and returns once the stream has stored it.
func (p Publisher) Publish(ctx context.Context, stream string, msg *nats.Msg) error {
	ctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	_, err := p.JS.PublishMsg(ctx, msg, jetstream.WithExpectStream(stream))
	return err
}

// OneLine makes s safe for a header and a log line: control characters
// become spaces, and it is cut to at most n bytes.
func OneLine(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	if len(s) > n {
		cut := n
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return strings.TrimSpace(s)
}

// OutcomeWriter writes outcome records without waiting for each one: the
// audit trail must not slow revocations down, and a record that cannot be
// written never undoes or repeats a revocation. Failures reach onFail.
type OutcomeWriter struct {
	js      jetstream.JetStream
	stream  string
	subject string
}

// NewOutcomeWriter writes to subject (stored by stream) over nc. onFail is
// told of every record the stream did not acknowledge.
func NewOutcomeWriter(nc *nats.Conn, stream, subject string, onFail func(*nats.Msg, error)) (*OutcomeWriter, error) {
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(1024),
		jetstream.WithPublishAsyncTimeout(10*time.Second),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) { onFail(m, err) }),
	)
	if err != nil {
		return nil, err
	}
	return &OutcomeWriter{js: js, stream: stream, subject: subject}, nil
}

// Write queues o, the outcome of an event of sourceStream; it blocks only
// while 1,024 records await acknowledgement (10 s at most).
func (w *OutcomeWriter) Write(o Outcome, sourceStream string) error {
	m, err := o.Msg(w.subject, sourceStream)
	if err != nil {
		return err
	}
	// Past the pending limit, wait (back-pressure on the events finishing)
	// rather than drop the record.
	_, err = w.js.PublishMsgAsync(m, jetstream.WithExpectStream(w.stream), jetstream.WithStallWait(10*time.Second))
	return err
}

// Flush waits until every queued record is acknowledged or ctx ends.
func (w *OutcomeWriter) Flush(ctx context.Context) error {
	select {
	case <-w.js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%d outcome records not acknowledged: %w", w.js.PublishAsyncPending(), ctx.Err())
	}
}
