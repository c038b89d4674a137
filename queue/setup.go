package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/config"
)

// ErrIncompatible means an existing stream or consumer makes the work
// impossible (it does not hold a configured subject, say). Retrying cannot
// fix it: the start stops with exit status 2.
var ErrIncompatible = errors.New("incompatible JetStream setup")

// ErrMissing means a stream or consumer is missing and we were told not to
// create it. It may appear later, so the caller retries.
var ErrMissing = errors.New("missing JetStream setup")

// Durations fixed by SPEC §3.
const (
	DuplicateWindow = 2 * time.Minute
	OutcomeMaxAge   = 90 * 24 * time.Hour
)

// MaxAckPending is the consumers' limit on deliveries not yet acked. Each
// replica holds 2×concurrency messages of a lane at work; room for four
// replicas keeps a small fleet from starving one another. Beyond those, a
// replica holds the events set aside while they wait for a budget of their
// own (several credentials) or out a backoff, so that the events behind
// them are reached: room for every key of one account (an incident in it,
// SPEC §1: at most 1,000), so that another account's revocation published
// after them is fetched at once (SPEC §9).
func MaxAckPending(concurrency int) int { return 8*concurrency + cloudflare.MaxAccountKeys }

// Ensure checks the streams, durable consumers and replays bucket revoker
// needs, creating the missing ones when cfg.Create is set. It never changes
// an existing one: a difference in settings is logged as a warning, and a
// difference that makes the work impossible returns an error wrapping
// ErrIncompatible.
func Ensure(ctx context.Context, js jetstream.JetStream, cfg config.Topology, log *zap.Logger) error {
	streams := []jetstream.StreamConfig{WorkStream(cfg), DLQStream(cfg)}
	if cfg.OutcomePrefix != "" {
		streams = append(streams, OutcomeStream(cfg))
	}
	for _, want := range streams {
		needs := want.Subjects
		if want.Name == cfg.OutcomeStream && cfg.OutcomePrefix != "" {
			// What is written there: <prefix>.<account>.<key>, always
			// two tokens ("_" for an invalid id). A stream made to hold
			// just those is as good as one holding <prefix>.>.
			needs = []string{cfg.OutcomePrefix + ".*.*"}
		}
		if err := ensureStream(ctx, js, want, needs, cfg.Create, log); err != nil {
			return err
		}
	}
	// The replays bucket is written only by `revoker dlq replay`, which
	// creates nothing: it is made here, with the streams.
	if _, err := bindBucket(ctx, js, ReplaysConfig(cfg.Replicas), cfg.Create, log); err != nil {
		return err
	}
	replicas, err := streamReplicas(ctx, js, cfg.Stream)
	if err != nil {
		return err
	}
	for _, subj := range cfg.Subjects {
		want := LaneConsumer(cfg, subj)
		if replicas != want.Replicas {
			// JetStream requires a work-queue stream's consumers to have
			// the stream's replicas; the stream's difference was warned
			// about above.
			want.Replicas = replicas
		}
		if err := ensureConsumer(ctx, js, cfg.Stream, want, cfg.Create, log); err != nil {
			return err
		}
	}
	return nil
}

// streamReplicas is the number of replicas the stream has.
func streamReplicas(ctx context.Context, js jetstream.JetStream, stream string) (int, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return 0, fmt.Errorf("look up stream %s: %w", stream, err)
	}
	return max(1, s.CachedInfo().Config.Replicas), nil
}

// WorkStream is the configuration revoker creates for the work stream.
func WorkStream(cfg config.Topology) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        cfg.Stream,
		Description: "revoke-key events, consumed by revoker",
		Subjects:    cfg.Subjects,
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Duplicates:  DuplicateWindow,
		// An event too large to be valid is refused at publish time, and
		// its dead-letter record always fits.
		MaxMsgSize: MaxEventMsg,
		Replicas:   cfg.Replicas,
	}
}

// MaxEventMsg is the work stream's message limit: twice the largest valid
// event, with room for headers.
const MaxEventMsg = 128 << 10

// DLQStream is the configuration revoker creates for dead letters: kept
// until an operator replays or removes them.
func DLQStream(cfg config.Topology) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        cfg.DLQStream,
		Description: "revoke-key events revoker could not complete",
		Subjects:    []string{cfg.DLQSubject},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Duplicates:  DuplicateWindow,
		Replicas:    cfg.Replicas,
	}
}

// OutcomeStream is the configuration revoker creates for the audit trail.
func OutcomeStream(cfg config.Topology) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        cfg.OutcomeStream,
		Description: "final outcome of every revoke-key event",
		Subjects:    []string{cfg.OutcomePrefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		MaxAge:      OutcomeMaxAge,
		Duplicates:  DuplicateWindow,
		// The audit trail is append-only through the API.
		DenyDelete: true,
		DenyPurge:  true,
		Replicas:   cfg.Replicas,
	}
}

// LaneConsumer is the durable pull consumer of one subject. MaxDeliver is
// unlimited on purpose: the worker dead-letters at REVOKER_MAX_DELIVER
// itself and never lets JetStream silently give up on a revocation.
func LaneConsumer(cfg config.Topology, subject string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       cfg.Durable(subject),
		Description:   "revoker lane for " + subject,
		FilterSubject: subject,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: MaxAckPending(cfg.Concurrency),
		Replicas:      cfg.Replicas,
	}
}

func ensureStream(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig, needs []string, create bool, log *zap.Logger) error {
	s, err := js.Stream(ctx, want.Name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound) && create:
		if _, err := js.CreateStream(ctx, want); err != nil {
			return fmt.Errorf("create stream %s: %w", want.Name, err)
		}
		log.Info("created stream", zap.String("stream", want.Name), zap.Strings("subjects", want.Subjects))
		return nil
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return fmt.Errorf("%w: stream %s does not exist and REVOKER_CREATE_STREAMS is false", ErrMissing, want.Name)
	case err != nil:
		return fmt.Errorf("look up stream %s: %w", want.Name, err)
	}
	have := s.CachedInfo().Config
	for _, subj := range needs {
		if !Covers(have.Subjects, subj) {
			return fmt.Errorf("%w: stream %s does not hold subject %s (it holds %s)",
				ErrIncompatible, want.Name, subj, strings.Join(have.Subjects, ", "))
		}
	}
	for _, d := range streamDiffs(have, want) {
		log.Warn("existing stream differs from what revoker would create; leaving it as it is",
			zap.String("stream", want.Name), zap.String("setting", d.name),
			zap.String("have", d.have), zap.String("want", d.want))
	}
	return nil
}

func ensureConsumer(ctx context.Context, js jetstream.JetStream, stream string, want jetstream.ConsumerConfig, create bool, log *zap.Logger) error {
	// Twice at most: a consumer another replica made while this one
	// created it, and deleted again before this one looked, is made here.
	for try := 0; ; try++ {
		c, err := js.Consumer(ctx, stream, want.Durable)
		switch {
		case errors.Is(err, jetstream.ErrConsumerNotFound) && create:
			err := createConsumer(ctx, js, stream, want, log)
			if errors.Is(err, jetstream.ErrConsumerExists) && try == 0 {
				// Another replica made it meanwhile, and may have noted
				// when already (so this create no longer matches it):
				// use it.
				continue
			}
			return err
		case errors.Is(err, jetstream.ErrConsumerNotFound):
			return fmt.Errorf("%w: consumer %s on stream %s does not exist and REVOKER_CREATE_STREAMS is false", ErrMissing, want.Durable, stream)
		case errors.Is(err, jetstream.ErrNotPullConsumer):
			// A push consumer cannot be fetched from: no retry fixes it.
			return fmt.Errorf("%w: consumer %s on stream %s is a push consumer (it has a deliver subject); revoker needs a pull consumer", ErrIncompatible, want.Durable, stream)
		case err != nil:
			return fmt.Errorf("look up consumer %s: %w", want.Durable, err)
		}
		return checkConsumer(c, want, log)
	}
}

// createConsumer makes the consumer want describes, noting in it from
// which stream sequence it is the first to deliver, and when it was made.
func createConsumer(ctx context.Context, js jetstream.JetStream, stream string, want jetstream.ConsumerConfig, log *zap.Logger) error {
	// What the stream holds now may have been delivered by a consumer of
	// this name before (deleted by hand, lost with a leader): the consumer
	// says from where on it is the first to deliver.
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("look up stream %s: %w", stream, err)
	}
	want.Metadata = map[string]string{MetaFreshFrom: strconv.FormatUint(s.CachedInfo().State.LastSeq+1, 10)}
	c, err := js.CreateConsumer(ctx, stream, want)
	if err != nil {
		return fmt.Errorf("create consumer %s: %w", want.Durable, err)
	}
	log.Info("created consumer", zap.String("consumer", want.Durable), zap.String("subject", want.FilterSubject))
	// The sequence holds only for this consumer: one made again from a
	// copy of its configuration (by hand, by a tool) would carry it too.
	// So the consumer is told when the server made it, which a copy cannot
	// match. Until then, or if this fails, the lanes treat it as one
	// revoker did not make.
	// And the sequence is read again, now that this consumer exists: events
	// stored after the first read may have gone, before the create, to
	// another consumer of this name, made and deleted meanwhile.
	s, err = js.Stream(ctx, stream)
	if err == nil {
		want.Metadata[MetaFreshFrom] = strconv.FormatUint(s.CachedInfo().State.LastSeq+1, 10)
		want.Metadata[MetaMadeAt] = c.CachedInfo().Created.Format(time.RFC3339Nano)
		_, err = js.UpdateConsumer(ctx, stream, want)
	}
	if err != nil {
		log.Warn("consumer created, but its creation time not noted in it; its first events are read as redeliveries",
			zap.String("consumer", want.Durable), zap.Error(err))
	}
	return nil
}

// checkConsumer says whether an existing consumer can serve as want: an
// error if the work is impossible with it, a warning for each other
// difference.
func checkConsumer(c jetstream.Consumer, want jetstream.ConsumerConfig, log *zap.Logger) error {
	have := c.CachedInfo().Config
	if have.FilterSubject != want.FilterSubject || len(have.FilterSubjects) > 0 {
		return fmt.Errorf("%w: consumer %s filters %q, not %q", ErrIncompatible,
			want.Durable, strings.Join(append([]string{have.FilterSubject}, have.FilterSubjects...), ","), want.FilterSubject)
	}
	if have.HeadersOnly {
		// Every event would arrive without its body: read as empty, each
		// would be dead-lettered as invalid and acked away.
		return fmt.Errorf("%w: consumer %s delivers headers only; revoker needs the events' bodies", ErrIncompatible, want.Durable)
	}
	if have.AckPolicy != jetstream.AckExplicitPolicy {
		return fmt.Errorf("%w: consumer %s has ack policy %s; revoker needs explicit acks", ErrIncompatible, want.Durable, have.AckPolicy)
	}
	if have.DeliverPolicy != jetstream.DeliverAllPolicy {
		log.Warn("existing consumer does not deliver all messages",
			zap.String("consumer", want.Durable), zap.String("have", have.DeliverPolicy.String()))
	}
	for _, d := range consumerDiffs(have, want) {
		log.Warn("existing consumer differs from what revoker would create; leaving it as it is",
			zap.String("consumer", want.Durable), zap.String("setting", d.name),
			zap.String("have", d.have), zap.String("want", d.want))
	}
	return nil
}

// MetaFreshFrom is the metadata of a consumer revoker made: the first
// stream sequence stored after it was made. No older consumer can have
// delivered an event from there on, so a first delivery of one is the
// first of all.
const MetaFreshFrom = "revoker_fresh_from"

// MetaMadeAt is the metadata that ties MetaFreshFrom to the consumer it
// was written for: the server's creation time of that consumer
// (RFC 3339). A consumer whose own creation time differs is a copy, and
// its MetaFreshFrom says nothing.
const MetaMadeAt = "revoker_made_at"

type diff struct{ name, have, want string }

func streamDiffs(have, want jetstream.StreamConfig) []diff {
	var out []diff
	add := func(name string, h, w any) {
		if fmt.Sprint(h) != fmt.Sprint(w) {
			out = append(out, diff{name, fmt.Sprint(h), fmt.Sprint(w)})
		}
	}
	add("retention", have.Retention, want.Retention)
	add("storage", have.Storage, want.Storage)
	add("max_age", have.MaxAge, want.MaxAge)
	add("duplicate_window", have.Duplicates, want.Duplicates)
	add("replicas", have.Replicas, want.Replicas)
	if want.DenyDelete || want.DenyPurge {
		// The audit trail's: one that the API can delete or purge is not
		// append-only (SPEC §3), and an operator should hear of it.
		add("deny_delete", have.DenyDelete, want.DenyDelete)
		add("deny_purge", have.DenyPurge, want.DenyPurge)
	}
	return out
}

func consumerDiffs(have, want jetstream.ConsumerConfig) []diff {
	var out []diff
	if have.AckWait != want.AckWait {
		out = append(out, diff{"ack_wait", have.AckWait.String(), want.AckWait.String()})
	}
	if have.MaxDeliver != want.MaxDeliver {
		// A JetStream limit stops redelivery silently; the worker wants to
		// decide itself when to dead-letter.
		out = append(out, diff{"max_deliver", fmt.Sprint(have.MaxDeliver), fmt.Sprint(want.MaxDeliver)})
	}
	if have.MaxAckPending != want.MaxAckPending {
		out = append(out, diff{"max_ack_pending", fmt.Sprint(have.MaxAckPending), fmt.Sprint(want.MaxAckPending)})
	}
	// 0 means "as many as the stream", which is what want holds.
	if have.Replicas != 0 && have.Replicas != want.Replicas {
		out = append(out, diff{"replicas", fmt.Sprint(have.Replicas), fmt.Sprint(want.Replicas)})
	}
	return out
}

// Covers reports whether one of a stream's subject filters matches the
// literal subject, by the server's own rule.
func Covers(filters []string, subject string) bool {
	for _, f := range filters {
		if server.SubjectMatchesFilter(subject, f) {
			return true
		}
	}
	return false
}
