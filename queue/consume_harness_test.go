package queue_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/metrics"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/worker"
)

// testToken is distinctive so a test can prove it never leaks.
const testToken = "tok-S3CR3T-9f8e7d6c5b4a"

// stack is one embedded JetStream, one API stand-in, and a worker.
type stack struct {
	t     *testing.T
	srv   *server.Server
	nc    *nats.Conn
	js    jetstream.JetStream
	api   *cloudflaretest.Server
	cfg   config.Config
	reg   *prometheus.Registry
	m     *metrics.Metrics
	ready *metrics.Readiness
	logs  *observer.ObservedLogs
	gate  *throttle.Gate

	cancel context.CancelFunc
	done   chan error
}

// newStack starts JetStream and the stand-in; tune adjusts the worker's
// configuration before start.
func newStack(t *testing.T, tune func(*config.Config), apiOpts ...cloudflaretest.Option) *stack {
	t.Helper()
	srv, nc, js := queuetest.JetStream(t)
	api := cloudflaretest.NewServer(append([]cloudflaretest.Option{cloudflaretest.WithToken(testToken)}, apiOpts...)...)
	t.Cleanup(api.Close)

	cfg := config.Default()
	cfg.NATSURL = srv.ClientURL()
	cfg.APIToken = testToken
	cfg.BaseURL = api.URL
	cfg.Concurrency = 4
	cfg.RateLimit = 0
	cfg.HTTPTimeout = 2 * time.Second
	cfg.RetryInitial = 10 * time.Millisecond
	cfg.RetryMaxInterval = 50 * time.Millisecond
	cfg.RetryMaxElapsed = 200 * time.Millisecond
	cfg.MaxDeliver = 3
	cfg.AckWait = 5 * time.Second
	cfg.ShutdownTimeout = 2 * time.Second
	if tune != nil {
		tune(&cfg)
	}
	return &stack{t: t, srv: srv, nc: nc, js: js, api: api, cfg: cfg}
}

// start runs a worker until the test ends or stop is called.
func (s *stack) start() {
	s.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan error, 1)
	s.m, s.ready, s.logs, s.gate = s.run(ctx, s.done)
	s.t.Cleanup(s.stop)
	s.waitFor("consumers bound", func() bool { ok, _ := s.ready.Ready(); return ok })
}

// startReplica runs one more worker sharing the consumers, with its own
// metrics and gate, until the test ends.
func (s *stack) startReplica() *metrics.Metrics {
	s.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	m, ready, _, gate := s.run(ctx, done)
	s.t.Cleanup(func() { cancel(); <-done; gate.Close() })
	s.waitFor("replica bound", func() bool { ok, _ := ready.Ready(); return ok })
	return m
}

func (s *stack) run(ctx context.Context, done chan<- error) (*metrics.Metrics, *metrics.Readiness, *observer.ObservedLogs, *throttle.Gate) {
	s.t.Helper()
	client, err := cloudflare.New(cloudflare.Config{
		BaseURL: s.cfg.BaseURL, Credential: cloudflare.Token(s.cfg.APIToken),
		Timeout: s.cfg.HTTPTimeout, UserAgent: "revoker/test",
	})
	if err != nil {
		s.t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	log := zap.New(core)
	s.reg = prometheus.NewRegistry()
	m := metrics.New(s.reg, metrics.Labels{
		Subjects: s.cfg.Subjects, Outcomes: event.Names(event.Outcomes), Reasons: event.Names(event.Reasons),
	}, metrics.Build{Version: "test"})
	ready := metrics.NewReadiness(s.reg, queue.ReadyConsumers)
	gate := throttle.New(throttle.Config{
		Priorities: len(s.cfg.Subjects), Concurrency: s.cfg.Concurrency, Rate: s.cfg.RateLimit,
		OnPause: func(p bool) { m.APIPaused.Set(map[bool]float64{true: 1}[p]) },
	})
	ledger := &queue.Ledger{}
	c := &queue.Consumer{
		JS: s.js, Cfg: s.cfg.Topology(), ShutdownTimeout: s.cfg.ShutdownTimeout, Gate: gate, Ledger: ledger,
		Metrics: m, Ready: ready, Log: log, FetchWait: 200 * time.Millisecond,
	}
	w := worker.New(worker.Config{
		Subjects: s.cfg.Subjects, AllowedAccounts: s.cfg.AllowedAccounts,
		NotFoundDeadLetter: s.cfg.NotFoundDeadLetter, RateLimit: s.cfg.RateLimit,
		RetryInitial: s.cfg.RetryInitial, RetryMaxInterval: s.cfg.RetryMaxInterval,
		RetryMaxElapsed: s.cfg.RetryMaxElapsed, HandBackDelay: c.HandBackDelay(), Name: "test-host",
	}, worker.Deps{
		API: client, Gate: gate, Ledger: ledger, Metrics: m, Ready: ready, Log: log,
		Records: &queue.Records{
			JS: s.js, Log: log, Timeout: 5 * time.Second,
			DLQStream: s.cfg.DLQStream, DLQSubject: s.cfg.DLQSubject,
			OutcomeStream: s.cfg.OutcomeStream, OutcomePrefix: s.cfg.OutcomeSubject,
		},
	})
	c.Handle = w.Handle
	go func() { done <- c.Run(ctx) }()
	return m, ready, logs, gate
}

// stop shuts the worker down as SIGTERM would, and waits for it.
func (s *stack) stop() {
	if s.cancel == nil {
		return
	}
	s.cancel()
	if err := <-s.done; err != nil {
		s.t.Errorf("worker: %v", err)
	}
	s.gate.Close()
	s.cancel = nil
}

func (s *stack) publish(subject, body, msgID string) {
	s.t.Helper()
	m := nats.NewMsg(subject)
	m.Data = []byte(body)
	if msgID != "" {
		m.Header.Set(jetstream.MsgIDHeader, msgID)
	}
	if _, err := s.js.PublishMsg(context.Background(), m); err != nil {
		s.t.Fatalf("publish: %v", err)
	}
}

// eventJSON is the JSON of a valid event.
func eventJSON(account, key string) string {
	return `{"account_id":"` + account + `","key_id":"` + key + `","reason":"test"}`
}

func (s *stack) waitFor(what string, cond func() bool) {
	s.t.Helper()
	queuetest.Eventually(s.t, 20*time.Second, what, cond)
}

// msgs returns every message stored in stream, oldest first.
func (s *stack) msgs(stream string) []*jetstream.RawStreamMsg {
	s.t.Helper()
	st, err := s.js.Stream(context.Background(), stream)
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil
		}
		s.t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		s.t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(context.Background(), seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			s.t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

func (s *stack) count(stream string) int { return len(s.msgs(stream)) }

// outcomes returns the outcome records written so far.
func (s *stack) outcomes() []event.Record {
	var out []event.Record
	for _, m := range s.msgs(s.cfg.OutcomeStream) {
		var o event.Record
		if err := json.Unmarshal(m.Data, &o); err != nil {
			s.t.Fatalf("outcome record %q: %v", m.Data, err)
		}
		out = append(out, o)
	}
	return out
}

// processed is revoker_events_processed_total for the lowest lane.
func (s *stack) processed(outcome string) float64 {
	return testutil.ToFloat64(s.m.EventsProcessed.WithLabelValues(s.cfg.LowestPriority(), outcome))
}

// deletes counts the stand-in's DELETE calls for key.
func (s *stack) deletes(key string) int {
	n := 0
	for _, r := range s.api.Requests() {
		if r.KeyID == key && r.Method == http.MethodDelete {
			n++
		}
	}
	return n
}

// metricsText is what /metrics would serve.
func (s *stack) metricsText() string {
	s.t.Helper()
	mfs, err := s.reg.Gather()
	if err != nil {
		s.t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		b.WriteString(mf.String())
	}
	return b.String()
}
