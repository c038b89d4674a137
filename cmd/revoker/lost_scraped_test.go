package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
)

// TestLostConfirmationIsScraped: the API confirms a DELETE and NATS is
// gone at that moment, for good; the worker is stopped, and the
// confirmation is lost (SPEC §4, "The proof", point 6: logged and counted
// in revoker_confirmations_lost_total). The count is worth something only
// if Prometheus can read it: /metrics must serve it at least once
// (RevokerConfirmationLost pages on it).
func TestLostConfirmationIsScraped(t *testing.T) {
	s := hStack(t, map[string]string{"REVOKER_SHUTDOWN_TIMEOUT": "1s"})
	s.ensure()
	s.run("publish", "--account", "acc1", "--key", "lostkey", "--urgent").want(t, exitOK)

	var once sync.Once
	deleted := make(chan struct{})
	api := cloudflaretest.NewServer(cloudflaretest.WithToken(hToken),
		cloudflaretest.WithResponder(func(r cloudflaretest.Request) (int, http.Header, string, bool) {
			if r.Method == http.MethodDelete {
				once.Do(func() { s.ns.Shutdown(); s.ns.WaitForShutdown(); close(deleted) })
			}
			return 0, nil, "", false // the default: 200, revoked
		}))
	t.Cleanup(api.Close)
	s.env["CLOUDFLARE_BASE_URL"] = api.URL

	core, logs := observer.New(zap.ErrorLevel)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr := make(chan string, 1)
	done := make(chan error, 1)
	cfg := s.cfg()
	go func() {
		done <- serve(ctx, cfg, serveOptions{log: zap.New(core), ready: func(a string) { addr <- a }})
	}()
	a := <-addr
	select {
	case <-deleted:
	case <-time.After(20 * time.Second):
		t.Fatal("no DELETE within 20s")
	}
	cancel() // SIGTERM while the confirmation cannot be stored

	scraped := false
	deadline := time.After(30 * time.Second)
	poll := time.NewTicker(10 * time.Millisecond) // a scraper's pace, not a wait for anything
	defer poll.Stop()
	for stopped := false; !stopped && !scraped; {
		select {
		case err := <-done:
			stopped = true
			if err != nil {
				t.Logf("serve: %v", err)
			}
		case <-deadline:
			t.Fatal("serve did not stop within 30s")
		case <-poll.C:
		}
		resp, err := http.Get("http://" + a + "/metrics")
		if err != nil {
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		scraped = strings.Contains(string(body), "\nrevoker_confirmations_lost_total 1\n")
	}
	if logs.FilterMessageSnippet("CONFIRMATION LOST").Len() == 0 {
		t.Fatalf("no confirmation was lost; the test did not reach its case")
	}
	if !scraped {
		t.Errorf("a confirmation was lost (logged CONFIRMATION LOST), but no scrape of /metrics, polled until serve returned, read revoker_confirmations_lost_total 1: RevokerConfirmationLost cannot fire")
	}
}
