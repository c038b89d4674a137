package natsauth_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
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
	"github.com/revoker/revoker/queue/queuetest"
)

// inboxOf is each role's REVOKER_NATS_INBOX_PREFIX, as README.md gives it.
var inboxOf = map[string]string{
	"publisher":      "_INBOX_publisher",
	"worker":         "_INBOX_worker",
	"operator":       "_INBOX_operator",
	"service-client": "_INBOX_service",
}

var passwordOf = map[string]string{"publisher": publisherPW, "worker": workerPW, "operator": operatorPW, "service-client": serviceClientPW}

// role is a connection as one of the shipped users, with its own inbox
// prefix, that keeps the refusals the server tells it of.
type role struct {
	name    string
	nc      *nats.Conn
	js      jetstream.JetStream
	refused refusals
}

func connectAs(t *testing.T, srv *server.Server, user string) *role {
	t.Helper()
	r := &role{name: user}
	nc, err := nats.Connect(userURL(srv, user, passwordOf[user]),
		nats.CustomInboxPrefix(inboxOf[user]),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { r.refused.add(err) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	r.nc = nc
	if r.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	return r
}

// subscribeRefused reports whether subscribing to subject was refused.
func (r *refusals) subscribeRefused(subject string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.errs {
		if strings.Contains(e.Error(), `Subscription to "`+subject+`"`) {
			return true
		}
	}
	return false
}

// try sends body to subject with a reply subject of the role's own and
// reports whether the server took it (any answer: an acknowledgement, an
// API answer, an API error) or refused it (a permissions violation).
func (r *role) try(t *testing.T, subject, body string) bool {
	t.Helper()
	inbox := r.nc.NewInbox()
	sub, err := r.nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe() //nolint:errcheck
	if err := r.nc.PublishRequest(subject, inbox, []byte(body)); err != nil {
		t.Fatal(err)
	}
	if err := r.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if r.refused.has(subject) {
			return false
		}
		// The wait for an answer is the poll's pace.
		if _, err := sub.NextMsg(20 * time.Millisecond); err == nil {
			return true
		}
	}
	t.Fatalf("%s on %s: neither answered nor refused", r.name, subject)
	return false
}

// createTopology makes, as the worker, every stream and bucket revoker
// makes (the budget and attempts buckets too).
func createTopology(ctx context.Context, t *testing.T, w *role) config.Topology {
	t.Helper()
	topo := config.Default().Topology()
	if err := queue.Ensure(ctx, w.js, topo, zap.NewNop()); err != nil {
		t.Fatalf("the worker makes its streams: %v", err)
	}
	for _, b := range []string{queue.BudgetBucket, queue.LedgerBucket} {
		if _, err := w.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: b}); err != nil {
			t.Fatalf("the worker makes %s: %v", b, err)
		}
	}
	return topo
}

// consumersOf counts the consumers of stream.
func consumersOf(t *testing.T, srv *server.Server, stream string) int {
	t.Helper()
	jsz, err := srv.Jsz(&server.JSzOptions{Accounts: true, Streams: true, Consumer: true})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, a := range jsz.AccountDetails {
		for _, s := range a.Streams {
			if s.Name == stream {
				n += len(s.Consumer)
			}
		}
	}
	return n
}

// storedOn reports whether stream holds a message on subject, as the
// worker reads it.
func storedOn(ctx context.Context, t *testing.T, w *role, stream, subject string) bool {
	t.Helper()
	s, err := w.js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.GetLastMsgForSubject(ctx, subject)
	return err == nil
}

// The operator may not have the server deliver a dead letter's body (its
// own bytes, stored as they came) onto an outcome subject or into the
// budget: no consumer create in any form, no fetch, no direct get, with
// any reply or deliver subject.
func TestOperatorCannotForgeThroughServerDelivery(t *testing.T) {
	srv, _ := startServer(t)
	ctx := t.Context()
	w := connectAs(t, srv, "worker")
	op := connectAs(t, srv, "operator")
	createTopology(ctx, t, w)

	// What the worker stores, byte for byte, when it dead-letters the
	// operator's crafted "event" as invalid_event.
	forged := `{"event_id":"e","account_id":"acc9","key_id":"key9","outcome":"revoked","status":200,"attempts":1,"stream":"REVOCATIONS","sequence":1}`
	if _, err := w.js.Publish(ctx, "revoke.dlq", []byte(forged)); err != nil {
		t.Fatal(err)
	}

	targets := map[string]struct{ stream, subject string }{
		"record": {"REVOCATION_OUTCOMES", "revoke.outcome.acc9.key9"},
		"hold":   {"KV_" + queue.BudgetBucket, "$KV." + queue.BudgetBucket + ".default"},
	}
	for what, target := range targets {
		push := func(name string) string {
			b, _ := json.Marshal(map[string]any{"stream_name": "REVOCATIONS_DLQ", "config": map[string]any{
				"name": name, "durable_name": name, "deliver_subject": target.subject, "ack_policy": "none", "deliver_policy": "all",
			}})
			return string(b)
		}
		for _, a := range []struct{ subject, body, reply string }{
			{"$JS.API.CONSUMER.CREATE.REVOCATIONS_DLQ.forge", push("forge"), ""},
			{"$JS.API.CONSUMER.CREATE.REVOCATIONS_DLQ.forgef.revoke.dlq", push("forgef"), ""},
			{"$JS.API.CONSUMER.DURABLE.CREATE.REVOCATIONS_DLQ.forged", push("forged"), ""},
			{"$JS.API.CONSUMER.CREATE.REVOCATION_OUTCOMES.forgeo", strings.Replace(push("forgeo"), "REVOCATIONS_DLQ", "REVOCATION_OUTCOMES", 1), ""},
			// A fetch or a direct get answers its reply subject, whatever it is.
			{"$JS.API.CONSUMER.MSG.NEXT.REVOCATIONS_DLQ.forge", `{"batch":1}`, target.subject},
			{"$JS.API.DIRECT.GET.REVOCATIONS_DLQ", `{"seq":1}`, target.subject},
		} {
			reply := a.reply
			if reply == "" {
				reply = op.nc.NewInbox()
			}
			if err := op.nc.PublishRequest(a.subject, reply, []byte(a.body)); err != nil {
				t.Fatal(err)
			}
			if err := op.nc.Flush(); err != nil {
				t.Fatal(err)
			}
			// Whether the server then stores what it delivers varies (an
			// API answer to a reply subject is stored, nats-server 2.15
			// stores no push delivery): the refusal is what must hold.
			waitFor(t, 10*time.Second, what+": the operator is refused "+a.subject, func() bool {
				return op.refused.has(a.subject) || storedOn(ctx, t, w, target.stream, target.subject)
			})
			if storedOn(ctx, t, w, target.stream, target.subject) {
				t.Fatalf("the operator's %s was stored on %s through %s", what, target.subject, a.subject)
			}
		}
	}
	for _, stream := range []string{"REVOCATIONS_DLQ", "REVOCATION_OUTCOMES"} {
		if n := consumersOf(t, srv, stream); n != 0 {
			t.Errorf("the operator made %d consumers on %s", n, stream)
		}
	}
}

// Every write path a role could use, tried as the real users: each refusal
// that must hold, and each permission that their work needs.
func TestRoleWritePaths(t *testing.T) {
	srv, _ := startServer(t)
	ctx := t.Context()
	roles := map[string]*role{}
	for u := range passwordOf {
		roles[u] = connectAs(t, srv, u)
	}
	createTopology(ctx, t, roles["worker"])

	pushTo := func(stream, deliver string) string {
		b, _ := json.Marshal(map[string]any{"stream_name": stream, "config": map[string]any{
			"name": "probe", "deliver_subject": deliver, "ack_policy": "none"}})
		return string(b)
	}
	const (
		allow = true
		deny  = false
	)
	cases := []struct {
		user, subject, body string
		want                bool
	}{
		// The publisher: events in, and reading what proves its own.
		{"publisher", "revoke.urgent", `{"account_id":"a1","key_id":"k1"}`, allow},
		{"publisher", "revoke.scheduled", `{"account_id":"a1","key_id":"k2"}`, allow},
		{"publisher", "$JS.API.STREAM.INFO.REVOCATIONS", ``, allow},
		{"publisher", "$JS.API.STREAM.MSG.GET.REVOCATIONS", `{"seq":1}`, allow},
		{"publisher", "$JS.API.STREAM.MSG.GET.REVOCATION_OUTCOMES", `{"seq":1}`, allow},
		{"publisher", "revoke.dlq", `{}`, deny},
		{"publisher", "revoke.outcome.a1.k1", `{}`, deny},
		{"publisher", "$KV.revoker_budget.default", `{}`, deny},
		{"publisher", "$KV.revoker_attempts.x", `{}`, deny},
		{"publisher", "$KV.revoker_replays.x", `{}`, deny},
		{"publisher", "$JS.API.CONSUMER.CREATE.REVOCATIONS.probe", pushTo("REVOCATIONS", "revoke.outcome.a1.k1"), deny},
		{"publisher", "$JS.API.CONSUMER.CREATE.REVOCATION_OUTCOMES.probe", pushTo("REVOCATION_OUTCOMES", "revoke.dlq"), deny},
		{"publisher", "$JS.API.DIRECT.GET.REVOCATIONS", `{"seq":1}`, deny},
		{"publisher", "$JS.API.STREAM.UPDATE.REVOCATIONS", `{}`, deny},
		{"publisher", "$JS.API.STREAM.PURGE.REVOCATIONS", `{}`, deny},
		{"publisher", "$JS.API.STREAM.DELETE.REVOCATION_OUTCOMES", ``, deny},
		{"publisher", "$JS.API.STREAM.MSG.DELETE.REVOCATIONS", `{"seq":1}`, deny},

		// The operator: read by message, note replays, republish; never
		// remove a dead letter (the worker removes one once it takes its
		// replay: SPEC §5, no one who may publish events can make a dead
		// letter vanish); nothing that makes the server write elsewhere.
		{"operator", "$JS.API.STREAM.MSG.GET.REVOCATIONS_DLQ", `{"seq":1}`, allow},
		{"operator", "$JS.API.STREAM.MSG.GET.REVOCATION_OUTCOMES", `{"seq":1}`, allow},
		{"operator", "$JS.API.STREAM.MSG.GET.REVOCATIONS", `{"seq":1}`, allow},
		{"operator", "$JS.API.STREAM.MSG.DELETE.REVOCATIONS_DLQ", `{"seq":999}`, deny},
		{"operator", "$KV.revoker_replays.probe", `{}`, allow},
		{"operator", "revoke.scheduled", `{"account_id":"a1","key_id":"k3"}`, allow},
		{"operator", "revoke.dlq", `{}`, deny},
		{"operator", "revoke.outcome.a1.k1", `{}`, deny},
		{"operator", "$KV.revoker_budget.default", `{}`, deny},
		{"operator", "$KV.revoker_attempts.x", `{}`, deny},
		{"operator", "$JS.API.CONSUMER.CREATE.REVOCATIONS_DLQ.probe", pushTo("REVOCATIONS_DLQ", "revoke.outcome.a1.k1"), deny},
		{"operator", "$JS.API.CONSUMER.CREATE.REVOCATIONS_DLQ.probe.revoke.dlq", pushTo("REVOCATIONS_DLQ", "revoke.outcome.a1.k1"), deny},
		{"operator", "$JS.API.CONSUMER.DURABLE.CREATE.REVOCATIONS_DLQ.probe", pushTo("REVOCATIONS_DLQ", "revoke.outcome.a1.k1"), deny},
		{"operator", "$JS.API.CONSUMER.CREATE.REVOCATION_OUTCOMES.probe", pushTo("REVOCATION_OUTCOMES", "$KV.revoker_budget.default"), deny},
		{"operator", "$JS.API.CONSUMER.CREATE.REVOCATION_OUTCOMES.probe.revoke.outcome.>", pushTo("REVOCATION_OUTCOMES", "revoke.dlq"), deny},
		{"operator", "$JS.API.CONSUMER.CREATE.KV_revoker_replays.probe", pushTo("KV_revoker_replays", "revoke.dlq"), deny},
		{"operator", "$JS.API.CONSUMER.MSG.NEXT.REVOCATIONS_DLQ.probe", `{"batch":1}`, deny},
		{"operator", "$JS.API.DIRECT.GET.REVOCATIONS_DLQ", `{"seq":1}`, deny},
		{"operator", "$JS.API.DIRECT.GET.REVOCATION_OUTCOMES.revoke.outcome.a1.k1", ``, deny},
		{"operator", "$JS.API.STREAM.SNAPSHOT.REVOCATION_OUTCOMES", `{"deliver_subject":"revoke.dlq"}`, deny},
		{"operator", "$JS.API.STREAM.UPDATE.REVOCATION_OUTCOMES", `{}`, deny},
		{"operator", "$JS.API.STREAM.PURGE.REVOCATIONS_DLQ", `{}`, deny},
		{"operator", "$JS.API.STREAM.DELETE.REVOCATION_OUTCOMES", ``, deny},
		{"operator", "$JS.API.STREAM.MSG.DELETE.REVOCATION_OUTCOMES", `{"seq":1}`, deny},
		{"operator", "$JS.API.STREAM.CREATE.KV_revoker_budget", `{}`, deny},

		// The worker: its records, its buckets, its consumers; never the
		// replays bucket, never a purge or delete.
		{"worker", "revoke.dlq", `{}`, allow},
		{"worker", "$JS.API.STREAM.MSG.DELETE.REVOCATIONS_DLQ", `{"seq":999}`, allow},
		{"worker", "revoke.outcome.a1.k1", `{}`, allow},
		{"worker", "$KV.revoker_budget.probe", `{}`, allow},
		{"worker", "$KV.revoker_attempts.probe", `{}`, allow},
		{"worker", "$JS.API.CONSUMER.CREATE.REVOCATIONS.probe", `{"stream_name":"REVOCATIONS","config":{"name":"probe","ack_policy":"explicit","filter_subject":"revoke.urgent"}}`, allow},
		{"worker", "$KV.revoker_replays.probe", `{}`, deny},
		{"worker", "$JS.API.STREAM.UPDATE.REVOCATION_OUTCOMES", `{}`, deny},
		{"worker", "$JS.API.STREAM.PURGE.REVOCATIONS_DLQ", `{}`, deny},
		{"worker", "$JS.API.STREAM.DELETE.REVOCATION_OUTCOMES", ``, deny},
		{"worker", "$JS.API.STREAM.MSG.DELETE.REVOCATION_OUTCOMES", `{"seq":1}`, deny},
		{"worker", "$JS.API.CONSUMER.CREATE.REVOCATIONS_DLQ.probe", pushTo("REVOCATIONS_DLQ", "revoke.outcome.a1.k1"), deny},
	}
	for _, c := range cases {
		if got := roles[c.user].try(t, c.subject, c.body); got != c.want {
			verb := map[bool]string{true: "allowed", false: "refused"}
			t.Errorf("%s on %s: %s, want %s", c.user, c.subject, verb[got], verb[c.want])
		}
	}
}

// No role reads another's replies: the publisher's subscriptions to the
// default inbox, to the others' inboxes or to everything are refused, and
// nothing of the worker's or the operator's answers reaches it.
func TestInboxesArePrivate(t *testing.T) {
	srv, _ := startServer(t)
	ctx := t.Context()
	pub := connectAs(t, srv, "publisher")
	w := connectAs(t, srv, "worker")
	op := connectAs(t, srv, "operator")
	createTopology(ctx, t, w)

	var (
		mu  sync.Mutex
		got []string
	)
	subjects := []string{"_INBOX.>", inboxOf["worker"] + ".>", inboxOf["operator"] + ".>", ">"}
	for _, s := range subjects {
		if _, err := pub.nc.Subscribe(s, func(m *nats.Msg) {
			mu.Lock()
			got = append(got, m.Subject)
			mu.Unlock()
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, s := range subjects {
		waitFor(t, 10*time.Second, "the publisher's subscription to "+s+" is refused", func() bool {
			return pub.refused.subscribeRefused(s)
		})
	}
	// Answers the others get: a fetched event, a stream's state.
	if _, err := pub.js.Publish(ctx, "revoke.urgent", []byte(`{"account_id":"a1","key_id":"k1"}`)); err != nil {
		t.Fatal(err)
	}
	cons, err := w.js.Consumer(ctx, "REVOCATIONS", config.Default().Durable("revoke.urgent"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second)); err != nil {
		t.Fatalf("the worker fetches the event: %v", err)
	}
	if _, err := op.js.Stream(ctx, "REVOCATIONS_DLQ"); err != nil {
		t.Fatalf("the operator looks the dead letters up: %v", err)
	}
	// A message sent after theirs on a subject the publisher may read
	// arrives after anything of theirs could have.
	if _, err := pub.js.Publish(ctx, "revoke.scheduled", []byte(`{"account_id":"a1","key_id":"k2"}`)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, s := range got {
		if !strings.HasPrefix(s, inboxOf["publisher"]+".") {
			t.Errorf("the publisher received %s", s)
		}
	}
}

// publishAs runs `revoker publish` as the shipped publisher.
func publishAs(ctx context.Context, bin string, srv *server.Server, args ...string) (stdout, stderr string, code int) {
	cmd := exec.CommandContext(ctx, bin, append([]string{"publish"}, args...)...)
	cmd.Env = environ("REVOKER_NATS_URL="+userURL(srv, "publisher", publisherPW),
		"REVOKER_NATS_INBOX_PREFIX="+inboxOf["publisher"])
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = cmd.ProcessState.ExitCode()
	if err != nil && code < 0 {
		code = -1
	}
	return o.String(), e.String(), code
}

// As the shipped publisher, `publish` never reports success it did not
// have: an id reused by another key exits non-zero, a retried publish of
// the same event still succeeds, and --wait on a dead-lettered event
// exits 1 with its outcome.
func TestPublishAsShippedPublisher(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the revoker binary")
	}
	srv, _ := startServer(t)
	bin := buildRevoker(t)
	api := cloudflaretest.NewServer(cloudflaretest.WithToken(apiToken))
	t.Cleanup(api.Close)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	stop := serveAsWorker(ctx, t, bin, srv, api.URL)
	defer stop()

	// The worker creates the stream: until then nobody answers.
	var out, errOut string
	code := -1
	waitFor(t, 30*time.Second, "the first publish of INC-1234", func() bool {
		out, errOut, code = publishAs(ctx, bin, srv, "--account", "acc1", "--key", "keyA", "--id", "INC-1234")
		return code == 0
	})
	// The same event again: a retried publish, proven its own.
	if out, errOut, code = publishAs(ctx, bin, srv, "--account", "acc1", "--key", "keyA", "--id", "INC-1234"); code != 0 {
		t.Fatalf("retried publish of the same event: exit %d\n%s%s", code, out, errOut)
	}
	// Another key under the same id: dropped as a duplicate, never
	// "published".
	out, errOut, code = publishAs(ctx, bin, srv, "--account", "acc1", "--key", "keyB", "--id", "INC-1234")
	if code == 0 || strings.Contains(out, "published") {
		t.Fatalf("publish of keyB under keyA's id: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if !strings.Contains(errOut, "NOT published") {
		t.Errorf("the refusal does not say keyB was not published:\n%s", errOut)
	}

	// A dead-lettered event: --wait hears its outcome and exits 1.
	api.Script("keyD", 400)
	out, errOut, code = publishAs(ctx, bin, srv, "--account", "acc1", "--key", "keyD", "--wait", "--timeout", "30s")
	if code != 1 || !strings.Contains(out, "dead_lettered") {
		t.Fatalf("publish --wait of a dead-lettered event: exit %d, want 1\nstdout: %s\nstderr: %s", code, out, errOut)
	}
}

// serveAsWorker runs `revoker serve` as the shipped worker until stop.
func serveAsWorker(ctx context.Context, t *testing.T, bin string, srv *server.Server, apiURL string) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	var outBuf syncBuffer
	serve := exec.CommandContext(ctx, bin, "serve")
	serve.Env = environ(
		"REVOKER_NATS_URL="+userURL(srv, "worker", workerPW),
		"REVOKER_NATS_INBOX_PREFIX="+inboxOf["worker"],
		"CLOUDFLARE_BASE_URL="+apiURL,
		"CLOUDFLARE_API_TOKEN="+apiToken,
		"REVOKER_HTTP_ADDR=127.0.0.1:0",
		"REVOKER_RATE_LIMIT=0",
		"REVOKER_IP_RATE_LIMIT=0",
		"REVOKER_RETRY_INITIAL=10ms", "REVOKER_RETRY_MAX_INTERVAL=50ms", "REVOKER_RETRY_MAX_ELAPSED=200ms",
		"REVOKER_MAX_DELIVER=2",
		"REVOKER_SHUTDOWN_TIMEOUT=2s",
	)
	serve.Stdout, serve.Stderr = &outBuf, &outBuf
	serve.Cancel = func() error { return serve.Process.Signal(os.Interrupt) }
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- serve.Wait() }()
	return func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("worker output:\n%s", outBuf.String())
		}
	}
}

// No role but the worker can have the server store anything among the
// records or the shared state by naming it as the reply subject of a
// request it may make: the answer (an acknowledgement, an API answer, a
// service reply) goes back into the role's own account, never onto the
// worker's subjects (SPEC §4, "The proof", point 8).
func TestRepliesNeverReachTheWorkersState(t *testing.T) {
	srv, _ := startServer(t)
	ctx := t.Context()
	w := connectAs(t, srv, "worker")
	createTopology(ctx, t, w)
	// A stand-in for the NATS service, answering as the worker does.
	if _, err := w.nc.Subscribe("revoker.status", func(m *nats.Msg) { _ = m.Respond([]byte(`{"state":"unknown"}`)) }); err != nil {
		t.Fatal(err)
	}
	if _, err := w.js.Publish(ctx, "revoke.dlq", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	targets := []struct{ stream, subject string }{
		{"KV_" + queue.LedgerBucket, "$KV." + queue.LedgerBucket + ".REVOCATIONS.1"},
		{"KV_" + queue.BudgetBucket, "$KV." + queue.BudgetBucket + ".default"},
		{"REVOCATION_OUTCOMES", "revoke.outcome.a1.k1"},
		{"REVOCATIONS_DLQ", "revoke.dlq"},
		{"REVOCATIONS", "revoke.urgent"},
	}
	lastSeq := func(stream string) uint64 {
		s, err := w.js.Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.LastSeq
	}
	before := map[string]uint64{}
	for _, target := range targets {
		before[target.stream] = lastSeq(target.stream)
	}

	const event = `{"account_id":"a1","key_id":"k1"}`
	requests := []struct{ user, subject, body string }{
		{"publisher", "revoke.urgent", event},
		{"publisher", "$JS.API.STREAM.MSG.GET.REVOCATIONS", `{"seq":1}`},
		{"publisher", "$JS.API.STREAM.INFO.REVOCATION_OUTCOMES", ``},
		{"operator", "revoke.scheduled", event},
		{"operator", "$JS.API.STREAM.MSG.GET.REVOCATIONS_DLQ", `{"seq":1}`},
		{"operator", "$KV.revoker_replays.probe", `{}`},
		{"service-client", "revoker.status", event},
	}
	events := uint64(0) // stored on the work subjects, by right
	roles := map[string]*role{}
	for _, r := range requests {
		if roles[r.user] == nil {
			roles[r.user] = connectAs(t, srv, r.user)
		}
		nc := roles[r.user].nc
		sent := 0
		for _, target := range targets {
			if target.stream == "REVOCATIONS" && r.user != "service-client" {
				// The publisher and the operator may put anything on the
				// work subjects themselves, the server's answers included.
				continue
			}
			if err := nc.PublishRequest(r.subject, target.subject, []byte(r.body)); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		// Answered on its own inbox after those: the server has sent
		// every answer to the requests above by now.
		if _, err := nc.Request(r.subject, []byte(r.body), 10*time.Second); err != nil {
			t.Fatalf("%s on %s: %v", r.user, r.subject, err)
		}
		if strings.HasPrefix(r.subject, "revoke.") {
			events += uint64(sent) + 1
		}
	}
	for _, target := range targets {
		// The worker's own write, stored after anything the answers
		// above could have put in the stream.
		marker := target.subject
		if target.stream == "REVOCATIONS" {
			marker = "revoke.scheduled"
		}
		if _, err := w.js.Publish(ctx, marker, []byte(event)); err != nil {
			t.Fatal(err)
		}
		want := before[target.stream] + 1
		if target.stream == "REVOCATIONS" {
			want += events
		}
		if got := lastSeq(target.stream); got != want {
			t.Errorf("%s stored %d messages, want %d: answers to other roles were stored there", target.stream, got, want)
		}
	}
}

// TestAckSubjectsAsRepliesRefused: the server does not give a reply
// subject under $JS.ACK. a subject of its own when a request crosses
// accounts, so an answer there could settle the worker's delivery. The
// server refuses such a request from any client, as a reserved reply, and
// the delivery stays the worker's. The shipped permissions rely on that.
func TestAckSubjectsAsRepliesRefused(t *testing.T) {
	srv, _ := startServer(t)
	ctx := t.Context()
	w := connectAs(t, srv, "worker")
	topo := createTopology(ctx, t, w)
	if _, err := w.nc.Subscribe("revoker.status", func(m *nats.Msg) { _ = m.Respond([]byte(`{"state":"unknown"}`)) }); err != nil {
		t.Fatal(err)
	}
	const event = `{"account_id":"a1","key_id":"k1"}`
	if _, err := w.js.Publish(ctx, "revoke.urgent", []byte(event)); err != nil {
		t.Fatal(err)
	}
	cons, err := w.js.Consumer(ctx, topo.Stream, topo.Durable("revoke.urgent")) // made with the streams
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	msg := <-batch.Messages()
	if msg == nil {
		t.Fatal("no delivery to hold")
	}
	ack := msg.Reply()
	if !strings.HasPrefix(ack, "$JS.ACK.") {
		t.Fatalf("delivery's reply subject %q", ack)
	}

	requests := []struct{ user, subject, body string }{
		{"publisher", "revoke.urgent", event},
		{"publisher", "$JS.API.STREAM.INFO.REVOCATION_OUTCOMES", ``},
		{"operator", "revoke.scheduled", event},
		{"operator", "$JS.API.STREAM.MSG.GET.REVOCATIONS_DLQ", `{"seq":1}`},
		{"service-client", "revoker.status", event},
	}
	for _, r := range requests {
		c := connectAs(t, srv, r.user)
		if err := c.nc.PublishRequest(r.subject, ack, []byte(r.body)); err != nil {
			t.Fatal(err)
		}
		// Answered on its own inbox after that one: whatever the server
		// did with the request above is done by now.
		if _, err := c.nc.Request(r.subject, []byte(r.body), 10*time.Second); err != nil {
			t.Fatalf("%s on %s: %v", r.user, r.subject, err)
		}
		// The client hears of a refusal on a goroutine of its own.
		queuetest.Eventually(t, 10*time.Second, r.user+"'s request on "+r.subject+" with the ack subject "+ack+" as its reply refused",
			func() bool { return c.refused.has(ack) })
		info, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.NumAckPending != 1 || info.AckFloor.Stream != 0 {
			t.Fatalf("after %s's request on %s with the delivery's ack subject as its reply: %d pending, ack floor %d; the delivery was settled by another role",
				r.user, r.subject, info.NumAckPending, info.AckFloor.Stream)
		}
	}
}
