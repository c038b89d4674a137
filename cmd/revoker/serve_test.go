package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// mapEnv is a lookup over a fixed set of variables.
func mapEnv(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

func runCmd(ctx context.Context, vars map[string]string, args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(ctx, args, env{strings.NewReader(""), &out, &errb, mapEnv(vars)})
	return code, out.String(), errb.String()
}

func TestServeBadConfigurationExits2(t *testing.T) {
	base := map[string]string{"CLOUDFLARE_API_TOKEN": "tok-never-printed"}
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ingressOn := map[string]string{"REVOKER_INGRESS_ADDR": "127.0.0.1:0", "REVOKER_LOG_LEVEL": "error"}
	cases := []struct {
		name string
		vars map[string]string
		args []string
		want string
	}{
		{"rate", map[string]string{"REVOKER_RATE_LIMIT": "fast"}, nil, "REVOKER_RATE_LIMIT"},
		{"concurrency", map[string]string{"REVOKER_CONCURRENCY": "0"}, nil, "REVOKER_CONCURRENCY"},
		{"duration", map[string]string{"REVOKER_HTTP_TIMEOUT": "10"}, nil, "REVOKER_HTTP_TIMEOUT"},
		{"nats url scheme", map[string]string{"REVOKER_NATS_URL": "http://x:4222"}, nil, "REVOKER_NATS_URL"},
		{"base url", map[string]string{"CLOUDFLARE_BASE_URL": "::nope"}, nil, "CLOUDFLARE_BASE_URL"},
		{"not found mode", map[string]string{"REVOKER_NOT_FOUND": "ignore"}, nil, "REVOKER_NOT_FOUND"},
		{"flag wins and is named", map[string]string{"REVOKER_MAX_DELIVER": "3"}, []string{"--max-deliver=-1"}, "--max-deliver"},
		{"no credential", map[string]string{"CLOUDFLARE_API_TOKEN": ""}, nil, "CLOUDFLARE_API_TOKEN"},
		{"unknown flag", nil, []string{"--no-such-flag"}, "no-such-flag"},
		// Settings checked as the worker starts are named as given too.
		{"token file flag named", map[string]string{"CLOUDFLARE_API_TOKEN": ""}, []string{"--cloudflare-api-token-file", empty}, "--cloudflare-api-token-file: "},
		{"callers file flag named", ingressOn, []string{"--ingress-callers-file", empty}, "--ingress-callers-file: "},
		// The warning is for the operator whatever the log level.
		{"secret flag warned", ingressOn, []string{"--cloudflare-api-token", "tok-never-printed", "--ingress-callers-file", empty},
			"revoker serve: warning: --cloudflare-api-token is readable by anyone"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			vars := map[string]string{}
			for k, v := range base {
				vars[k] = v
			}
			for k, v := range tc.vars {
				vars[k] = v
			}
			code, _, stderr := runCmd(context.Background(), vars, append([]string{"serve"}, tc.args...)...)
			if code != exitUsage {
				t.Fatalf("exit %d, want 2; stderr %q", code, stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Fatalf("stderr %q does not name %s", stderr, tc.want)
			}
			if strings.Contains(stderr, "tok-never-printed") {
				t.Fatal("stderr shows the token")
			}
		})
	}
}

// TestServeEmbeddedStartsAndStops: serve --embedded-nats becomes ready,
// and a cancelled context (SIGTERM) ends it with status 0.
func TestServeEmbeddedStartsAndStops(t *testing.T) {
	natsPort, httpPort := freePort(t), freePort(t)
	vars := map[string]string{
		"CLOUDFLARE_API_TOKEN":     "tok",
		"CLOUDFLARE_BASE_URL":      "http://127.0.0.1:1/client/v4",
		"REVOKER_NATS_URL":         fmt.Sprintf("nats://127.0.0.1:%d", natsPort),
		"REVOKER_HTTP_ADDR":        fmt.Sprintf("127.0.0.1:%d", httpPort),
		"REVOKER_SHUTDOWN_TIMEOUT": "2s",
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--embedded-nats", t.TempDir()}, env{strings.NewReader(""), io.Discard, io.Discard, mapEnv(vars)})
	}()
	url := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	waitHTTP(t, url+"/readyz", 200)
	body := get(t, url+"/metrics")
	for _, name := range []string{"revoker_build_info", "revoker_nats_connected 1", `revoker_events_processed_total{outcome="revoked",subject="revoke.urgent"} 0`} {
		if !strings.Contains(body, name) {
			t.Errorf("/metrics lacks %q", name)
		}
	}
	cancel()
	select {
	case code := <-done:
		if code != exitOK {
			t.Fatalf("serve exited %d after SIGTERM, want 0", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop within 30s of SIGTERM")
	}
}

func TestVersionAndUsage(t *testing.T) {
	if code, out, _ := runCmd(context.Background(), nil, "version"); code != 0 || !strings.Contains(out, "revoker dev") {
		t.Errorf("version: %d %q", code, out)
	}
	if code, _, _ := runCmd(context.Background(), nil); code != exitUsage {
		t.Errorf("no command: exit %d", code)
	}
	if code, _, errOut := runCmd(context.Background(), nil, "frobnicate"); code != exitUsage || !strings.Contains(errOut, "frobnicate") {
		t.Errorf("unknown command: exit %d %q", code, errOut)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitHTTP(t *testing.T, url string, status int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == status {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer %d within 20s (last: %v)", url, status, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestServeStopsOnAnImpossibleStream: an existing work stream that does not
// hold a configured subject stops the start with exit status 2.
func TestServeStopsOnAnImpossibleStream(t *testing.T) {
	srv, _, js := queuetest.JetStream(t)
	if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "REVOCATIONS", Subjects: []string{"revoke.urgent"}}); err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{
		"CLOUDFLARE_API_TOKEN": "tok",
		"REVOKER_NATS_URL":     srv.ClientURL(),
		"REVOKER_HTTP_ADDR":    "127.0.0.1:0",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code, _, stderr := runCmd(ctx, vars, "serve")
	if code != exitUsage || !strings.Contains(stderr, "revoke.scheduled") {
		t.Fatalf("exit %d, want 2 naming the missing subject; stderr:\n%s", code, stderr)
	}
}

// TestServeReopensALostConnection: a connection the client closed for good
// (as it does after a server error it does not reconnect after) is opened
// again, and the worker goes on revoking on the new one.
func TestServeReopensALostConnection(t *testing.T) {
	s := hStack(t, nil)
	conns := make(chan *queue.Conn, 4)
	s.startWorkerWith(serveOptions{connected: func(c *queue.Conn) { conns <- c }})
	first := <-conns
	s.run("publish", "--account", "acc1", "--key", "before", "--wait").want(t, exitOK, "revoked")

	first.Conn.Close() // the client giving up, not serve's own Close
	select {
	case <-conns:
	case <-time.After(20 * time.Second):
		t.Fatal("no new connection within 20s of losing the first")
	}
	s.run("publish", "--account", "acc1", "--key", "after", "--wait", "--timeout", "30s").want(t, exitOK, "revoked")
}

// TestIdleWorkerNoticesItsTokenFile: with no call to make, the worker
// still checks its token file every few seconds: a file that cannot be
// read is reported (the previous token kept), and a rotated token loaded.
func TestIdleWorkerNoticesItsTokenFile(t *testing.T) {
	s := hStack(t, nil)
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(hToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	delete(s.env, "CLOUDFLARE_API_TOKEN")
	s.env["CLOUDFLARE_API_TOKEN_FILE"] = path
	core, logs := observer.New(zapcore.InfoLevel)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cfg := s.cfg()
	go func() { done <- serve(ctx, cfg, serveOptions{log: zap.New(core)}) }()
	t.Cleanup(func() { cancel(); <-done })
	queuetest.Eventually(t, 10*time.Second, "the worker started", func() bool {
		return logs.FilterMessageSnippet("API credential").Len() == 1
	})

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			for _, e := range logs.All() {
				t.Log(e.Message, e.ContextMap())
			}
		}
	}()
	queuetest.Eventually(t, 10*time.Second, "the missing file reported", func() bool {
		return logs.FilterMessageSnippet("API token file cannot be used").Len() == 1
	})
	if err := os.WriteFile(path, []byte("rotated-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	queuetest.Eventually(t, 10*time.Second, "the rotated token loaded", func() bool {
		return logs.FilterMessageSnippet("API token reloaded from its file").Len() == 1
	})
}

// TestConfirmationOutlivesAConnectionClosedForGood: the API confirms a
// DELETE after the NATS client gave its connection up for good. The
// process goes on, so the confirmation is not lost: the next connection
// stores it before it fetches anything, the event's redelivery finds the
// record and makes no call, and the trail says revoked with the
// confirming call's CF-Ray (SPEC §4, "A revocation happens once", "The
// proof" point 6; §10).
func TestConfirmationOutlivesAConnectionClosedForGood(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	var first sync.Once
	s := hStack(t, map[string]string{"REVOKER_SHUTDOWN_TIMEOUT": "2s", "REVOKER_ACK_WAIT": "4s"})
	api := cloudflaretest.NewServer(cloudflaretest.WithToken(hToken), cloudflaretest.WithResponder(
		func(r cloudflaretest.Request) (int, http.Header, string, bool) {
			held := false
			if r.Method == http.MethodDelete && r.KeyID == "kcut" {
				first.Do(func() { held = true; close(arrived) })
			}
			if !held {
				return 0, nil, "", false // the stand-in's own answer: a key it never had, 404
			}
			<-release
			return 200, http.Header{"Cf-Ray": []string{"ray-kcut"}}, cloudflaretest.SuccessBody, true
		}))
	t.Cleanup(api.Close)
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	s.api, s.env["CLOUDFLARE_BASE_URL"] = api, api.URL
	core, logs := observer.New(zapcore.InfoLevel)
	conns := make(chan *queue.Conn, 4)
	s.startWorkerWith(serveOptions{log: zap.New(core), connected: func(c *queue.Conn) { conns <- c }})
	conn := <-conns
	s.run("publish", "--account", "acc1", "--key", "kcut").want(t, exitOK)
	select {
	case <-arrived:
	case <-time.After(20 * time.Second):
		t.Fatal("no DELETE of kcut")
	}
	conn.Conn.Close() // the client giving up, not serve's own Close
	close(release)    // the API confirms, too late for that connection
	select {
	case <-conns:
	case <-time.After(20 * time.Second):
		t.Fatal("no new connection within 20s of losing the first")
	}
	queuetest.Eventually(t, 30*time.Second, "the record of kcut", func() bool { return len(s.outcomes("kcut")) > 0 })
	// The redelivery (after the 4 s ack wait) settles on the record.
	queuetest.Eventually(t, 30*time.Second, "the event acked", func() bool { return s.msgs(s.cfg().Stream) == 0 })
	if out := s.outcomes("kcut"); len(out) != 1 || out[0].Outcome != event.Revoked || out[0].CFRay != "ray-kcut" || out[0].Status != 200 || out[0].Attempts != 1 || out[0].UnansweredCalls != 0 {
		t.Errorf("records %+v; want one, revoked by the one call, CF-Ray ray-kcut, answered", out)
	}
	var deletes int
	for _, r := range api.Requests() {
		if r.Method == http.MethodDelete && r.KeyID == "kcut" {
			deletes++
		}
	}
	if deletes != 1 {
		t.Errorf("%d DELETEs of kcut; the confirmed one alone was due", deletes)
	}
	for _, e := range logs.FilterMessageSnippet("CONFIRMATION LOST").All() {
		t.Errorf("logged: %s %v", e.Message, e.ContextMap())
	}
}
