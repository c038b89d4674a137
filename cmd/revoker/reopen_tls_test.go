package main

import (
	"context"
	"maps"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestReopenSurvivesAnUnreadableCAFile: SPEC §10, "Trouble with NATS (refused credentials, TLS, an unreachable
// server, a closed connection) is logged with its cause, once per distinct
// cause; the worker never gives up reconnecting, and a connection closed
// for good is opened again." A connection closed for good while the TLS
// CA file is briefly unreadable (a secret being rotated) is TLS trouble:
// the worker must go on trying, and open a new connection once the file
// is back, not stop.
func TestReopenSurvivesAnUnreadableCAFile(t *testing.T) { reopenTLS(t, false) }

// The same with the client certificate's key file briefly unreadable.
func TestReopenSurvivesAnUnreadableClientKey(t *testing.T) { reopenTLS(t, true) }

func reopenTLS(t *testing.T, clientCert bool) {
	pki := newTestPKI(t)
	tlsCfg, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: pki.cert, KeyFile: pki.key})
	if err != nil {
		t.Fatal(err)
	}
	ns, err := queue.StartServer(&server.Options{Host: "127.0.0.1", Port: -1, StoreDir: t.TempDir(), TLSConfig: tlsCfg, TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	api := cloudflaretest.NewServer(cloudflaretest.WithToken(hToken))
	t.Cleanup(api.Close)
	env := maps.Clone(hFastEnv)
	env["REVOKER_NATS_URL"] = "tls://" + ns.Addr().String()
	env["REVOKER_NATS_TLS_CA"] = pki.ca
	away := pki.ca
	if clientCert {
		env["REVOKER_NATS_TLS_CERT"], env["REVOKER_NATS_TLS_KEY"] = pki.cert, pki.key
		away = pki.key
	}
	env["CLOUDFLARE_BASE_URL"] = api.URL
	env["CLOUDFLARE_API_TOKEN"] = hToken
	cfg := hConfig(t, env)

	core, logs := observer.New(zapcore.InfoLevel)
	conns := make(chan *queue.Conn, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, cfg, serveOptions{log: zap.New(core), connected: func(c *queue.Conn) { conns <- c }})
	}()
	var returned atomic.Bool
	t.Cleanup(func() {
		cancel()
		if returned.Load() {
			return
		}
		select {
		case <-done:
		case <-time.After(15 * time.Second):
		}
	})
	var first *queue.Conn
	select {
	case first = <-conns:
	case err := <-done:
		t.Fatalf("serve ended before connecting: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("no connection")
	}
	queuetest.Eventually(t, 20*time.Second, "connected", func() bool { return first.IsConnected() })

	hidden := away + ".rotating"
	if err := os.Rename(away, hidden); err != nil {
		t.Fatal(err)
	}
	first.Conn.Close() // the client giving up, not serve's own Close
	queuetest.Eventually(t, 20*time.Second, "the loss logged", func() bool { return logs.FilterMessageSnippet("opening a new one").Len() > 0 })
	// While the file is away, each try to open a connection fails: serve
	// must say so and go on trying, not stop.
	deadline := time.After(20 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for logs.FilterMessageSnippet("cannot be opened again yet").Len() == 0 {
		select {
		case err := <-done:
			returned.Store(true)
			t.Fatalf("serve gave up while a TLS file was away: returned %v (exit status %d)", err, exitCode(err))
		case <-conns:
			t.Fatal("a connection was opened without the TLS file")
		case <-deadline:
			t.Fatal("neither a retry logged nor serve ended within 20s")
		case <-tick.C:
		}
	}
	if err := os.Rename(hidden, away); err != nil {
		t.Fatal(err)
	}
	select {
	case <-conns:
	case err := <-done:
		returned.Store(true)
		for _, e := range logs.All() {
			t.Log(e.Level, e.Message, e.ContextMap())
		}
		t.Fatalf("serve gave up after the connection was closed for good: returned %v (exit status %d)", err, exitCode(err))
	case <-time.After(20 * time.Second):
		t.Fatal("no new connection within 20s of the CA file coming back")
	}
}
