package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/metrics"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/worker"
)

func serveCmd(ctx context.Context, args []string, e env) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	embedded := fs.String("embedded-nats", "", "run a JetStream server inside the process, storing in `DIR`, listening on the NATS URL's address")
	cfg, code := parse(fs, config.All, args, e)
	if code >= 0 {
		return code
	}
	log, err := newLogger(cfg, e.stderr)
	if err != nil {
		fmt.Fprintf(e.stderr, "revoker serve: REVOKER_LOG_LEVEL: %v\n", err)
		return exitUsage
	}
	defer log.Sync() //nolint:errcheck // stderr cannot be synced on every system
	for _, w := range config.SecretFlagWarnings(fs) {
		log.Warn(w)
	}

	if *embedded != "" {
		ns, err := queue.RunEmbedded(*embedded, cfg.NATSURL)
		if err != nil {
			log.Error("embedded NATS did not start", zap.Error(err))
			return exitFailed
		}
		defer ns.Shutdown()
		log.Info("embedded JetStream running", zap.String("dir", *embedded), zap.String("url", ns.ClientURL()))
	}
	err = serve(ctx, cfg, serveOptions{log: log})
	if err != nil {
		fmt.Fprintf(e.stderr, "revoker serve: %v\n", err)
	}
	return exitCode(err)
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
}

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
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := metrics.New(reg, cfg.Subjects, metrics.Build{Version: version, Revision: commit, GoVersion: runtime.Version()})
	ready := metrics.NewReadiness(worker.ReadyNATS, worker.ReadyConsumers)

	api := o.api
	if api == nil {
		cred, err := credential(cfg)
		if err != nil {
			return fmt.Errorf("%w: CLOUDFLARE_API_TOKEN_FILE: %v", errUsage, err)
		}
		client, err := cloudflare.New(cloudflare.Config{
			BaseURL: cfg.BaseURL, Credential: cred, Timeout: cfg.HTTPTimeout,
			UserAgent: "revoker/" + version,
		})
		if err != nil {
			return fmt.Errorf("%w: CLOUDFLARE_BASE_URL: %v", errUsage, err)
		}
		api = client
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
		}
	}

	srv, err := metrics.Listen(cfg.HTTPAddr, metrics.Handler(reg, ready))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(ctx) }()
	log.Info("serving metrics and health", zap.String("addr", srv.Addr()))
	if o.ready != nil {
		o.ready(srv.Addr())
	}

	onState := func(up bool) {
		if up {
			m.NATSConnected.Set(1)
			ready.Set(worker.ReadyNATS, "")
		} else {
			m.NATSConnected.Set(0)
			ready.Set(worker.ReadyNATS, "disconnected")
		}
	}

	gate := throttle.New(throttle.Config{
		Priorities:  len(cfg.Subjects),
		Concurrency: cfg.Concurrency,
		Rate:        cfg.RateLimit,
		OnPause: func(paused bool) {
			if paused {
				m.APIPaused.Set(1)
				log.Warn("the API asked us to slow down: every call paused")
			} else {
				m.APIPaused.Set(0)
				log.Info("pause over: calls resume at the configured rate")
			}
		},
	})
	defer gate.Close()

	host, _ := os.Hostname()
	deps := worker.Deps{API: api, Gate: gate, Metrics: m, Ready: ready, Log: log, Name: host}
	var runErr error
	// A connection the client gave up on cannot come back: open a new one
	// and run the worker on it (SPEC §10), until ctx ends.
	for {
		nc, err := queue.Connect(cfg, log, onState)
		if err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		var lost bool
		lost, runErr = runWorker(ctx, cfg, nc, deps)
		if runErr != nil || !lost || ctx.Err() != nil {
			break
		}
		log.Warn("opening a new NATS connection")
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	cancel()
	if err := <-srvDone; err != nil {
		log.Warn("metrics server", zap.Error(err))
	}
	if runErr != nil {
		log.Error("worker stopped", zap.Error(runErr))
	}
	return runErr
}

// runWorker runs a worker on nc until ctx ends or nc is lost for good
// (lost), then closes nc.
func runWorker(ctx context.Context, cfg config.Config, nc *queue.Conn, deps worker.Deps) (lost bool, err error) {
	defer nc.Close()
	js, err := jetstream.New(nc.Conn)
	if err != nil {
		return false, err
	}
	deps.JS = js
	w, err := worker.New(cfg, deps)
	if err != nil {
		return false, err
	}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		select {
		case <-nc.Lost():
			stop()
		case <-wctx.Done():
		}
	}()
	err = w.Run(wctx)
	// Acks and records are buffered by the client: send them before closing.
	if nc.IsConnected() {
		if ferr := nc.FlushTimeout(5 * time.Second); ferr != nil {
			deps.Log.Warn("flush at shutdown failed", zap.Error(ferr))
		}
	}
	select {
	case <-nc.Lost():
		return true, err
	default:
		return false, err
	}
}

// credential picks the API credential the configuration names.
func credential(cfg config.Config) (cloudflare.Credential, error) {
	switch {
	case cfg.APITokenFile != "":
		return cloudflare.NewTokenFile(cfg.APITokenFile, 2*time.Second)
	case cfg.APIToken != "":
		return cloudflare.Token(cfg.APIToken), nil
	default:
		return cloudflare.LegacyKey(cfg.Email, cfg.APIKey), nil
	}
}
