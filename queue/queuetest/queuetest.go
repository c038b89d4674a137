// Package queuetest runs a real JetStream server inside a test's process,
// so tests talk to JetStream itself, never to a mock of it.
package queuetest

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/queue"
)

// Server starts a JetStream server on a free loopback port, storing under
// the test's temporary folder, and shuts it down when the test ends.
func Server(t testing.TB) *server.Server {
	t.Helper()
	srv, err := queue.StartServer(&server.Options{Host: "127.0.0.1", Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	return srv
}

// Connect connects to srv for the length of the test.
func Connect(t testing.TB, srv *server.Server) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return ConnectURL(t, srv.ClientURL())
}

// JetStream starts a server and connects to it.
func JetStream(t testing.TB) (*server.Server, *nats.Conn, jetstream.JetStream) {
	t.Helper()
	srv := Server(t)
	nc, js := Connect(t, srv)
	return srv, nc, js
}

// ConnectURL connects to urls (one URL or a comma-separated list, as
// REVOKER_NATS_URL takes it) for the length of the test, reconnecting
// without end while servers come and go.
func ConnectURL(t testing.TB, urls string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(urls, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// Eventually polls cond until it holds, failing the test with what if it
// does not within the given time: tests wait on conditions, never on
// sleeps.
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond) // the polling interval, not a synchronisation
	}
}
