package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/event"
)

// EachOutcome reads the outcome records (SPEC §5a) on subject (a key's own
// subject, or a wildcard such as <prefix>.<account>.>), oldest first, from
// the records stored at since onwards (zero: from the first) to the last
// one stored when the call began, and calls fn with each record whose body
// parses. It only reads. An error from fn stops the reading and is
// returned.
func EachOutcome(ctx context.Context, js jetstream.JetStream, stream, subject string, since time.Time, fn func(event.Record) error) error {
	occ := jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}}
	if !since.IsZero() {
		occ.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		occ.OptStartTime = &since
	}
	return scan(ctx, js, stream, occ, func(m jetstream.Msg, _ *jetstream.MsgMetadata) (bool, error) {
		var o event.Record
		if err := json.Unmarshal(m.Data(), &o); err != nil {
			// Not a record of ours (someone else published on the
			// subject); the audit trail is the records that are.
			return true, nil
		}
		return true, fn(o)
	})
}

// eachOnSubject calls fn with the body of every message stored on the
// literal subject, oldest first, until fn returns false. It asks the
// stream for each message in turn ("next on this subject from sequence
// n"), so its cost follows the subject's messages, not the stream's: the
// records of one key are few whatever the size of the trail.
func eachOnSubject(ctx context.Context, js jetstream.JetStream, stream, subject string, fn func([]byte) bool) error {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", stream, err)
	}
	for seq := uint64(1); ; {
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", subject, err)
		}
		if !fn(m.Data) {
			return nil
		}
		seq = m.Sequence + 1
	}
}

// lastRecord returns the last record on the literal subject that match
// accepts. When two records name one event, the later is the one to
// believe: the worker writes its own again, under a new id, only when it
// finds one it did not write under its id.
func lastRecord(ctx context.Context, js jetstream.JetStream, stream, subject string, match func(event.Record) bool) (rec event.Record, found bool, err error) {
	err = eachOnSubject(ctx, js, stream, subject, func(b []byte) bool {
		var o event.Record
		if json.Unmarshal(b, &o) == nil && match(o) {
			rec, found = o, true
		}
		return true
	})
	return rec, found, err
}

// KeyOutcomes returns the records of one key, oldest first, reading only
// the key's own subject.
func KeyOutcomes(ctx context.Context, js jetstream.JetStream, stream, prefix, account, key string) ([]event.Record, error) {
	var out []event.Record
	err := eachOnSubject(ctx, js, stream, OutcomeSubject(prefix, account, key), func(b []byte) bool {
		var o event.Record
		if json.Unmarshal(b, &o) == nil {
			out = append(out, o)
		}
		return true
	})
	return out, err
}

// FollowOutcomes calls fn with each outcome record on subject stored from
// since on (zero: all), and then with each new one as it is stored, until
// ctx ends (nil) or fn fails.
func FollowOutcomes(ctx context.Context, js jetstream.JetStream, stream, subject string, since time.Time, fn func(event.Record) error) error {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", stream, err)
	}
	occ := jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}}
	if !since.IsZero() {
		occ.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		occ.OptStartTime = &since
	}
	cons, err := s.OrderedConsumer(ctx, occ)
	if err != nil {
		return fmt.Errorf("follow %s: %w", subject, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("follow %s: %w", subject, err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			return fmt.Errorf("follow %s: %w", subject, err)
		}
		var o event.Record
		if json.Unmarshal(m.Data(), &o) != nil {
			continue
		}
		if err := fn(o); err != nil {
			return err
		}
	}
}
