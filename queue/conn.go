// Package queue is revoker's side of NATS JetStream: the connection, the
// streams and durable consumers, the lanes that fetch work in priority
// order, and the dead-letter and outcome records.
package queue

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/revoker/revoker/config"
)

// Conn is a NATS connection whose Close also waits for the connection's
// last callbacks, so nothing of it runs (or logs) after Close returns.
type Conn struct {
	*nats.Conn
	closed  chan struct{} // closed by the closed callback
	lost    chan struct{} // closed when the connection closed without Close
	closing atomic.Bool
	stop    chan struct{} // ends the cause watcher
	watched sync.WaitGroup
}

// Close closes the connection and waits, a few seconds at most, for its
// closed callback.
func (c *Conn) Close() {
	if c.closing.Swap(true) {
		return
	}
	close(c.stop)
	c.Conn.Close()
	c.watched.Wait()
	select {
	case <-c.closed:
	case <-time.After(5 * time.Second):
	}
}

// Lost is closed when the connection closed for good without Close being
// called: the client gave up (a server error it does not reconnect after,
// say). Such a connection cannot come back; the owner should Connect again.
func (c *Conn) Lost() <-chan struct{} { return c.lost }

// causeWatchEvery is how often the reason of a failing connect is looked
// for while disconnected. The client keeps it only between two attempts
// (ReconnectWait apart), so this must be well under that.
const causeWatchEvery = 200 * time.Millisecond

// Connect dials NATS and keeps reconnecting forever: an unreachable server,
// refused credentials or a TLS mismatch are not reasons to exit, only to
// stay not-ready. Each distinct reason a connect fails is logged once per
// outage, and the .creds file is read again on every attempt, so fixing it
// is enough. onState is told every change of the connection (it may be
// nil). Nothing logged holds a password or token of the NATS URL.
func Connect(cfg config.Connection, log *zap.Logger, onState func(connected bool)) (*Conn, error) {
	if onState == nil {
		onState = func(bool) {}
	}
	c := &Conn{closed: make(chan struct{}), lost: make(chan struct{}), stop: make(chan struct{})}
	scrub := urlSecrets(cfg.URL)
	causes := &causeLog{log: log, scrub: scrub, msg: "nats not reachable, retrying", field: "cause"}
	// Other trouble the client reports (a consumer's missed heartbeats
	// while the server is away, say) repeats on a timer: once per distinct
	// cause as well (SPEC §10), until the connection is back.
	troubles := &causeLog{log: log, scrub: scrub, msg: "nats error", field: "error"}
	opts := []nats.Option{
		nats.Name("revoker"),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		// By default the client gives up after the same authorization error
		// twice: a credential fixed later would then never be tried.
		nats.IgnoreAuthErrorAbort(),
		nats.ReconnectWait(time.Second),
		nats.ReconnectJitter(500*time.Millisecond, time.Second),
		// Keep acks and records written while disconnected, up to a bound.
		nats.ReconnectBufSize(8 << 20),
		// A server lost without a TCP reset (a partition, a dead node) is
		// noticed within about 30 s, not the client's default 4 minutes.
		nats.PingInterval(10 * time.Second),
		nats.MaxPingsOutstanding(3),
		nats.LameDuckModeHandler(func(nc *nats.Conn) {
			log.Info("nats server entering lame duck mode; moving to another", zap.String("server", serverURL(nc)))
		}),
		nats.ConnectHandler(func(nc *nats.Conn) {
			causes.reset()
			log.Info("nats connected", zap.String("server", serverURL(nc)))
			onState(true)
		}),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			log.Warn("nats disconnected, reconnecting", zap.String("cause", scrub(errText(err))))
			onState(false)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			causes.reset()
			troubles.reset()
			log.Info("nats reconnected", zap.String("server", serverURL(nc)))
			onState(true)
		}),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			causes.report(err)
		}),
		nats.ClosedHandler(func(nc *nats.Conn) {
			onState(false)
			if !c.closing.Load() {
				log.Error("nats connection closed for good", zap.String("cause", scrub(errText(nc.LastError()))))
				close(c.lost)
			}
			close(c.closed)
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if isConnectError(err) {
				causes.report(err)
				return
			}
			troubles.report(err)
		}),
	}
	nc, err := nats.Connect(cfg.URL, append(opts, AuthOptions(cfg)...)...)
	if err != nil {
		// Only option errors (an unreadable creds file, say) land here:
		// an unreachable server is retried in the background.
		return nil, fmt.Errorf("nats: %s", scrub(err.Error()))
	}
	c.Conn = nc
	// A first connect that succeeded was told by the connect handler.
	if !nc.IsConnected() {
		log.Warn("nats not reachable yet, retrying in the background")
	}
	c.watched.Add(1)
	go c.watchCauses(causes)
	return c, nil
}

// watchCauses reports why connecting fails. The client tells a failed dial
// through a callback, but keeps a failed handshake (TLS, a refused
// credential during the first connect) only in LastError until its next
// attempt, so that is read while disconnected.
func (c *Conn) watchCauses(causes *causeLog) {
	defer c.watched.Done()
	t := time.NewTicker(causeWatchEvery)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		if st := c.Conn.Status(); st == nats.CONNECTED || st == nats.CLOSED {
			continue
		}
		if err := c.Conn.LastError(); err != nil {
			causes.report(err)
		}
	}
}

// isConnectError reports whether an asynchronous error is about being let
// in, so it belongs with the reasons a connect fails.
func isConnectError(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAccountAuthExpired)
}

// causeLog logs each distinct cause of trouble once, until the connection
// is up again: a server down for an hour is one line, not 3,600.
type causeLog struct {
	log        *zap.Logger
	scrub      func(string) string
	msg, field string // the line logged, and its field for the cause
	mu         sync.Mutex
	seen       map[string]bool
}

func (l *causeLog) report(err error) {
	if err == nil {
		return
	}
	msg := l.scrub(errText(err))
	l.mu.Lock()
	if l.seen == nil {
		l.seen = map[string]bool{}
	}
	dup := l.seen[msg]
	l.seen[msg] = true
	l.mu.Unlock()
	if !dup {
		l.log.Warn(l.msg, zap.String(l.field, msg))
	}
}

func (l *causeLog) reset() {
	l.mu.Lock()
	l.seen = nil
	l.mu.Unlock()
}

func errText(err error) string {
	if err == nil {
		return "none given"
	}
	return err.Error()
}

// serverURL is the connected server's URL without any user, password or
// token (the client's own redaction keeps a token given as the user), and
// without a query or fragment, where one might be put too.
func serverURL(nc *nats.Conn) string {
	u, err := url.Parse(nc.ConnectedUrl())
	if err != nil {
		return nc.ConnectedAddr()
	}
	u.User, u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = nil, "", false, "", ""
	return u.String()
}

// urlSecrets returns a function replacing, in any text, the passwords and
// tokens of the comma-separated NATS URLs, so that no error the client
// makes up from its URL can carry them into a log.
func urlSecrets(urls string) func(string) string {
	var secrets []string
	for _, s := range strings.Split(urls, ",") {
		u, err := url.Parse(strings.TrimSpace(s))
		if err != nil || u.User == nil {
			continue
		}
		if pw, ok := u.User.Password(); ok {
			secrets = append(secrets, pw, url.QueryEscape(pw))
		} else {
			secrets = append(secrets, u.User.Username(), url.QueryEscape(u.User.Username()))
		}
	}
	return func(s string) string {
		for _, sec := range secrets {
			if sec != "" {
				s = strings.ReplaceAll(s, sec, "[redacted]")
			}
		}
		return s
	}
}

// AuthOptions are the credentials, TLS settings and inbox prefix of cfg,
// for any connection revoker makes. The creds file is read on every
// connect. The inbox prefix is part of who a connection is: the shipped
// permissions (deploy/nats-auth) let each role read replies only on its
// own prefix, so no role reads another's.
func AuthOptions(cfg config.Connection) []nats.Option {
	var opts []nats.Option
	if cfg.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(cfg.InboxPrefix))
	}
	if cfg.Creds != "" {
		opts = append(opts, nats.UserCredentials(cfg.Creds))
	}
	if cfg.TLSCA != "" {
		opts = append(opts, nats.RootCAs(cfg.TLSCA))
	}
	if cfg.TLSCert != "" {
		opts = append(opts, nats.ClientCert(cfg.TLSCert, cfg.TLSKey))
	}
	return opts
}
