package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// hToken is the API token the stand-in accepts and the worker sends.
const hToken = "harness-token"

// hFastEnv makes the worker give up quickly, so failures reach the
// dead-letter stream within a test's patience.
var hFastEnv = map[string]string{
	"REVOKER_RETRY_INITIAL":      "10ms",
	"REVOKER_RETRY_MAX_INTERVAL": "50ms",
	"REVOKER_RETRY_MAX_ELAPSED":  "200ms",
	"REVOKER_MAX_DELIVER":        "2",
	"REVOKER_RATE_LIMIT":         "0",
	"REVOKER_IP_RATE_LIMIT":      "0",
	"REVOKER_HTTP_ADDR":          "127.0.0.1:0",
	"REVOKER_SHUTDOWN_TIMEOUT":   "2s",
}

// stack is one embedded JetStream server and one Cloudflare stand-in, and
// the worker when started: the whole system inside the test process.
type stack struct {
	t   *testing.T
	ns  *server.Server
	api *cloudflaretest.Server
	env map[string]string
	nc  *nats.Conn
	js  jetstream.JetStream
}

// hStack starts a server and a stand-in; extra overrides the environment
// the commands and the worker see.
func hStack(t *testing.T, extra map[string]string) *stack {
	t.Helper()
	ns := queuetest.Server(t)
	api := cloudflaretest.NewServer(cloudflaretest.WithToken(hToken))
	t.Cleanup(api.Close)
	env := maps.Clone(hFastEnv)
	env["REVOKER_NATS_URL"] = ns.ClientURL()
	env["CLOUDFLARE_BASE_URL"] = api.URL
	env["CLOUDFLARE_API_TOKEN"] = hToken
	maps.Copy(env, extra)

	nc, js := queuetest.Connect(t, ns)
	return &stack{t: t, ns: ns, api: api, env: env, nc: nc, js: js}
}

// cfg is the configuration the worker and the commands load from the
// stack's environment.
func (s *stack) cfg() config.Config {
	s.t.Helper()
	return hConfig(s.t, s.env)
}

func hConfig(t *testing.T, env map[string]string) config.Config {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	ld := config.Register(fs, config.All)
	cfg, err := ld.Load(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// ensure creates the streams and consumers without running a worker.
func (s *stack) ensure() {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, s.js, s.cfg().Topology(), zap.NewNop()); err != nil {
		s.t.Fatal(err)
	}
}

// startWorker runs the worker in the background via serve, waits until it
// reports ready, and stops it when the test ends.
func (s *stack) startWorker() { s.startWorkerWith(serveOptions{}) }

// startWorkerWith is startWorker with o's hooks.
func (s *stack) startWorkerWith(o serveOptions) {
	t := s.t
	t.Helper()
	cfg := s.cfg()
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan string, 1)
	done := make(chan error, 1)
	log := zaptest.NewLogger(t, zaptest.Level(zapcore.ErrorLevel))
	go func() {
		if o.log == nil {
			o.log = log
		}
		o.ready = func(a string) { addr <- a }
		done <- serve(ctx, cfg, o)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("worker: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("worker did not stop within 15s")
		}
	})
	var a string
	select {
	case a = <-addr:
	case err := <-done:
		t.Fatalf("worker stopped at start: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("worker did not listen within 10s")
	}
	queuetest.Eventually(t, 10*time.Second, "worker ready", func() bool {
		resp, err := http.Get("http://" + a + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// hResult is what one command did.
type hResult struct {
	code           int
	stdout, stderr string
}

// run runs the revoker command line args against the stack.
func (s *stack) run(args ...string) hResult {
	s.t.Helper()
	return hRun(s.t, s.env, "", args...)
}

// runStdin is run with stdin as the standard input.
func (s *stack) runStdin(stdin string, args ...string) hResult {
	s.t.Helper()
	return hRun(s.t, s.env, stdin, args...)
}

// hRun runs run() as main would, with env as the environment.
func hRun(t *testing.T, env map[string]string, stdin string, args ...string) hResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	code := run(ctx, args, hEnv(env, stdin, &out, &errb))
	return hResult{code: code, stdout: out.String(), stderr: errb.String()}
}

func hEnv(m map[string]string, stdin string, out, errb *bytes.Buffer) env {
	return env{
		stdin:  strings.NewReader(stdin),
		stdout: out,
		stderr: errb,
		lookup: func(k string) (string, bool) { v, ok := m[k]; return v, ok },
	}
}

// want checks a command's exit status and that its output holds the given
// texts (stdout and stderr together).
func (r hResult) want(t *testing.T, code int, texts ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit status %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
	all := r.stdout + r.stderr
	for _, s := range texts {
		if !strings.Contains(all, s) {
			t.Fatalf("output lacks %q\nstdout:\n%s\nstderr:\n%s", s, r.stdout, r.stderr)
		}
	}
}

// msgs is how many messages stream holds now (0 when it does not exist).
func (s *stack) msgs(stream string) uint64 {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := s.js.Stream(ctx, stream)
	if err != nil {
		return 0
	}
	info, err := st.Info(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	return info.State.Msgs
}

// okDeletes counts the successful deletes of key the stand-in answered.
func (s *stack) okDeletes(key string) int {
	n := 0
	for _, r := range s.api.Requests() {
		if r.Method == http.MethodDelete && r.KeyID == key && r.Status/100 == 2 {
			n++
		}
	}
	return n
}

// outcomes reads the outcome records of key straight from the stream.
func (s *stack) outcomes(key string) []event.Record {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []event.Record
	err := queue.EachOutcome(ctx, s.js, s.cfg().OutcomeStream, s.cfg().OutcomeSubject+".>", time.Time{}, func(o event.Record) error {
		if key == "" || o.KeyID == key {
			out = append(out, o)
		}
		return nil
	}, nil)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		// A worker still starting has not made the stream: no records yet.
		return nil
	}
	if err != nil {
		s.t.Fatal(err)
	}
	return out
}

// hLines returns the non-empty lines of s.
func hLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

// hClone copies an environment map.
func hClone(m map[string]string) map[string]string {
	return maps.Clone(m)
}
