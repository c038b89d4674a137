package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/ingress"
	"github.com/revoker/revoker/metrics"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/routing"
	"github.com/revoker/revoker/service"
	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/tracing"
	"github.com/revoker/revoker/verify"
	"github.com/revoker/revoker/worker"
)

func serveCmd(ctx context.Context, args []string, e env) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	embedded := fs.String("embedded-nats", "", "run a JetStream server inside the process, storing in `DIR`, listening on the NATS URL's address "+
		"and requiring its user and password (or token, or the identity of --nats-creds), with TLS when --nats-tls-cert is given; "+
		"off loopback a password (or creds) and TLS are both required")
	cfg, code := parse(fs, config.All, args, e)
	if code >= 0 {
		return code
	}
	log, err := newLogger(cfg, e.stderr)
	if err != nil {
		fmt.Fprintf(e.stderr, "revoker serve: %s: %v\n", settingName(fs, "REVOKER_LOG_LEVEL"), err)
		return exitUsage
	}
	defer log.Sync() //nolint:errcheck // stderr cannot be synced on every system
	// Traces (SPEC §13): on only when the standard OTEL variables name an
	// exporter; a bad one is a bad configuration.
	stopTracing, err := tracing.Setup(ctx, "revoker", version)
	if err != nil {
		fmt.Fprintf(e.stderr, "revoker serve: %v\n", err)
		return exitUsage
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := stopTracing(sctx); err != nil {
			log.Warn("traces not all exported at shutdown", zap.Error(err))
		}
	}()

	// A credentials file is read before anything starts: one that does not
	// load is a bad configuration, its line the only one (SPEC §6).
	var creds *routing.File
	if cfg.CredentialsFile != "" {
		if creds, err = routing.Load(cfg, "revoker/"+version, log); err != nil {
			fmt.Fprintf(e.stderr, "revoker serve: %s: %v\n", settingName(fs, "REVOKER_CREDENTIALS_FILE"), err)
			return exitUsage
		}
	}
	if *embedded != "" {
		ns, err := queue.Embedded(*embedded, cfg.Connection())
		var bad *config.Error
		if errors.As(err, &bad) {
			bad.Name = settingName(fs, bad.Name)
			fmt.Fprintf(e.stderr, "revoker serve: %v\n", bad)
			return exitUsage
		}
		if err != nil {
			log.Error("embedded NATS did not start", zap.Error(err))
			return exitFailed
		}
		defer ns.Shutdown()
		// Embedded refuses a URL user or a creds file it would not
		// require, so either means the server asks for it.
		log.Info("embedded JetStream running", zap.String("dir", *embedded), zap.String("url", ns.ClientURL()),
			zap.Bool("authentication", urlHasUser(cfg.NATSURL) || cfg.NATSCreds != ""),
			zap.Bool("tls", cfg.NATSTLSCert != ""), zap.Bool("client_certificates", cfg.NATSTLSCA != ""))
	}
	err = serve(ctx, cfg, serveOptions{log: log, creds: creds})
	if err != nil {
		var bad *settingError
		if errors.As(err, &bad) {
			names := strings.Split(bad.name, ", ")
			for i, n := range names {
				names[i] = settingName(fs, n)
			}
			bad.name = strings.Join(names, ", ")
		}
		fmt.Fprintf(e.stderr, "revoker serve: %v\n", err)
	}
	return exitCode(err)
}

// settingError is an error of the settings named by their variables
// (several: ", " between them), each shown under the flag's name instead
// when the flag was given (SPEC §6); with
// usage, the configuration's fault (exit status 2).
type settingError struct {
	name  string
	err   error
	usage bool
}

func (e *settingError) Error() string { return e.name + ": " + e.err.Error() }
func (e *settingError) Unwrap() []error {
	if e.usage {
		return []error{errUsage, e.err}
	}
	return []error{e.err}
}

// settingName is the flag named after variable env when the flag was
// given (a flag overrides its variable), else env itself.
func settingName(fs *flag.FlagSet, env string) string {
	name := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(env, "REVOKER_")), "_", "-")
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	if given {
		return "--" + name
	}
	return env
}

// urlHasUser reports whether the first of the NATS URLs has a user (or
// token) in it.
func urlHasUser(urls string) bool {
	first, _, _ := strings.Cut(urls, ",")
	u, err := url.Parse(strings.TrimSpace(first))
	return err == nil && u.User != nil
}

// serveOptions are what the wiring takes beyond the configuration; tests
// and the demo set them.
type serveOptions struct {
	log *zap.Logger
	// ready, when set, is called with the bound address of the HTTP
	// endpoints once they listen.
	ready func(addr string)
	// api replaces the Cloudflare client (the demo's stand-in is reached
	// through the real client, so this stays nil there).
	api worker.API
	// fetchWait shortens the pull wait, so tests stop quickly.
	fetchWait time.Duration
	// connected, when set, is given each NATS connection serve opens.
	connected func(*queue.Conn)
	// ingressReady, when set, is called with the HTTP ingress's bound
	// address each time it starts listening.
	ingressReady func(addr string)
	// creds are the credentials file's, when the caller has read it.
	creds *routing.File
}

// lostLinger bounds how long a process that lost a confirmation serves
// /metrics after its shutdown, for a scrape to read the count: longer than
// the shipped 15s scrape interval (deploy/kubernetes gives the pod
// REVOKER_SHUTDOWN_TIMEOUT plus this and a margin).
var lostLinger = 20 * time.Second

// tokenFileCheck is how often the token file is checked for a change.
const tokenFileCheck = 2 * time.Second

// errUsage marks errors that are the configuration's fault (exit status 2).
var errUsage = errors.New("bad configuration")

func exitCode(err error) int {
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errUsage), errors.Is(err, queue.ErrIncompatible):
		return exitUsage
	}
	return exitFailed
}

// serve wires config → registry → endpoints → NATS → gate → worker, and runs
// until ctx ends.
func serve(ctx context.Context, cfg config.Config, o serveOptions) error {
	log := o.log
	// Several credentials (SPEC §6) are read first, unless the caller
	// has: a file that does not load stops the start (exit 2), and their
	// budgets label the metrics.
	creds := o.creds
	if creds == nil && o.api == nil && cfg.CredentialsFile != "" {
		var err error
		if creds, err = routing.Load(cfg, "revoker/"+version, log); err != nil {
			return &settingError{name: "REVOKER_CREDENTIALS_FILE", err: err, usage: true}
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := metrics.New(reg, metrics.Labels{
		Subjects: cfg.Subjects,
		Outcomes: event.Names(event.Outcomes),
		Reasons:  event.Names(event.Reasons),
		Budgets:  creds.Budgets(),
	}, metrics.Build{Version: version, Revision: commit, GoVersion: runtime.Version()})
	ready := metrics.NewReadiness(reg, queue.ReadyNATS, queue.ReadyConsumers)
	// The ingress's callers and certificate are checked before NATS is
	// connected, so a bad file stops the start at once (exit 2).
	var callers *ingress.Callers
	var ingressMetrics *ingress.Metrics
	if cfg.IngressAddr != "" {
		var err error
		if callers, err = ingress.LoadCallers(cfg.IngressCallersFile); err != nil {
			return &settingError{name: "REVOKER_INGRESS_CALLERS_FILE", err: err, usage: true}
		}
		if cfg.IngressTLSCert != "" {
			if err := ingress.CheckTLS(cfg.IngressTLSCert, cfg.IngressTLSKey); err != nil {
				return &settingError{name: "REVOKER_INGRESS_TLS_CERT, REVOKER_INGRESS_TLS_KEY", err: err, usage: true}
			}
		}
		ingressMetrics = ingress.NewMetrics(reg, callers.Names())
	}

	if creds != nil {
		creds.Announce(cfg)
	}
	api := o.api
	// budgetID names the credential's shared rate budget: its short hash.
	budgetID := func() string { return "injected" }
	if creds != nil {
		api = creds.Router()
		go creds.Watch(ctx)
	}
	if api == nil {
		cred, err := credential(cfg)
		if err != nil {
			return &settingError{name: "CLOUDFLARE_API_TOKEN_FILE", err: err, usage: true}
		}
		client, err := cloudflare.New(cloudflare.Config{
			BaseURL: cfg.BaseURL, Credential: cred, Timeout: cfg.HTTPTimeout,
			UserAgent: "revoker/" + version,
			Transport: tracing.Transport(cloudflare.DefaultTransport()),
		})
		if err != nil {
			return &settingError{name: "CLOUDFLARE_BASE_URL", err: err, usage: true}
		}
		api = client
		budgetID = cred.ID
		log.Info("API credential", zap.String("credential", cred.ID()))
		if tf, ok := cred.(*cloudflare.TokenFile); ok {
			tf.SetOnChange(func(from, to string) {
				log.Info("API token reloaded from its file", zap.String("from", from), zap.String("to", to))
			})
			tf.SetOnError(func(err error) {
				if err != nil {
					log.Error("API token file cannot be used; keeping the previous token", zap.Error(err))
				} else {
					log.Info("API token file readable again")
				}
			})
			// SPEC §6: the file is checked at least every 5 s, calls or not.
			go func(ctx context.Context) {
				t := time.NewTicker(tokenFileCheck)
				defer t.Stop()
				for {
					select {
					case <-ctx.Done():
						return
					case <-t.C:
						tf.Refresh()
					}
				}
			}(ctx)
		}
	}

	srv, err := metrics.Listen(cfg.HTTPAddr, metrics.Handler(reg, ready))
	if err != nil {
		return err
	}
	// /metrics is served through the shutdown, to its end (lostLinger).
	srvCtx, stopServing := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServing()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := serveDebug(ctx, cfg.DebugAddr, log); err != nil {
		return &settingError{name: "REVOKER_DEBUG_ADDR", err: err}
	}
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(srvCtx) }()
	log.Info("serving metrics and health", zap.String("addr", srv.Addr()))
	if o.ready != nil {
		o.ready(srv.Addr())
	}

	onState := func(up bool) {
		if up {
			m.NATSConnected.Set(1)
			ready.Set(queue.ReadyNATS, "")
		} else {
			m.NATSConnected.Set(0)
			ready.Set(queue.ReadyNATS, "disconnected")
		}
	}
	// A confirmation a connection closed for good left unstored is stored
	// by the next connection; lost only once the process stops.
	carry := &worker.Carryover{}
	run := wiring{cfg: cfg, o: o, api: api, budgetID: budgetID, m: m, ready: ready, log: log, onState: onState,
		callers: &atomic.Pointer[ingress.Callers]{}, ingressMetrics: ingressMetrics, creds: creds, carry: carry}
	run.callers.Store(callers)
	var runErr error
	// The client reconnects by itself for ever; a connection it gave up on
	// for good cannot come back, so a new one is opened and the worker run
	// on it (SPEC §10), until ctx ends.
	var (
		reopening bool
		lastCause string
	)
	for {
		var lost bool
		lost, runErr = run.onNewConnection(ctx)
		if reopening && errors.Is(runErr, errUsage) {
			// A setting that worked at start: a file the connection reads
			// (TLS, .creds) is being replaced, not a bad value. Tried
			// again until it reads, never given up (SPEC §10).
			if msg := runErr.Error(); msg != lastCause && ctx.Err() == nil {
				log.Error("the NATS connection cannot be opened again yet; retrying", zap.Error(runErr))
				lastCause = msg
			}
			runErr, lost = nil, true
		} else if runErr == nil && lost && ctx.Err() == nil {
			lastCause = ""
			log.Error("the NATS connection was closed for good; opening a new one")
		}
		if runErr != nil || !lost || ctx.Err() != nil {
			break
		}
		reopening = true
		throttle.Sleep(ctx, time.Second)
	}
	carry.Close(log, m.ConfirmationsLost)
	cancel()
	if lost := metrics.Count(m.ConfirmationsLost); lost > 0 {
		// Counted only as the process stops: worth something once scraped
		// (SPEC §4, "The proof", point 6; RevokerConfirmationLost).
		log.Error("confirmations lost: serving /metrics until it is scraped once more",
			zap.Float64("lost", lost), zap.Duration("at_most", lostLinger))
		srv.AwaitScrape(srv.Scrapes(), lostLinger)
	}
	stopServing()
	if err := <-srvDone; err != nil {
		log.Warn("metrics server", zap.Error(err))
	}
	// A fatal error is printed once, by the command, on stderr.
	return runErr
}

// credential picks the API credential the configuration names.
func credential(cfg config.Config) (cloudflare.Credential, error) {
	switch {
	case cfg.APITokenFile != "":
		return cloudflare.NewTokenFile(cfg.APITokenFile, tokenFileCheck)
	case cfg.APIToken != "":
		return cloudflare.Token(cfg.APIToken), nil
	default:
		return cloudflare.LegacyKey(cfg.Email, cfg.APIKey), nil
	}
}

// wiring is what one connection's worker is built from.
type wiring struct {
	cfg      config.Config
	o        serveOptions
	api      worker.API
	budgetID func() string
	m        *metrics.Metrics
	ready    *metrics.Readiness
	log      *zap.Logger
	onState  func(bool)
	// callers and ingressMetrics are the HTTP ingress's, when it is on;
	// callers are the file's latest that loaded, so that an ingress
	// started on a new connection admits no caller taken out meanwhile.
	callers        *atomic.Pointer[ingress.Callers]
	ingressMetrics *ingress.Metrics
	// creds are the credentials of a credentials file, nil without one.
	creds *routing.File
	// carry takes the confirmations a connection's end left unstored.
	carry *worker.Carryover
}

// onNewConnection connects, wires budget → gate → consumer → worker on the
// connection, and runs until ctx ends (lost false) or the connection is
// closed for good (lost true).
func (w wiring) onNewConnection(ctx context.Context) (lost bool, err error) {
	cfg, log, m := w.cfg, w.log, w.m
	nc, err := queue.Connect(cfg.Connection(), log, w.onState)
	if err != nil {
		return false, fmt.Errorf("%w: %w", errUsage, err)
	}
	defer nc.Close()
	if w.o.connected != nil {
		w.o.connected(nc)
	}
	js, err := jetstream.New(nc.Conn)
	if err != nil {
		return false, err
	}

	// The gate every call passes. With one credential, its budget, shared
	// by every replica using it (SPEC §9), held to the address limit too.
	// With several, the calls in flight and the address limit across all
	// budgets; each budget has a gate of its own, passed first.
	var (
		shared *routing.BudgetGate
		routes worker.Routes
		rate   = cfg.RateLimit
	)
	if w.creds == nil {
		rate = routing.Rate(rate, map[string]float64{"": rate}, cfg.IPRateLimit)
		shared, err = routing.NewBudgetGate(js, cfg, w.budgetID, "", rate, cfg.Concurrency, m.Budget(""), log)
	} else {
		// No rate of its own: each budget's rate is cut so that together
		// they stay under the address limit (routing.Rate). Two rate gates
		// in a row would leave one's slots unused while the other waits.
		// Its budget shares holds and priority claims across replicas.
		shared, err = routing.NewBudgetGate(js, cfg, func() string { return "address" }, "", 0, cfg.Concurrency,
			metrics.Budget{Paused: prometheus.NewGauge(prometheus.GaugeOpts{Name: "unexported"})}, log)
	}
	if err != nil {
		return false, err
	}
	defer shared.Close()
	gate := shared.Gate()
	var budgets *routing.Routes
	if w.creds != nil {
		budgets = w.creds.RoutesOn(js, cfg, m, gate, w.ready, log)
		defer budgets.Close()
		vctx, stopVerifying := context.WithCancel(ctx)
		defer stopVerifying()
		go w.creds.Verifying(vctx, budgets, gate, len(cfg.Subjects)-1, w.ready)
		routes = budgets
	}

	host, _ := os.Hostname()
	if cfg.VerifyInterval > 0 && cfg.OutcomeEnabled() {
		// SPEC §7 verify: one replica at a time proves the trail against the API.
		var calls prometheus.Counter // with a credentials file, each list counts in its account's budget
		if budgets == nil {
			calls = m.Budget("").Calls
		}
		defer verify.Start(ctx, &verify.Schedule{
			Check: verify.Config{JS: js, Stream: cfg.OutcomeStream, Prefix: cfg.OutcomeSubject, API: w.api,
				Acquire: gateTurn(gate, len(cfg.Subjects)-1, calls, budgets, cfg.RetryInitial)},
			Interval: cfg.VerifyInterval, Create: cfg.CreateStreams, Replicas: cfg.StreamReplicas,
			Gauge: m.KeysStillListed, Log: log, Replica: host,
		})()
	}
	ledger := &queue.Ledger{Replica: host}
	records := &queue.Records{
		JS: js, Log: log, Timeout: 10 * time.Second,
		DLQStream: cfg.DLQStream, DLQSubject: cfg.DLQSubject,
		OutcomeStream: cfg.OutcomeStream, OutcomePrefix: cfg.OutcomeSubject,
	}
	replays := &queue.Replays{DLQStream: cfg.DLQStream}
	consumer := &queue.Consumer{
		JS: js, Cfg: cfg.Topology(), ShutdownTimeout: cfg.ShutdownTimeout, Gate: gate, Ledger: ledger, Replays: replays,
		Metrics: m, Ready: w.ready, Log: log, FetchWait: w.o.fetchWait,
	}
	wk := worker.New(worker.Config{
		Subjects:           cfg.Subjects,
		AllowedAccounts:    cfg.AllowedAccounts,
		NotFoundDeadLetter: cfg.NotFoundDeadLetter,
		RateLimit:          rate,
		RetryInitial:       cfg.RetryInitial,
		RetryMaxInterval:   cfg.RetryMaxInterval,
		RetryMaxElapsed:    cfg.RetryMaxElapsed,
		HandBackDelay:      consumer.HandBackDelay(),
		Name:               host,
	}, worker.Deps{
		API: w.api, Gate: gate, Routes: routes, Ledger: ledger, Replays: replays, Metrics: m, Ready: w.ready, Log: log,
		Records: records, Carryover: w.carry,
	})
	consumer.Handle = wk.Handle
	// Confirmations the last connection left unstored go first: their
	// events' next deliveries then find them and make no call.
	consumer.Before = func(ctx context.Context) error { return w.carry.Store(ctx, wk) }

	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	go func() {
		select {
		case <-nc.Lost():
			stopRun()
		case <-runCtx.Done():
		}
	}()
	if cfg.OutcomeEnabled() {
		// Revoked records the trail refused, kept in the ledger, are
		// written once it takes them, whatever became of their events.
		go ledger.SweepingUnrecorded(runCtx, records, log)
	}
	// One client and one waiter (one subscription on the outcome
	// subjects) per process, shared by the NATS service (SPEC §12) and the
	// HTTP ingress (§11), which run on this connection until the run ends.
	client := queue.ClientOn(nc.Conn, js, cfg.Topology())
	client.Stray = queue.LogStray(log)
	var waiter *queue.Waiter
	if cfg.OutcomeEnabled() {
		if waiter, err = queue.NewWaiter(client); err != nil {
			log.Warn("the NATS service and the ingress will not wait for outcomes", zap.Error(err))
			waiter = nil
		} else {
			defer waiter.Close()
		}
	}
	stopService := service.Serve(runCtx, nc.Conn, service.Config{
		Client: client, Waiter: waiter, Subjects: cfg.Subjects, Version: version, Log: log,
		Index: queue.NewEventIndex(js, cfg.Stream, cfg.StreamReplicas, cfg.CreateStreams, log),
	})
	defer stopService()
	if cfg.IngressAddr != "" {
		in, err := ingress.Start(runCtx, js, ingress.Config{
			Addr: cfg.IngressAddr, TLSCert: cfg.IngressTLSCert, TLSKey: cfg.IngressTLSKey,
			CallersFile: cfg.IngressCallersFile, Callers: w.callers.Load(), OnCallers: w.callers.Store,
			MaxWait: cfg.IngressMaxWait, MaxWaiting: cfg.Concurrency * 16, CloseTimeout: cfg.ShutdownTimeout,
			Client: client, Waiter: waiter, Subjects: cfg.Subjects,
			Replicas: cfg.StreamReplicas, Create: cfg.CreateStreams, Log: log, Metrics: w.ingressMetrics,
		})
		if err != nil {
			return false, &settingError{name: "REVOKER_INGRESS_ADDR", err: err}
		}
		defer func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
			defer cancel()
			if err := in.Close(cctx); err != nil {
				log.Warn("stopping the ingress", zap.Error(err))
			}
		}()
		if w.o.ingressReady != nil {
			w.o.ingressReady(in.Addr())
		}
	}
	err = consumer.Run(runCtx)
	stopRun()
	// Acks and records are buffered by the client: send them before closing.
	if nc.IsConnected() {
		if ferr := nc.FlushTimeout(5 * time.Second); ferr != nil {
			log.Warn("flush at shutdown failed", zap.Error(ferr))
		}
	}
	select {
	case <-nc.Lost():
		lost = true
	default:
	}
	return lost && ctx.Err() == nil, err
}
