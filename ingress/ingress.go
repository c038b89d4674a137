// Package ingress is the HTTP front door of SPEC §11: incident automation
// (SOAR playbooks, paging tools' webhooks, on-call scripts) revokes keys
// over HTTPS. It is never a bypass of the JetStream path: an accepted
// request is an event stored in the work stream before anything is
// answered, and its answer is the event's outcome record from the audit
// trail, read with the same pieces as the NATS service (queue.Client,
// queue.Waiter).
package ingress

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	stdlog "log"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/revoker/revoker/logging"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/tracing"
	"github.com/revoker/revoker/untrusted"
)

// Defaults and bounds of the HTTP server.
// storeTimeout bounds storing one event (the claim, the publishes, the
// mark), whether or not the caller is still there. A variable only so that
// a test need not wait it out.
var storeTimeout = 15 * time.Second

const (
	DefaultMaxWait    = 60 * time.Second
	DefaultMaxWaiting = 256
	// DefaultCloseTimeout bounds the close that the end of Start's
	// context makes, when Config.CloseTimeout is not set.
	DefaultCloseTimeout = 10 * time.Second
	readHeaderTimeout   = 10 * time.Second
	idleTimeout         = 2 * time.Minute
	maxHeaderBytes      = 32 << 10
	// retryUnavailable and retryQueued are the Retry-After seconds of a
	// 503 and of a 202.
	retryUnavailable = 5
	retryQueued      = 2
)

var (
	readTimeout = 30 * time.Second
	// writeMargin is the write time beyond a request's wait: storing the
	// event and writing the answer.
	writeMargin = 30 * time.Second
)

// Config is what the ingress is built from.
type Config struct {
	// Addr is where it listens ("127.0.0.1:0" picks a port).
	Addr string
	// TLSCert and TLSKey are the certificate pair's files, re-read when
	// they change; both empty: plain HTTP (config allows that on loopback
	// only).
	TLSCert, TLSKey string
	// CallersFile is read by Start unless Callers is given (the file's
	// content at start), and followed while the ingress runs: a change
	// applies within 5 s, without a restart.
	CallersFile string
	Callers     *Callers
	// OnCallers, when set, is given each set the file changes to once it
	// is in use (an ingress started again later starts from it).
	OnCallers func(*Callers)
	// MaxWait caps Prefer: wait (default DefaultMaxWait).
	MaxWait time.Duration
	// MaxWaiting bounds the requests waiting for an outcome at once;
	// beyond, 503 (default DefaultMaxWaiting).
	MaxWaiting int
	// CloseTimeout is how long the requests in hand may finish once
	// Start's context ends (REVOKER_SHUTDOWN_TIMEOUT; default
	// DefaultCloseTimeout): an event being stored then still gets its
	// answer, within the store's own bound (15 s).
	CloseTimeout time.Duration
	// Client stores events and reads the audit trail; Waiter hears
	// outcomes (nil when outcome records are off: answers are then 202).
	Client *queue.Client
	Waiter *queue.Waiter
	// Subjects of the work stream, highest priority first.
	Subjects []string
	// Replicas and Create are those of the bucket, as of every bucket the
	// worker makes.
	Replicas int
	Create   bool
	Log      *zap.Logger
	// Metrics, else metrics registered on Registerer (else on none).
	Metrics    *Metrics
	Registerer prometheus.Registerer
	// TracerProvider makes the request spans; nil: the global one.
	TracerProvider trace.TracerProvider
}

// Server is the running ingress.
type Server struct {
	cfg     Config
	callers atomic.Pointer[callerSet]
	m       *Metrics
	log     *zap.Logger
	kv      *queue.LazyBucket
	waiting chan struct{}
	now     func() time.Time

	srv    *http.Server
	ln     net.Listener
	ctx    context.Context
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// Start listens on cfg.Addr and serves until ctx ends or Close is called.
// It needs no NATS: the bucket is bound at the first request that needs
// it, so an unreachable NATS is a 503, not a failed start.
func Start(ctx context.Context, js jetstream.JetStream, cfg Config) (*Server, error) {
	if cfg.Client == nil || len(cfg.Subjects) == 0 {
		return nil, errors.New("ingress: a client and the work subjects are required")
	}
	if js != nil && cfg.Client.JetStream() != js {
		return nil, errors.New("ingress: the client must be on the JetStream handle given")
	}
	js = cfg.Client.JetStream() // the bucket's, whether given or not
	if cfg.CloseTimeout <= 0 {
		cfg.CloseTimeout = DefaultCloseTimeout
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = DefaultMaxWait
	}
	if cfg.MaxWaiting <= 0 {
		cfg.MaxWaiting = DefaultMaxWaiting
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Callers == nil {
		cs, err := LoadCallers(cfg.CallersFile)
		if err != nil {
			return nil, err
		}
		cfg.Callers = cs
	}
	m := cfg.Metrics
	if m == nil {
		reg := cfg.Registerer
		if reg == nil {
			reg = prometheus.NewRegistry() // counted, but exported nowhere
		}
		m = NewMetrics(reg, cfg.Callers.Names())
	}
	s := &Server{
		cfg: cfg, m: m,
		log: cfg.Log.With(zap.String("component", "ingress")), waiting: make(chan struct{}, cfg.MaxWaiting),
		kv:  queue.NewLazyBucket(js, BucketConfig(cfg.Replicas), cfg.Create, cfg.Log.With(zap.String("component", "ingress"))),
		now: time.Now, done: make(chan error, 1),
	}
	s.callers.Store(newCallerSet(cfg.Callers, nil))
	var tlsConfig *tls.Config
	if cfg.TLSCert != "" || cfg.TLSKey != "" {
		certs, err := newCertReloader(cfg.TLSCert, cfg.TLSKey, s.log)
		if err != nil {
			return nil, err
		}
		tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.get}
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("ingress: %w", err)
	}
	s.ctx, s.cancel = context.WithCancel(ctx)
	s.ln = ln
	s.srv = &http.Server{
		Handler:           s.routes(),
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      cfg.MaxWait + writeMargin,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		// Requests end with the server: a wait in progress then answers
		// 202 at once (its event is stored already).
		BaseContext: func(net.Listener) context.Context { return s.ctx },
		ErrorLog:    errorLog(s.log),
	}
	go func() {
		var err error
		if tlsConfig != nil {
			err = s.srv.ServeTLS(ln, "", "")
		} else {
			err = s.srv.Serve(ln)
		}
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.done <- err
	}()
	if cfg.CallersFile != "" {
		go s.watchCallers(s.ctx, cfg.CallersFile)
	}
	// The end of ctx closes the ingress as Close does.
	context.AfterFunc(s.ctx, func() {
		cctx, cancel := context.WithTimeout(context.Background(), s.cfg.CloseTimeout)
		defer cancel()
		_ = s.Close(cctx)
	})
	s.log.Info("ingress listening", zap.String("addr", ln.Addr().String()), zap.Bool("tls", tlsConfig != nil),
		zap.Strings("callers", logging.Few(cfg.Callers.Names())))
	return s, nil
}

// errorLog is the HTTP server's own error log (TLS handshakes refused and
// the like), at warning level. What it says may quote what a client sent
// (a refused handshake quotes every protocol the client offered, up to
// 64 KB), so each line is made safe and cut (SPEC §10).
func errorLog(log *zap.Logger) *stdlog.Logger {
	return stdlog.New(serverErrors{log}, "", 0)
}

// maxServerError bounds one line of the HTTP server's error log, in bytes.
const maxServerError = 1024

// serverErrors writes the HTTP server's error lines to log.
type serverErrors struct{ log *zap.Logger }

func (e serverErrors) Write(p []byte) (int, error) {
	e.log.Warn(untrusted.Line(string(p), maxServerError))
	return len(p), nil
}

// Addr is the address the ingress listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops taking requests, ends the waits in progress (each answers
// 202: its event is stored) and waits for the requests in hand, within ctx;
// past ctx, connections are closed.
func (s *Server) Close(ctx context.Context) error {
	var err error
	s.once.Do(func() {
		// Waits end first, so Shutdown does not wait out MaxWait; the
		// answers they write are still delivered.
		s.cancel()
		err = s.srv.Shutdown(ctx)
		if err != nil {
			_ = s.srv.Close()
		}
		if serr := <-s.done; err == nil {
			err = serr
		}
	})
	return err
}

// traceContext is the W3C propagator reading a request's headers as
// revoker reads trace headers everywhere (tracing.HeaderGetter): two
// traceparent values that disagree make none, where the plain propagator
// would continue the first.
type traceContext struct{ propagation.TraceContext }

// Extract implements propagation.TextMapPropagator.
func (p traceContext) Extract(ctx context.Context, c propagation.TextMapCarrier) context.Context {
	if h, ok := c.(propagation.HeaderCarrier); ok {
		return tracing.Extract(ctx, tracing.HeaderGetter(h))
	}
	return p.TraceContext.Extract(ctx, c)
}

// otelOptions are the request spans' options: W3C trace context only (as
// everywhere in revoker), no metrics of otelhttp's own.
func (s *Server) otelOptions() []otelhttp.Option {
	opts := []otelhttp.Option{
		otelhttp.WithPropagators(traceContext{}),
		otelhttp.WithMeterProvider(noop.NewMeterProvider()),
	}
	if s.cfg.TracerProvider != nil {
		opts = append(opts, otelhttp.WithTracerProvider(s.cfg.TracerProvider))
	}
	return opts
}
