// Package natsauth_test checks that deploy/nats-auth/nats-server.conf lets
// each role do its work and nothing more: it runs nats-server with exactly
// that file and the real revoker binary against it.
package natsauth_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/queue"
)

const (
	publisherPW = "pub-Passw0rd-7c1d"
	workerPW    = "wrk-Passw0rd-93ab"
	operatorPW  = "ops-Passw0rd-5e2f"
	apiToken    = "nats-auth-test-token"
)

// serverLog keeps what nats-server logs, to find permission violations.
type serverLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *serverLog) add(format string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, v...))
}
func (l *serverLog) Noticef(f string, v ...any) {}
func (l *serverLog) Debugf(f string, v ...any)  {}
func (l *serverLog) Tracef(f string, v ...any)  {}
func (l *serverLog) Warnf(f string, v ...any)   { l.add(f, v...) }
func (l *serverLog) Errorf(f string, v ...any)  { l.add(f, v...) }
func (l *serverLog) Fatalf(f string, v ...any)  { l.add(f, v...) }

// violations returns logged permission violations by user.
func (l *serverLog) violations(user string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, s := range l.lines {
		if strings.Contains(s, "Permissions Violation") && strings.Contains(s, `"`+user+`"`) {
			out = append(out, s)
		}
	}
	return out
}

// syncBuffer is a bytes.Buffer safe for a process writing and a test reading.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startServer runs nats-server with the shipped configuration file, on a
// free loopback port and a temporary store.
func startServer(t *testing.T) (*server.Server, *serverLog) {
	t.Helper()
	return startServerIn(t, t.TempDir())
}

// startServerIn is startServer on the store in dir.
func startServerIn(t *testing.T, dir string) (*server.Server, *serverLog) {
	t.Helper()
	t.Setenv("REVOKER_PUBLISHER_PASSWORD", publisherPW)
	t.Setenv("REVOKER_WORKER_PASSWORD", workerPW)
	t.Setenv("REVOKER_OPERATOR_PASSWORD", operatorPW)
	opts, err := server.ProcessConfigFile("nats-server.conf")
	if err != nil {
		t.Fatalf("the shipped configuration does not load: %v", err)
	}
	opts.Host, opts.Port, opts.StoreDir, opts.NoSigs = "127.0.0.1", -1, dir, true
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	log := &serverLog{}
	srv.SetLoggerV2(log, false, false, false)
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	return srv, log
}

// buildRevoker builds the real binary once per test.
func buildRevoker(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "revoker")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/revoker/revoker/cmd/revoker").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func userURL(srv *server.Server, user, pw string) string {
	return fmt.Sprintf("nats://%s:%s@%s", user, pw, srv.Addr())
}

// environ is a minimal environment for revoker plus kv ("K=V").
func environ(kv ...string) []string {
	return append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, kv...)
}

func TestLeastPrivilegeRoles(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the revoker binary")
	}
	srv, slog := startServer(t)
	bin := buildRevoker(t)
	api := cloudflaretest.NewServer(cloudflaretest.WithToken(apiToken))
	t.Cleanup(api.Close)

	// The worker, as the worker user.
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var workerOut syncBuffer
	serve := exec.CommandContext(ctx, bin, "serve")
	serve.Env = environ(
		"REVOKER_NATS_URL="+userURL(srv, "worker", workerPW),
		"REVOKER_NATS_INBOX_PREFIX="+inboxOf["worker"],
		"CLOUDFLARE_BASE_URL="+api.URL,
		"CLOUDFLARE_API_TOKEN="+apiToken,
		"REVOKER_HTTP_ADDR=127.0.0.1:0",
		"REVOKER_RATE_LIMIT=0",
		"REVOKER_IP_RATE_LIMIT=0",
		"REVOKER_RETRY_INITIAL=10ms", "REVOKER_RETRY_MAX_INTERVAL=50ms", "REVOKER_RETRY_MAX_ELAPSED=200ms",
		"REVOKER_MAX_DELIVER=2",
		"REVOKER_SHUTDOWN_TIMEOUT=2s",
	)
	serve.Stdout, serve.Stderr = &workerOut, &workerOut
	serve.Cancel = func() error { return serve.Process.Signal(os.Interrupt) }
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- serve.Wait() }()
	defer func() {
		cancel()
		<-served
		if t.Failed() {
			t.Logf("worker output:\n%s", workerOut.String())
		}
	}()

	// The publisher: only the work subjects, acknowledged.
	var pubErrs struct {
		sync.Mutex
		errs []error
	}
	pub, err := nats.Connect(userURL(srv, "publisher", publisherPW), nats.CustomInboxPrefix(inboxOf["publisher"]), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		pubErrs.Lock()
		defer pubErrs.Unlock()
		pubErrs.errs = append(pubErrs.errs, err)
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	pjs, err := jetstream.New(pub)
	if err != nil {
		t.Fatal(err)
	}
	publish := func(subject, id, body string) {
		t.Helper()
		msg := &nats.Msg{Subject: subject, Data: []byte(body), Header: nats.Header{"Nats-Msg-Id": []string{id}}}
		// The worker creates the stream: until then nobody answers.
		waitFor(t, 30*time.Second, "the work stream acknowledges "+id, func() bool {
			pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
			defer pcancel()
			_, err := pjs.PublishMsg(pctx, msg)
			return err == nil
		})
	}

	// 1. The worker works: an event published by the publisher is revoked.
	publish("revoke.urgent", "ev-1", `{"account_id":"acc1","key_id":"key1"}`)
	waitFor(t, 30*time.Second, "key1 revoked", func() bool { return api.Deleted("acc1", "key1") })

	// 2. The publisher cannot write records, the replays bucket (it could
	// vouch for a forged Revoker-Replay-Of) nor touch JetStream's API.
	for _, subject := range []string{
		"revoke.dlq",
		"revoke.outcome.acc1.key1",
		"$KV.revoker_replays.forged",
		"$JS.API.STREAM.PURGE.REVOCATIONS",
		"$JS.API.STREAM.DELETE.REVOCATION_OUTCOMES",
		"$JS.API.STREAM.DELETE.REVOCATIONS_DLQ",
	} {
		if err := pub.Publish(subject, []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		if err := pub.Flush(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "publisher refused on "+subject, func() bool {
			pubErrs.Lock()
			defer pubErrs.Unlock()
			for _, e := range pubErrs.errs {
				if errors.Is(e, nats.ErrPermissionViolation) && strings.Contains(e.Error(), `"`+subject+`"`) {
					return true
				}
			}
			return false
		})
	}

	opEnv := environ("REVOKER_NATS_URL="+userURL(srv, "operator", operatorPW), "REVOKER_NATS_INBOX_PREFIX="+inboxOf["operator"])
	// The operator reads the audit trail, by key and by account, one
	// message at a time (it may make no consumer).
	for _, args := range [][]string{{"outcomes", "--account", "acc1", "--key", "key1"}, {"outcomes", "--account", "acc1"}, {"outcomes", "--since", "1h"}} {
		outcomes := exec.CommandContext(ctx, bin, args...)
		outcomes.Env = opEnv
		if out, err := outcomes.CombinedOutput(); err != nil || !strings.Contains(string(out), "revoked") {
			t.Fatalf("operator's %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	// 4. The replays bucket: the operator writes it, the worker reads it
	// and may not write it.
	sum := sha256.Sum256([]byte("replay:99"))
	noteKey := hex.EncodeToString(sum[:]) // the note's key in the bucket
	// The operator notes a replay and the worker verifies it, both by the
	// code they run (reads by STREAM.MSG.GET: neither may direct-get).
	opReplays, err := queue.BindReplays(ctx, jsAs(t, srv, "operator", operatorPW, nil), config.Topology{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if err := opReplays.Note(ctx, "replay:99", "ev-2", []byte("body"), 0); err != nil {
		t.Fatalf("operator's note of a replay: %v", err)
	}
	var workerRefusals refusals
	wReplays, err := queue.BindReplays(ctx, jsAs(t, srv, "worker", workerPW, nil), config.Topology{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := wReplays.VerifyBody(ctx, "replay:99", "ev-2", []byte("body"), 1); err != nil || !ok {
		t.Fatalf("worker's check of the operator's replay note: %v, %v", ok, err)
	}
	wKV := bucketAs(ctx, t, srv, "worker", workerPW, "revoker_replays", &workerRefusals)
	pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
	_, err = wKV.Put(pctx, noteKey, []byte(`{"replay_of":"forged"}`))
	pcancel()
	if err == nil {
		t.Fatal("the worker wrote revoker_replays")
	}
	waitFor(t, 10*time.Second, "worker refused on $KV.revoker_replays", func() bool {
		return workerRefusals.has("$KV.revoker_replays." + noteKey)
	})
	if ok, err := opReplays.VerifyBody(ctx, "replay:99", "ev-2", []byte("body"), 1); err != nil || !ok {
		t.Fatalf("the note after the worker's refused write: %v, %v", ok, err)
	}

	// Neither the worker nor the operator met a refusal doing their work
	// (the worker's deliberate write above aside).
	for _, user := range []string{"worker", "operator"} {
		var unexpected []string
		for _, v := range slog.violations(user) {
			if !strings.Contains(v, noteKey) {
				unexpected = append(unexpected, v)
			}
		}
		if len(unexpected) > 0 {
			t.Errorf("%s refused: %q", user, unexpected)
		}
	}
	if strings.Contains(strings.ToLower(workerOut.String()), "permissions violation") {
		t.Error("the worker logged a permissions violation")
	}

	// 3. A dead letter, and the operator replays it.
	api.Script("key2", 400) // rejected once: dead-lettered at once
	publish("revoke.scheduled", "ev-2", `{"account_id":"acc1","key_id":"key2"}`)
	var listOut string
	defer func() {
		if t.Failed() {
			t.Logf("last dlq list:\n%s\nserver refusals: %q", listOut, slog.violations("operator"))
		}
	}()
	waitFor(t, 30*time.Second, "the operator lists the dead letter", func() bool {
		cmd := exec.CommandContext(ctx, bin, "dlq", "list")
		cmd.Env = opEnv
		out, err := cmd.CombinedOutput()
		listOut = string(out)
		return err == nil && strings.Contains(listOut, "key2")
	})
	if api.Deleted("acc1", "key2") {
		t.Fatal("key2 revoked before the replay: the script did not dead-letter it")
	}
	replay := exec.CommandContext(ctx, bin, "dlq", "replay", "--all")
	replay.Env = opEnv
	if out, err := replay.CombinedOutput(); err != nil {
		t.Fatalf("operator's dlq replay: %v\n%s", err, out)
	}
	waitFor(t, 30*time.Second, "key2 revoked after the replay", func() bool { return api.Deleted("acc1", "key2") })
	// The operator removed nothing; the worker, taking the replay, did.
	waitFor(t, 30*time.Second, "the worker removes the replayed dead letter", func() bool {
		cmd := exec.CommandContext(ctx, bin, "dlq", "list")
		cmd.Env = opEnv
		out, err := cmd.CombinedOutput()
		listOut = string(out)
		return err == nil && !strings.Contains(listOut, "key2")
	})
}

// refusals keeps the permission violations a connection was told of.
type refusals struct {
	mu   sync.Mutex
	errs []error
}

func (r *refusals) add(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, err)
}

// has reports whether publishing to subject was refused.
func (r *refusals) has(subject string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.errs {
		if errors.Is(e, nats.ErrPermissionViolation) && strings.Contains(e.Error(), `"`+subject+`"`) {
			return true
		}
	}
	return false
}

// bucketAs binds a key-value bucket as user; refused, if given, collects
// the connection's permission violations.
func bucketAs(ctx context.Context, t *testing.T, srv *server.Server, user, pw, bucket string, refused *refusals) jetstream.KeyValue {
	t.Helper()
	kv, err := jsAs(t, srv, user, pw, refused).KeyValue(ctx, bucket)
	if err != nil {
		t.Fatalf("%s binds %s: %v", user, bucket, err)
	}
	return kv
}

// jsAs connects as user with its own inbox prefix; refused, when set,
// hears the server's refusals.
func jsAs(t *testing.T, srv *server.Server, user, pw string, refused *refusals) jetstream.JetStream {
	t.Helper()
	opts := []nats.Option{nats.CustomInboxPrefix(inboxOf[user])}
	if refused != nil {
		opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { refused.add(err) }))
	}
	nc, err := nats.Connect(userURL(srv, user, pw), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}
