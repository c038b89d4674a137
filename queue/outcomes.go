package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/event"
)

// Stray is a message on a key's subject of the outcome stream that is not
// a record of that key (it does not parse, or names another key): never
// believed, and reported (SPEC §4, "The proof", point 8).
type Stray struct {
	Subject  string
	Sequence uint64
}

// recordOn is the record m holds, if it is one of its subject's key; if
// not, ok is false and m is reported to stray (which may be nil).
func recordOn(m *jetstream.RawStreamMsg, stray func(Stray)) (o event.Record, ok bool) {
	o, err := event.DecodeRecord(m.Data)
	if err != nil || !onOwnSubject(m.Subject, o) {
		if stray != nil {
			stray(Stray{Subject: m.Subject, Sequence: m.Sequence})
		}
		return event.Record{}, false
	}
	return o, true
}

// EachOutcome reads the outcome records (SPEC §5a) on subject (a key's own
// subject, or a wildcard such as <prefix>.<account>.>), oldest first, from
// the records stored at since onwards (zero: from the first) to the last
// one stored when the call began, and calls fn with each record of its
// subject's key; any other message there goes to stray (nil: skipped).
// It only reads. An error from fn stops the reading and is returned.
func EachOutcome(ctx context.Context, js jetstream.JetStream, stream, subject string, since time.Time, fn func(event.Record) error, stray func(Stray)) error {
	return scan(ctx, js, stream, subject, since, func(m *jetstream.RawStreamMsg) (bool, error) {
		o, ok := recordOn(m, stray)
		if !ok {
			return true, nil
		}
		return true, fn(o)
	})
}

// eachOnSubject calls fn with the sequence and body of every message
// stored on the literal subject, oldest first, until fn returns false. It
// asks the stream for each message in turn ("next on this subject from
// sequence n"), so its cost follows the subject's messages, not the
// stream's: the records of one key are few whatever the size of the trail.
func eachOnSubject(ctx context.Context, js jetstream.JetStream, stream, subject string, fn func(m *jetstream.RawStreamMsg) bool) error {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", stream, err)
	}
	return eachIn(ctx, s, subject, fn)
}

// msgGetter reads a stream's messages; jetstream.Stream meets it.
type msgGetter interface {
	GetMsg(ctx context.Context, seq uint64, opts ...jetstream.GetMsgOpt) (*jetstream.RawStreamMsg, error)
}

// eachIn is eachOnSubject on a stream already at hand.
func eachIn(ctx context.Context, s msgGetter, subject string, fn func(m *jetstream.RawStreamMsg) bool) error {
	return eachFrom(ctx, s, subject, 1, fn)
}

// eachFrom is eachIn from sequence seq on.
func eachFrom(ctx context.Context, s msgGetter, subject string, seq uint64, fn func(m *jetstream.RawStreamMsg) bool) error {
	for {
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", subject, err)
		}
		if !fn(m) {
			return nil
		}
		seq = m.Sequence + 1
	}
}

// onOwnSubject reports whether the record o, stored on subject, names the
// key whose subject it is: a record counts only there.
func onOwnSubject(subject string, o event.Record) bool {
	token := func(id string) bool { return id == event.NoKey || cloudflare.ValidIdentifier(id) }
	return token(o.AccountID) && token(o.KeyID) && strings.HasSuffix(subject, "."+o.AccountID+"."+o.KeyID)
}

// storedWhen is what a reader knows of when its event was stored: the
// time itself, or only that its stream was made before it.
type storedWhen struct {
	// at is when the stream stored the event; zero: not known.
	at time.Time
	// after bounds it when at is not known: the time its stream was made
	// (zero: no bound). A record of an older event at the same sequence
	// of a stream deleted and made again was stored before it.
	after time.Time
}

// storedAt is a storedWhen that knows the time (zero: knows nothing).
func storedAt(t time.Time) storedWhen { return storedWhen{at: t} }

// recordClockMargin is how much earlier than its event a record may seem
// stored: the work and outcome streams' leaders may be two servers, each
// with its own clock. Generous: a record missed for a skew beyond it is a
// second final record; records of other events within it are only read
// through. A variable for tests.
var recordClockMargin = time.Hour

// earliest is when the first record of the event could have been stored,
// by the outcome stream's clock (zero: at any time): an event's records
// follow it.
func (w storedWhen) earliest() time.Time {
	if !w.at.IsZero() {
		return w.at.Add(-recordClockMargin)
	}
	return w.after // made less the margin already
}

// says reports whether o's published_at agrees with what w knows.
func (w storedWhen) says(o event.Record) bool {
	if w.at.IsZero() && w.after.IsZero() {
		return true
	}
	t, err := time.Parse(time.RFC3339Nano, o.PublishedAt)
	if err != nil {
		return false
	}
	if !w.at.IsZero() {
		return t.Equal(w.at)
	}
	return !t.Before(w.after)
}

// believed is what one key's subject says of one event.
type believed struct {
	rec   event.Record
	seq   uint64 // rec's sequence in the outcome stream
	found bool
	// last is the last sequence stored on the subject, 0 for none: a
	// write that expects it cannot race another.
	last uint64
}

// believe reads the records on the key's own subject that match accepts
// and returns the one to believe: a revoked record beats every other (a
// confirmation is never buried, SPEC §4 "The proof" point 3), and among
// equals the later (the worker writes its own again, under a new id, only
// when it finds one it did not write under its id). A record counts only if
// it names the subject's key, and, when the event's storing time is known
// (storedAt), only if its published_at is that time to the nanosecond: the
// worker copies it from the delivery, while a record planted before the
// event existed could not know it. When only its stream's making is known,
// a record stored before that is another event's, of an older stream. (Comparing the record's own store time
// with the event's would compare two servers' clocks: the work and outcome
// streams may have different leaders.)
func believe(ctx context.Context, js jetstream.JetStream, stream, subject string, stored storedWhen, match func(event.Record) bool, stray func(Stray)) (believed, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return believed{}, fmt.Errorf("stream %s: %w", stream, err)
	}
	return believeIn(ctx, js.Conn(), stream, s, subject, stored, match, stray)
}

// believeIn is believe on a stream already at hand (named stream, on nc).
// A message on subject that is not a record of its key goes to stray (nil:
// skipped). Where it is known when the event was stored, the records
// stored well before are not read: a key's subject may hold any number of
// other events' records (anyone who may publish can file invalid events
// under a key), and reading them all would outlast any timeout.
func believeIn(ctx context.Context, nc *nats.Conn, stream string, s msgGetter, subject string, stored storedWhen, match func(event.Record) bool, stray func(Stray)) (b believed, err error) {
	each := func(m *jetstream.RawStreamMsg) bool {
		b.last = m.Sequence
		o, ok := recordOn(m, stray)
		if !ok || !match(o) || !stored.says(o) {
			return true
		}
		if !b.found || o.Outcome == event.Revoked || b.rec.Outcome != event.Revoked {
			b.rec, b.seq, b.found = o, m.Sequence, true
		}
		return true
	}
	start := uint64(1)
	if since := stored.earliest(); !since.IsZero() {
		t := since.UTC()
		first, err := msgGetOn(ctx, nc, stream, msgGetRequest{NextFor: subject, StartTime: &t})
		if err != nil {
			return b, fmt.Errorf("read %s: %w", subject, err)
		}
		if first == nil {
			// Nothing since: the subject's last, which a write expects. It
			// is read as any other: stored meanwhile, it may be this
			// event's record (another replica's), which a write expecting
			// it would follow with a second.
			last, err := msgGetOn(ctx, nc, stream, msgGetRequest{LastFor: subject})
			if err != nil {
				return b, fmt.Errorf("read %s: %w", subject, err)
			}
			if last != nil {
				each(&jetstream.RawStreamMsg{Subject: last.Subject, Sequence: last.Seq, Data: last.Data, Time: last.Time})
			}
			return b, nil
		}
		each(&jetstream.RawStreamMsg{Subject: first.Subject, Sequence: first.Seq, Data: first.Data, Time: first.Time})
		start = first.Seq + 1
	}
	return b, eachFrom(ctx, s, subject, start, each)
}

// LogStray reports a stray message on log (nil: nowhere) as a warning.
func LogStray(log *zap.Logger) func(Stray) {
	if log == nil {
		return nil
	}
	return func(s Stray) {
		log.Warn("a message on a key's outcome subject is not a record of that key: not believed",
			zap.String("subject", s.Subject), zap.Uint64("sequence", s.Sequence))
	}
}

// KeyOutcomes returns the records of one key, oldest first, reading only
// the key's own subject; any other message there goes to stray (nil:
// skipped).
func KeyOutcomes(ctx context.Context, js jetstream.JetStream, stream, prefix, account, key string, stray func(Stray)) ([]event.Record, error) {
	var out []event.Record
	subject := OutcomeSubject(prefix, account, key)
	err := eachOnSubject(ctx, js, stream, subject, func(m *jetstream.RawStreamMsg) bool {
		if o, ok := recordOn(m, stray); ok {
			out = append(out, o)
		}
		return true
	})
	return out, err
}

// followPoll is how often FollowOutcomes asks for a record newer than the
// last one it read.
const followPoll = 250 * time.Millisecond

// followRead bounds one read of a follow.
const followRead = 5 * time.Second

// FollowOutcomes calls fn with each outcome record on subject stored from
// since on (zero: all), and then with each new one as it is stored (any
// other message there going to stray, as in EachOutcome), until
// ctx ends (nil) or fn fails. Like scan it reads with STREAM.MSG.GET, one
// record at a time, and asks again every followPoll once it has read all;
// a NATS outage is waited out.
func FollowOutcomes(ctx context.Context, js jetstream.JetStream, stream, subject string, since time.Time, fn func(event.Record) error, stray func(Stray)) error {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", stream, err)
	}
	seq := uint64(1)
	if !since.IsZero() {
		first, err := firstSince(ctx, js, stream, subject, since)
		if err != nil {
			return fmt.Errorf("follow %s: %w", subject, err)
		}
		seq = first
		if first == 0 {
			seq = s.CachedInfo().State.LastSeq + 1
		}
	}
	for {
		// Each read is bounded: a request lost with a server that went
		// away is asked again, not waited on until the follow ends.
		rctx, cancel := context.WithTimeout(ctx, followRead)
		m, err := s.GetMsg(rctx, seq, jetstream.WithGetMsgSubject(subject))
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil
		case err == nil:
			seq = m.Sequence + 1
			o, ok := recordOn(m, stray)
			if !ok {
				continue
			}
			if err := fn(o); err != nil {
				return err
			}
			continue
		case !errors.Is(err, jetstream.ErrMsgNotFound) && !transient(err):
			return fmt.Errorf("follow %s: %w", subject, err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(followPoll):
		}
	}
}

// transient reports an error that waiting can cure: no answer in time, no
// server to answer, a connection being made again. A connection closed
// for good (its credentials refused, say) is not: nothing would come.
func transient(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrDisconnected) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrReconnectBufExceeded)
}
