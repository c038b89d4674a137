package main

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/queue/queuetest"
)

// TestServeDebug: the profiler answers on the address given until the
// context ends; no address serves nothing.
func TestServeDebug(t *testing.T) {
	if err := serveDebug(context.Background(), "", zaptest.NewLogger(t)); err != nil {
		t.Fatalf("no address: %v", err)
	}
	core, logs := observer.New(zap.InfoLevel)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := serveDebug(ctx, "127.0.0.1:0", zap.New(core)); err != nil {
		t.Fatal(err)
	}
	entries := logs.FilterMessage("serving the profiler").All()
	if len(entries) != 1 {
		t.Fatalf("logged %d lines about the profiler", len(entries))
	}
	addr := entries[0].ContextMap()["addr"].(string)
	resp, err := http.Get("http://" + addr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("goroutine profile: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	cancel()
	queuetest.Eventually(t, 5*time.Second, "the profiler to stop", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
}

// TestServeDebugAddressTaken: an address that cannot be listened on fails
// at start.
func TestServeDebugAddressTaken(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := serveDebug(context.Background(), l.Addr().String(), zaptest.NewLogger(t)); err == nil {
		t.Fatal("a taken address was accepted")
	}
}
