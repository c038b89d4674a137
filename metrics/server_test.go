package metrics

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Every phase of a connection is bounded: a scraper that stalls or opens
// connections and leaves them idle cannot hold file descriptors for ever.
func TestServerTimeoutsAreFinite(t *testing.T) {
	s, err := Listen("127.0.0.1:0", http.NotFoundHandler())
	if err != nil {
		t.Fatal(err)
	}
	defer s.ln.Close()
	for name, d := range map[string]time.Duration{
		"ReadHeaderTimeout": s.srv.ReadHeaderTimeout,
		"ReadTimeout":       s.srv.ReadTimeout,
		"WriteTimeout":      s.srv.WriteTimeout,
		"IdleTimeout":       s.srv.IdleTimeout,
	} {
		if d <= 0 || d > 5*time.Minute {
			t.Errorf("%s = %s, want finite and at most 5m", name, d)
		}
	}
	// Scrapes every 15-60s should reuse their connection.
	if s.srv.IdleTimeout < 90*time.Second {
		t.Errorf("IdleTimeout = %s, shorter than a slow scrape interval", s.srv.IdleTimeout)
	}
}

// An idle keep-alive connection is closed by the server once IdleTimeout
// has passed.
func TestIdleKeepAliveClosed(t *testing.T) {
	defer func(d time.Duration) { idleTimeout = d }(idleTimeout)
	idleTimeout = 200 * time.Millisecond

	s, err := Listen("127.0.0.1:0", Handler(prometheus.NewRegistry(), NewReadiness(prometheus.NewRegistry())))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	defer func() { cancel(); <-done }()

	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Close {
		t.Fatalf("status %d, close %v: want a kept-alive 200", resp.StatusCode, resp.Close)
	}
	// Now idle: the server must hang up. The deadline only bounds the test.
	if err := conn.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	_, err = br.ReadByte()
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the server kept an idle keep-alive connection open")
	}
	if !errors.Is(err, io.EOF) {
		t.Fatalf("read on the idle connection: %v, want EOF", err)
	}
}

// AwaitScrape answers once a scrape of /metrics begun after its mark is
// answered, and not for a scrape begun before it or for another path.
func TestAwaitScrape(t *testing.T) {
	reg := prometheus.NewRegistry()
	s, err := Listen("127.0.0.1:0", Handler(reg, NewReadiness(reg)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	get := func(path string) {
		resp, err := http.Get("http://" + s.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	get("/metrics")
	mark := s.Scrapes()
	if mark != 1 {
		t.Fatalf("%d scrapes counted, want 1", mark)
	}
	get("/readyz")
	if s.AwaitScrape(mark, 100*time.Millisecond) {
		t.Fatal("answered for a scrape begun before its mark, or for /readyz")
	}
	answered := make(chan bool, 1)
	go func() { answered <- s.AwaitScrape(mark, 30*time.Second) }()
	get("/metrics")
	if !<-answered {
		t.Fatal("a scrape begun after the mark was not seen")
	}
}
