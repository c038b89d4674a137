// Package demo is the whole system in one process on this machine: an
// embedded JetStream, the Cloudflare stand-in and the worker, fed with
// sample events. The stand-in serves two accounts, each with its own
// account token and rate budget (Accounts), and the worker reads them from
// a credentials file (SPEC §6), as an organisation with several accounts
// runs it. It is what `revoker demo` runs; it prints nothing itself, the
// command prints what Run and Trickle report.
package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/tracing"
)

// readyWithin bounds how long Start waits for the worker to turn ready.
const readyWithin = 15 * time.Second

// ServeFunc runs the worker configured by cfg until ctx ends, calling ready
// with the bound address of its HTTP endpoints once they listen. The
// command passes the very wiring `revoker serve` runs, so the demo shows the
// real worker and this package need not know how it is built.
type ServeFunc func(ctx context.Context, cfg config.Config, ready func(addr string)) error

// Config is what Start needs.
type Config struct {
	// Serve runs the worker; required.
	Serve ServeFunc
	// NATSURL is where the embedded JetStream listens (nats:// on a
	// loopback address, no user); "" picks a free loopback port.
	NATSURL string
	// HTTPAddr is where the worker serves metrics and health; "" picks a
	// free loopback port.
	HTTPAddr string
	// Log receives what the demo itself has to say (failed publishes);
	// nil discards it.
	Log *zap.Logger
	// StandIn are options for the stand-in, applied after the demo's own
	// (tests lift its rate limits with WithBudgetRate).
	StandIn []cloudflaretest.Option
}

// Stack is a running demo: JetStream, the stand-in and the worker, with a
// connection for publishing. Close it when done.
type Stack struct {
	cfg         config.Config
	ns          *server.Server
	api         *cloudflaretest.Server
	nc          *nats.Conn
	js          jetstream.JetStream
	log         *zap.Logger
	metricsAddr string
	// workerDone is closed when the worker has stopped; workerErr is then
	// why.
	workerDone chan struct{}
	workerErr  error
	closers    []func()
}

// Start starts JetStream, the stand-in and the worker, and returns once the
// worker is ready. The worker's configuration is the defaults with short
// retries, so that every outcome shows within seconds, and a credentials
// file naming each account's token, written with the tokens in a private
// directory that Close removes.
func Start(ctx context.Context, c Config) (st *Stack, err error) {
	if c.Serve == nil {
		return nil, errors.New("demo: no Serve")
	}
	s := &Stack{log: c.Log, workerDone: make(chan struct{})}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()

	dir, err := os.MkdirTemp("", "revoker-demo-")
	if err != nil {
		return nil, err
	}
	s.closers = append(s.closers, func() { os.RemoveAll(dir) })
	store := filepath.Join(dir, "jetstream")
	if c.NATSURL == "" {
		s.ns, err = queue.StartServer(&server.Options{Host: "127.0.0.1", Port: -1, StoreDir: store})
	} else {
		s.ns, err = queue.RunEmbedded(store, c.NATSURL)
	}
	if err != nil {
		return nil, err
	}
	s.closers = append(s.closers, s.ns.Shutdown)
	// dir is this user's only (MkdirTemp), and so are the files in it.
	credDir := filepath.Join(dir, "credentials")
	if err := os.Mkdir(credDir, 0o700); err != nil {
		return nil, err
	}
	credFile, apiOpts, err := writeCredentials(credDir)
	if err != nil {
		return nil, err
	}
	s.api = cloudflaretest.NewServer(append(apiOpts, c.StandIn...)...)
	s.closers = append(s.closers, s.api.Close)

	cfg := config.Default()
	cfg.HTTPAddr = c.HTTPAddr
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = "127.0.0.1:0"
	}
	cfg.NATSURL = s.ns.ClientURL()
	cfg.CredentialsFile = credFile
	cfg.RateLimit = Rate
	cfg.BaseURL = s.api.URL
	cfg.RetryInitial = 200 * time.Millisecond
	cfg.RetryMaxInterval = time.Second
	cfg.RetryMaxElapsed = 2 * time.Second
	cfg.MaxDeliver = 2
	s.cfg = cfg

	addrc := make(chan string, 1)
	wctx, stopWorker := context.WithCancel(ctx)
	go func() {
		s.workerErr = c.Serve(wctx, cfg, func(a string) { addrc <- a })
		close(s.workerDone)
	}()
	// Closers run last first: the worker stops before the stand-in and
	// JetStream go away.
	s.closers = append(s.closers, func() { stopWorker(); <-s.workerDone })
	select {
	case s.metricsAddr = <-addrc:
	case <-s.workerDone:
		return nil, fmt.Errorf("worker did not start: %v", s.workerErr)
	}

	if s.nc, err = nats.Connect(s.ns.ClientURL()); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, s.nc.Close)
	if s.js, err = jetstream.New(s.nc); err != nil {
		return nil, err
	}
	if err := s.waitReady(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Close stops the worker, then the stand-in and JetStream, and removes
// what JetStream stored.
func (s *Stack) Close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
	s.closers = nil
}

// NATSURL is the embedded JetStream's client URL.
func (s *Stack) NATSURL() string { return s.ns.ClientURL() }

// APIURL is the stand-in's base URL.
func (s *Stack) APIURL() string { return s.api.URL }

// MetricsAddr is where the worker serves /metrics, /healthz and /readyz.
func (s *Stack) MetricsAddr() string { return s.metricsAddr }

// APIRequests is the stand-in's request log so far: every call, with the
// credential and budget it was charged to (never a secret).
func (s *Stack) APIRequests() []cloudflaretest.Request { return s.api.Requests() }

// WorkerConfig is the configuration the worker runs with.
func (s *Stack) WorkerConfig() config.Config { return s.cfg }

// Wait blocks until ctx ends (nil) or the worker stops by itself (an error
// saying why).
func (s *Stack) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case <-s.workerDone:
		return s.stopped()
	}
}

func (s *Stack) stopped() error { return fmt.Errorf("worker stopped: %v", s.workerErr) }

// waitReady polls the worker's /readyz until it answers 200.
func (s *Stack) waitReady(ctx context.Context) error {
	url := "http://" + s.metricsAddr + "/readyz"
	deadline := time.Now().Add(readyWithin)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-s.workerDone:
			return fmt.Errorf("worker did not start: %v", s.workerErr)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("worker not ready after %v", readyWithin)
		}
		if !throttle.Sleep(ctx, 50*time.Millisecond) {
			return ctx.Err()
		}
	}
}

// publish stores one event on subject with the given message id, as a
// publisher would: with a trace context, so that with tracing on each
// sample's trace starts at its publish span.
func (s *Stack) publish(ctx context.Context, subject, id, body string) error {
	ctx, span := tracing.StartPublish(ctx, subject)
	m := nats.NewMsg(subject)
	m.Data = []byte(body)
	m.Header.Set(jetstream.MsgIDHeader, id)
	tracing.Inject(ctx, tracing.HeaderSetter(m.Header))
	_, err := s.js.PublishMsg(ctx, m)
	tracing.End(span, err)
	return err
}

// subscribeOutcomes calls f with every outcome record stored from now on.
// f runs on the connection's goroutine, one record at a time.
func (s *Stack) subscribeOutcomes(f func(event.Record)) (*nats.Subscription, error) {
	return s.nc.Subscribe(s.cfg.OutcomeSubject+".>", func(m *nats.Msg) {
		var o event.Record
		if json.Unmarshal(m.Data, &o) == nil {
			f(o)
		}
	})
}

// eventBody is a well-formed sample event for key of account.
func eventBody(account, key, reason string) string {
	return fmt.Sprintf(`{"account_id":%q,"key_id":%q,"reason":%q,"requested_by":"demo"}`, account, key, reason)
}

func repeat(status, n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = status
	}
	return out
}
