package queue_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

func setupJS(t *testing.T) jetstream.JetStream {
	t.Helper()
	_, _, js := queuetest.JetStream(t)
	return js
}

func TestEnsureCreatesWhatIsMissing(t *testing.T) {
	js := setupJS(t)
	cfg := config.Default()
	ctx := context.Background()
	if err := queue.Ensure(ctx, js, cfg.Topology(), zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		retention jetstream.RetentionPolicy
		maxAge    time.Duration
		subjects  []string
	}{
		cfg.Stream:        {jetstream.WorkQueuePolicy, 0, cfg.Subjects},
		cfg.DLQStream:     {jetstream.LimitsPolicy, 0, []string{cfg.DLQSubject}},
		cfg.OutcomeStream: {jetstream.LimitsPolicy, 90 * 24 * time.Hour, []string{cfg.OutcomeSubject}},
	}
	for name, w := range want {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		c := s.CachedInfo().Config
		if c.Retention != w.retention || c.Storage != jetstream.FileStorage || c.MaxAge != w.maxAge ||
			c.Duplicates != 2*time.Minute || len(c.Subjects) != len(w.subjects) {
			t.Errorf("stream %s: %+v", name, c)
		}
	}
	for _, subj := range cfg.Subjects {
		c, err := js.Consumer(ctx, cfg.Stream, cfg.Durable(subj))
		if err != nil {
			t.Fatalf("consumer for %s: %v", subj, err)
		}
		cc := c.CachedInfo().Config
		if cc.FilterSubject != subj || cc.AckPolicy != jetstream.AckExplicitPolicy || cc.MaxDeliver != -1 ||
			cc.AckWait != cfg.AckWait || cc.MaxAckPending != queue.MaxAckPending(cfg.Concurrency) {
			t.Errorf("consumer %s: %+v", cfg.Durable(subj), cc)
		}
	}
	// Running again changes nothing and is not an error.
	if err := queue.Ensure(ctx, js, cfg.Topology(), zap.NewNop()); err != nil {
		t.Fatal(err)
	}
}

func TestEnsureLeavesExistingStreamsAndWarns(t *testing.T) {
	js := setupJS(t)
	cfg := config.Default()
	ctx := context.Background()
	odd := queue.DLQStream(cfg.Topology())
	odd.Storage, odd.MaxAge = jetstream.MemoryStorage, time.Hour
	if _, err := js.CreateStream(ctx, odd); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.WarnLevel)
	if err := queue.Ensure(ctx, js, cfg.Topology(), zap.New(core)); err != nil {
		t.Fatalf("a different but workable stream stopped the start: %v", err)
	}
	s, _ := js.Stream(ctx, cfg.DLQStream)
	if c := s.CachedInfo().Config; c.Storage != jetstream.MemoryStorage || c.MaxAge != time.Hour {
		t.Fatalf("the existing stream was changed: %+v", c)
	}
	warned := map[string]bool{}
	for _, e := range logs.All() {
		if e.ContextMap()["stream"] == cfg.DLQStream {
			warned[e.ContextMap()["setting"].(string)] = true
		}
	}
	if !warned["storage"] || !warned["max_age"] {
		t.Fatalf("warnings = %v, want storage and max_age", warned)
	}
}

// An audit trail that the API can delete or purge is not append-only
// (SPEC §3): an existing outcome stream allowing either is warned of.
func TestEnsureWarnsOfADeletableTrail(t *testing.T) {
	js := setupJS(t)
	cfg := config.Default()
	ctx := context.Background()
	open := queue.OutcomeStream(cfg.Topology())
	open.DenyDelete, open.DenyPurge = false, false
	if _, err := js.CreateStream(ctx, open); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.WarnLevel)
	if err := queue.Ensure(ctx, js, cfg.Topology(), zap.New(core)); err != nil {
		t.Fatal(err)
	}
	warned := map[string]bool{}
	for _, e := range logs.All() {
		if e.ContextMap()["stream"] == cfg.OutcomeStream {
			warned[e.ContextMap()["setting"].(string)] = true
		}
	}
	if !warned["deny_delete"] || !warned["deny_purge"] || len(warned) != 2 {
		t.Fatalf("warnings = %v, want deny_delete and deny_purge only", warned)
	}
}

// TestEnsureTakesAnOutcomeStreamOfEveryKeysSubject: records go to
// <prefix>.<account>.<key>, always two tokens, so an outcome stream made
// to hold <prefix>.*.* holds every one of them (SPEC §3: only a
// configured subject the stream does not hold stops the start).
func TestEnsureTakesAnOutcomeStreamOfEveryKeysSubject(t *testing.T) {
	js := setupJS(t)
	cfg := config.Default()
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: cfg.OutcomeStream, Subjects: []string{cfg.OutcomeSubject + ".*.*"}}); err != nil {
		t.Fatal(err)
	}
	if err := queue.Ensure(ctx, js, cfg.Topology(), zap.NewNop()); err != nil {
		t.Fatal(err)
	}
}

func TestEnsureRefusesWhatMakesTheWorkImpossible(t *testing.T) {
	ctx := context.Background()
	t.Run("stream without a configured subject", func(t *testing.T) {
		js := setupJS(t)
		cfg := config.Default()
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: cfg.Stream, Subjects: []string{"revoke.urgent"}}); err != nil {
			t.Fatal(err)
		}
		err := queue.Ensure(ctx, js, cfg.Topology(), zap.NewNop())
		if !errors.Is(err, queue.ErrIncompatible) {
			t.Fatalf("err = %v, want ErrIncompatible", err)
		}
	})
	t.Run("consumer filtering another subject", func(t *testing.T) {
		js := setupJS(t)
		cfg := config.Default()
		if _, err := js.CreateStream(ctx, queue.WorkStream(cfg.Topology())); err != nil {
			t.Fatal(err)
		}
		wrong := queue.LaneConsumer(cfg.Topology(), cfg.Subjects[0])
		wrong.FilterSubject = cfg.Subjects[1]
		if _, err := js.CreateConsumer(ctx, cfg.Stream, wrong); err != nil {
			t.Fatal(err)
		}
		if err := queue.Ensure(ctx, js, cfg.Topology(), zap.NewNop()); !errors.Is(err, queue.ErrIncompatible) {
			t.Fatalf("err = %v, want ErrIncompatible", err)
		}
	})
	t.Run("outcome stream not holding every key's subject", func(t *testing.T) {
		js := setupJS(t)
		cfg := config.Default()
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: cfg.OutcomeStream, Subjects: []string{cfg.OutcomeSubject + ".acct1.*"}}); err != nil {
			t.Fatal(err)
		}
		if err := queue.Ensure(ctx, js, cfg.Topology(), zap.NewNop()); !errors.Is(err, queue.ErrIncompatible) {
			t.Fatalf("err = %v, want ErrIncompatible", err)
		}
	})
	t.Run("missing and not to be created", func(t *testing.T) {
		js := setupJS(t)
		cfg := config.Default()
		cfg.CreateStreams = false
		if err := queue.Ensure(ctx, js, cfg.Topology(), zap.NewNop()); !errors.Is(err, queue.ErrMissing) {
			t.Fatalf("err = %v, want ErrMissing", err)
		}
	})
}

func TestCovers(t *testing.T) {
	cases := []struct {
		filters []string
		subject string
		want    bool
	}{
		{[]string{"revoke.urgent"}, "revoke.urgent", true},
		{[]string{"revoke.*"}, "revoke.urgent", true},
		{[]string{"revoke.>"}, "revoke.a.b", true},
		{[]string{">"}, "revoke.urgent", true},
		{[]string{"revoke.*"}, "revoke.a.b", false},
		{[]string{"revoke.>"}, "revoke", false},
		{[]string{"revoke.urgent"}, "revoke.scheduled", false},
		{[]string{"revoke"}, "revoke.urgent", false},
		{nil, "revoke.urgent", false},
	}
	for _, c := range cases {
		if got := queue.Covers(c.filters, c.subject); got != c.want {
			t.Errorf("Covers(%v, %q) = %v, want %v", c.filters, c.subject, got, c.want)
		}
	}
}

// On a three-node cluster, REVOKER_STREAM_REPLICAS=3 gives every stream,
// consumer and the attempts bucket three replicas; existing R1 ones are
// left as they are, with a warning, and their consumers match them.
func TestEnsureReplicasOnCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := queuetest.Cluster(t, 3)
	_, js := queuetest.ConnectURL(t, c.URLs())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	t.Run("created R3", func(t *testing.T) {
		cfg := config.Default()
		cfg.StreamReplicas = 3
		if err := ensureOnCluster(ctx, js, cfg.Topology(), zap.NewNop()); err != nil {
			t.Fatal(err)
		}
		if _, err := bindLedgerOnCluster(ctx, js, cfg.Topology(), zap.NewNop()); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{cfg.Stream, cfg.DLQStream, cfg.OutcomeStream, "KV_" + queue.LedgerBucket} {
			s, err := js.Stream(ctx, name)
			if err != nil {
				t.Fatalf("stream %s: %v", name, err)
			}
			info := s.CachedInfo()
			if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
				t.Errorf("stream %s: replicas %d, cluster %+v; want R3", name, info.Config.Replicas, info.Cluster)
			}
		}
		for _, subj := range cfg.Subjects {
			cons, err := js.Consumer(ctx, cfg.Stream, cfg.Durable(subj))
			if err != nil {
				t.Fatal(err)
			}
			info := cons.CachedInfo()
			if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
				t.Errorf("consumer %s: replicas %d, cluster %+v; want R3", info.Name, info.Config.Replicas, info.Cluster)
			}
		}
	})

	t.Run("existing R1 kept, with a warning", func(t *testing.T) {
		cfg := config.Default()
		cfg.Stream, cfg.Subjects, cfg.Consumer = "OLD", []string{"old.urgent", "old.scheduled"}, "old"
		cfg.DLQStream, cfg.DLQSubject = "OLD_DLQ", "old.dlq"
		cfg.OutcomeStream, cfg.OutcomeSubject = "OLD_OUTCOMES", "old.outcome"
		if err := ensureOnCluster(ctx, js, cfg.Topology(), zap.NewNop()); err != nil {
			t.Fatal(err)
		}
		cfg.StreamReplicas = 3
		core, logs := observer.New(zapcore.WarnLevel)
		if err := ensureOnCluster(ctx, js, cfg.Topology(), zap.New(core)); err != nil {
			t.Fatalf("different replicas stopped the start: %v", err)
		}
		warned := map[string]bool{}
		for _, e := range logs.All() {
			if e.ContextMap()["setting"] == "replicas" {
				warned[e.ContextMap()["stream"].(string)] = true
			}
		}
		for _, name := range []string{cfg.Stream, cfg.DLQStream, cfg.OutcomeStream} {
			s, err := js.Stream(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			if r := s.CachedInfo().Config.Replicas; r != 1 {
				t.Errorf("stream %s was changed to %d replicas", name, r)
			}
			if !warned[name] {
				t.Errorf("no replicas warning for stream %s (warnings: %v)", name, logs.All())
			}
		}
		// The bucket, created R3 above, is left R3 when R1 is asked for.
		cfg.StreamReplicas = 1
		core, logs = observer.New(zapcore.WarnLevel)
		// Not tried again: a second try would warn a second time.
		if _, err := queue.BindLedger(ctx, js, cfg.Topology(), zap.New(core)); err != nil {
			t.Fatal(err)
		}
		if n := logs.FilterField(zap.String("setting", "replicas")).FilterField(zap.String("bucket", queue.LedgerBucket)).Len(); n != 1 {
			t.Errorf("%d replicas warnings for the bucket, want 1 (warnings: %v)", n, logs.All())
		}
		if s, err := js.Stream(ctx, "KV_"+queue.LedgerBucket); err != nil || s.CachedInfo().Config.Replicas != 3 {
			t.Errorf("bucket changed or gone: %v", err)
		}
		cfg.StreamReplicas = 3

		// A consumer missing from an existing R1 work stream is created R1:
		// JetStream requires it to match the stream.
		if err := js.DeleteConsumer(ctx, cfg.Stream, cfg.Durable(cfg.Subjects[0])); err != nil {
			t.Fatal(err)
		}
		if err := ensureOnCluster(ctx, js, cfg.Topology(), zap.NewNop()); err != nil {
			t.Fatalf("consumer on an R1 stream with R3 configured: %v", err)
		}
		cons, err := js.Consumer(ctx, cfg.Stream, cfg.Durable(cfg.Subjects[0]))
		if err != nil {
			t.Fatal(err)
		}
		if r := cons.CachedInfo().Config.Replicas; r > 1 {
			t.Errorf("consumer on an R1 stream has %d replicas", r)
		}
	})
}

// ensureOnCluster is queue.Ensure tried as the worker tries it.
func ensureOnCluster(ctx context.Context, js jetstream.JetStream, topo config.Topology, log *zap.Logger) error {
	return queuetest.Answered(ctx, func(ctx context.Context) error { return queue.Ensure(ctx, js, topo, log) })
}

// bindLedgerOnCluster is queue.BindLedger tried as ensureOnCluster tries.
func bindLedgerOnCluster(ctx context.Context, js jetstream.JetStream, topo config.Topology, log *zap.Logger) (*queue.Ledger, error) {
	var l *queue.Ledger
	err := queuetest.Answered(ctx, func(ctx context.Context) (err error) {
		l, err = queue.BindLedger(ctx, js, topo, log)
		return err
	})
	return l, err
}

// TestEnsureByReplicasStartingTogether: replicas starting together on an
// empty server each make what is missing. A consumer one of them made is
// updated at once to note when it was made, so another's create, the
// same as the first, no longer matches it: that replica must use it, not
// fail its start.
func TestEnsureByReplicasStartingTogether(t *testing.T) {
	for round := range 10 {
		js := setupJS(t)
		cfg := config.Default()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		var wg sync.WaitGroup
		errs := make([]error, 3)
		start := make(chan struct{})
		for i := range errs {
			wg.Go(func() {
				<-start
				errs[i] = queue.Ensure(ctx, js, cfg.Topology(), zap.NewNop())
			})
		}
		close(start)
		wg.Wait()
		cancel()
		for i, err := range errs {
			if err != nil {
				t.Errorf("round %d, replica %d: %v", round, i, err)
			}
		}
	}
}

// goneAfterExists: another replica makes the consumer (its own metadata)
// just before this create, which is refused as ErrConsumerExists; then
// the consumer is deleted again (by hand, lost with a leader, another
// replica's rebind) before this replica looks it up.
type goneAfterExists struct {
	jetstream.JetStream
	once sync.Once
}

func (g *goneAfterExists) CreateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	var (
		c    jetstream.Consumer
		err  error
		done bool
	)
	g.once.Do(func() {
		done = true
		other := cfg
		other.Metadata = map[string]string{queue.MetaFreshFrom: "1", queue.MetaMadeAt: time.Now().Format(time.RFC3339Nano)}
		if _, e := g.JetStream.CreateConsumer(ctx, stream, other); e != nil {
			err = e
			return
		}
		c, err = g.JetStream.CreateConsumer(ctx, stream, cfg)
		if !errors.Is(err, jetstream.ErrConsumerExists) {
			return
		}
		_ = g.JetStream.DeleteConsumer(ctx, stream, cfg.Durable)
	})
	if done {
		return c, err
	}
	return g.JetStream.CreateConsumer(ctx, stream, cfg)
}

// TestEnsureCreateRefusedThenConsumerGone: this replica's create is
// refused because another made the consumer meanwhile, and the consumer
// is gone again before this one looks it up: it is made here, not
// reported missing as if REVOKER_CREATE_STREAMS were false.
func TestEnsureCreateRefusedThenConsumerGone(t *testing.T) {
	js := setupJS(t)
	cfg := config.Default()
	top := cfg.Topology()
	if !top.Create {
		t.Fatal("default config does not create")
	}
	err := queue.Ensure(context.Background(), &goneAfterExists{JetStream: js}, top, zap.NewNop())
	if err != nil && strings.Contains(err.Error(), "REVOKER_CREATE_STREAMS is false") {
		t.Fatalf("REVOKER_CREATE_STREAMS is true, yet: %v", err)
	}
	if err != nil {
		t.Fatalf("the consumer is missing and may be created, yet the start failed: %v", err)
	}
}
