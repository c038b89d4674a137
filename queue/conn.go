// Package queue is revoker's side of NATS JetStream: the connection, the
// streams and durable consumers, the lanes that fetch work in priority
// order, and the dead-letter and outcome records.
package queue

import (
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/revoker/revoker/config"
)

// Conn is a NATS connection whose Close also waits for the connection's
// last callbacks, so nothing of it runs (or logs) after Close returns.
type Conn struct {
	*nats.Conn
	closed chan struct{}
}

// Close closes the connection and waits, a few seconds at most, for its
// closed callback.
func (c *Conn) Close() {
	c.Conn.Close()
	select {
	case <-c.closed:
	case <-time.After(5 * time.Second):
	}
}

// Connect dials NATS and keeps reconnecting forever: an unreachable server is
// not a reason to exit, only to stay not-ready. onState is told every change
// of the connection (it may be nil).
func Connect(cfg config.Config, log *zap.Logger, onState func(connected bool)) (*Conn, error) {
	if onState == nil {
		onState = func(bool) {}
	}
	closed := make(chan struct{})
	opts := []nats.Option{
		nats.Name("revoker"),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(time.Second),
		nats.ReconnectJitter(500*time.Millisecond, time.Second),
		// Keep acks and records written while disconnected, up to a bound.
		nats.ReconnectBufSize(8 << 20),
		nats.ConnectHandler(func(nc *nats.Conn) {
			log.Info("nats connected", zap.String("server", nc.ConnectedUrlRedacted()))
			onState(true)
		}),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			log.Warn("nats disconnected, reconnecting", zap.Error(err))
			onState(false)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats reconnected", zap.String("server", nc.ConnectedUrlRedacted()))
			onState(true)
		}),
		nats.ClosedHandler(func(*nats.Conn) {
			onState(false)
			close(closed)
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			log.Warn("nats error", zap.Error(err))
		}),
	}
	nc, err := nats.Connect(cfg.NATSURL, append(opts, AuthOptions(cfg)...)...)
	if err != nil {
		// Only option errors (an unreadable creds file, say) land here:
		// an unreachable server is retried in the background.
		return nil, fmt.Errorf("nats: %w", err)
	}
	if nc.IsConnected() {
		log.Info("nats connected", zap.String("server", nc.ConnectedUrlRedacted()))
		onState(true)
	} else {
		log.Warn("nats not reachable yet, retrying in the background")
	}
	return &Conn{Conn: nc, closed: closed}, nil
}

// AuthOptions are the credentials and TLS settings of cfg, for any
// connection revoker makes.
func AuthOptions(cfg config.Config) []nats.Option {
	var opts []nats.Option
	if cfg.NATSCreds != "" {
		opts = append(opts, nats.UserCredentials(cfg.NATSCreds))
	}
	if cfg.NATSTLSCA != "" {
		opts = append(opts, nats.RootCAs(cfg.NATSTLSCA))
	}
	if cfg.NATSTLSCert != "" {
		opts = append(opts, nats.ClientCert(cfg.NATSTLSCert, cfg.NATSTLSKey))
	}
	return opts
}
