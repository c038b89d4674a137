package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestAPIReadyAgainAfterANewConnection: the API answers a DELETE with a
// 404 that is not its envelope, so the worker turns not-ready (condition
// api, SPEC §4, §8); then the NATS connection is closed for good and serve
// opens a new one (SPEC §10). The API answers properly again: the next
// DELETEs are confirmed, so condition api must be met again, and /readyz
// 200 (revoker_ready{condition="api"} 1), as it would be on the first
// connection.
func TestAPIReadyAgainAfterANewConnection(t *testing.T) {
	// gone1's retry comes after the longest backoff, as unauthorized's does.
	s := hStack(t, map[string]string{"REVOKER_RETRY_MAX_INTERVAL": "2s"})
	s.api.Script("gone1", cloudflaretest.HTML404)
	conns := make(chan *queue.Conn, 4)
	addr := make(chan string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cfg := s.cfg()
	go func() {
		done <- serve(ctx, cfg, serveOptions{log: zaptest.NewLogger(t),
			ready: func(a string) { addr <- a }, connected: func(c *queue.Conn) { conns <- c }})
	}()
	t.Cleanup(func() { cancel(); <-done })
	a := <-addr
	first := <-conns
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + a + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	queuetest.Eventually(t, 10*time.Second, "ready", func() bool { c, _ := readyz(); return c == 200 })

	s.run("publish", "--account", "acc1", "--key", "gone1").want(t, exitOK)
	queuetest.Eventually(t, 10*time.Second, "not ready: api", func() bool {
		c, body := readyz()
		return c == 503 && strings.Contains(body, "api:")
	})

	first.Conn.Close() // the client giving up for good
	select {
	case <-conns:
	case <-time.After(20 * time.Second):
		t.Fatal("no new connection within 20s")
	}
	// The API answers as it should: both events are revoked.
	s.run("publish", "--account", "acc1", "--key", "fine1", "--wait", "--timeout", "30s").want(t, exitOK, "revoked")
	queuetest.Eventually(t, 30*time.Second, "gone1 revoked", func() bool { return s.api.Deleted("acc1", "gone1") })

	queuetest.Eventually(t, 10*time.Second, "ready again once the API confirmed DELETEs on the new connection", func() bool {
		c, _ := readyz()
		return c == 200
	})
}
