package service_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/metrics"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
	"github.com/revoker/revoker/service"
	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/worker"

	"github.com/prometheus/client_golang/prometheus"
)

const testToken = "tok-service-test-0a1b2c"

// stack is one embedded JetStream, the API stand-in, a worker, and the
// service on the worker's connection; caller is a separate connection.
type stack struct {
	t      *testing.T
	srv    *server.Server
	js     jetstream.JetStream
	api    *cloudflaretest.Server
	cfg    config.Config
	svc    *service.Service
	waiter *queue.Waiter
	caller *nats.Conn
}

func newStack(t *testing.T, tune func(*config.Config), apiOpts ...cloudflaretest.Option) *stack {
	t.Helper()
	srv, nc, js := queuetest.JetStream(t)
	api := cloudflaretest.NewServer(append([]cloudflaretest.Option{cloudflaretest.WithToken(testToken)}, apiOpts...)...)
	t.Cleanup(api.Close)
	cfg := config.Default()
	cfg.NATSURL = srv.ClientURL()
	cfg.APIToken = testToken
	cfg.BaseURL = api.URL
	cfg.Concurrency = 4
	cfg.RateLimit = 0
	cfg.HTTPTimeout = 5 * time.Second
	cfg.RetryInitial = 10 * time.Millisecond
	cfg.RetryMaxInterval = 50 * time.Millisecond
	cfg.RetryMaxElapsed = 200 * time.Millisecond
	cfg.MaxDeliver = 3
	cfg.AckWait = 10 * time.Second
	cfg.ShutdownTimeout = 2 * time.Second
	if tune != nil {
		tune(&cfg)
	}
	s := &stack{t: t, srv: srv, js: js, api: api, cfg: cfg}
	s.startWorker(nc)

	client := queue.ClientOn(nc, js, cfg.Topology())
	waiter, err := queue.NewWaiter(client)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(waiter.Close)
	svc, err := service.Start(context.Background(), nc, service.Config{
		Client: client, Waiter: waiter, Subjects: cfg.Subjects, Version: "1.2.3",
		MaxWait: 10 * time.Second, Log: zaptest.NewLogger(t),
		Index: queue.NewEventIndex(js, cfg.Stream, 1, true, zaptest.NewLogger(t)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	s.svc, s.waiter = svc, waiter
	s.caller, _ = queuetest.Connect(t, srv)
	return s
}

// startWorker runs the worker (consumer + worker) on nc until the test
// ends; it creates the streams.
func (s *stack) startWorker(nc *nats.Conn) {
	t := s.t
	cf, err := cloudflare.New(cloudflare.Config{BaseURL: s.cfg.BaseURL, Credential: cloudflare.Token(testToken),
		Timeout: s.cfg.HTTPTimeout, UserAgent: "revoker/test"})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, metrics.Labels{Subjects: s.cfg.Subjects, Outcomes: event.Names(event.Outcomes),
		Reasons: event.Names(event.Reasons)}, metrics.Build{Version: "test"})
	ready := metrics.NewReadiness(reg, queue.ReadyConsumers)
	gate := throttle.New(throttle.Config{Priorities: len(s.cfg.Subjects), Concurrency: s.cfg.Concurrency})
	ledger := &queue.Ledger{}
	log := zap.NewNop()
	c := &queue.Consumer{JS: s.js, Cfg: s.cfg.Topology(), ShutdownTimeout: s.cfg.ShutdownTimeout, Gate: gate,
		Ledger: ledger, Metrics: m, Ready: ready, Log: log, FetchWait: 200 * time.Millisecond}
	w := worker.New(worker.Config{Subjects: s.cfg.Subjects, AllowedAccounts: s.cfg.AllowedAccounts,
		RetryInitial: s.cfg.RetryInitial, RetryMaxInterval: s.cfg.RetryMaxInterval, RetryMaxElapsed: s.cfg.RetryMaxElapsed,
		HandBackDelay: c.HandBackDelay(), Name: "test-host"},
		worker.Deps{API: cf, Gate: gate, Ledger: ledger, Metrics: m, Ready: ready, Log: log,
			Records: &queue.Records{JS: s.js, Log: log, Timeout: 5 * time.Second,
				DLQStream: s.cfg.DLQStream, DLQSubject: s.cfg.DLQSubject,
				OutcomeStream: s.cfg.OutcomeStream, OutcomePrefix: s.cfg.OutcomeSubject}})
	c.Handle = w.Handle
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
		gate.Close()
	})
	queuetest.Eventually(t, 20*time.Second, "consumers bound", func() bool { ok, _ := ready.Ready(); return ok })
}

// request sends body to subject with headers (name, value pairs).
func (s *stack) request(subject, body string, headers ...string) *nats.Msg {
	s.t.Helper()
	m := nats.NewMsg(subject)
	m.Data = []byte(body)
	for i := 0; i+1 < len(headers); i += 2 {
		m.Header.Set(headers[i], headers[i+1])
	}
	reply, err := s.caller.RequestMsg(m, 20*time.Second)
	if err != nil {
		s.t.Fatalf("request %s: %v", subject, err)
	}
	return reply
}

func serviceError(m *nats.Msg) string { return m.Header.Get(micro.ErrorCodeHeader) }

func decodeRecord(t *testing.T, m *nats.Msg) event.Record {
	t.Helper()
	if code := serviceError(m); code != "" {
		t.Fatalf("error %s: %s", code, m.Header.Get(micro.ErrorHeader))
	}
	var rec event.Record
	if err := json.Unmarshal(m.Data, &rec); err != nil {
		t.Fatalf("reply %q: %v", m.Data, err)
	}
	return rec
}

func decodeQueued(t *testing.T, m *nats.Msg) service.Queued {
	t.Helper()
	if code := serviceError(m); code != "" {
		t.Fatalf("error %s: %s", code, m.Header.Get(micro.ErrorHeader))
	}
	var q service.Queued
	if err := json.Unmarshal(m.Data, &q); err != nil {
		t.Fatalf("reply %q: %v", m.Data, err)
	}
	return q
}

func (s *stack) workMsgs() uint64 {
	s.t.Helper()
	st, err := s.js.Stream(context.Background(), s.cfg.Stream)
	if err != nil {
		s.t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		s.t.Fatal(err)
	}
	return info.State.LastSeq
}

func evJSON(account, key string) string {
	return `{"account_id":"` + account + `","key_id":"` + key + `","reason":"service test"}`
}

// A revoke with a wait answers the believed revoked record of the event,
// stored on the urgent subject, under the caller's id; status by key and
// by stream+sequence then show the same record.
func TestServiceRevokeWaitsForRevoked(t *testing.T) {
	s := newStack(t, nil)
	s.api.AddKey("acct1", "key1")
	reply := s.request(service.RevokeSubject, evJSON("acct1", "key1"),
		jetstream.MsgIDHeader, "incident-42", service.HeaderUrgent, "true", service.HeaderWait, "15s")
	rec := decodeRecord(t, reply)
	if rec.Outcome != event.Revoked || rec.AccountID != "acct1" || rec.KeyID != "key1" || rec.EventID != "incident-42" {
		t.Fatalf("record %+v, want revoked acct1/key1 incident-42", rec)
	}
	if rec.Subject != s.cfg.Subjects[0] || rec.Stream != s.cfg.Stream || rec.Sequence == 0 {
		t.Fatalf("record %+v, want the urgent subject %s of %s", rec, s.cfg.Subjects[0], s.cfg.Stream)
	}
	if !s.api.Deleted("acct1", "key1") {
		t.Fatal("the key was not deleted")
	}

	// A later invalid event filed under the key (anyone who may publish
	// can add one) says nothing of it: the key's status stays revoked.
	invalid := queue.OutcomeMsg(s.cfg.OutcomeSubject, event.Record{EventID: "bad-1", AccountID: "acct1", KeyID: "key1",
		Outcome: event.DeadLettered, Reason: event.InvalidEvent, Stream: s.cfg.Stream, Sequence: rec.Sequence + 1})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.js.PublishMsg(ctx, invalid); err != nil {
		t.Fatal(err)
	}
	byKey := decodeRecord(t, s.request(service.StatusSubject, `{"account_id":"acct1","key_id":"key1"}`))
	if byKey.Outcome != event.Revoked || byKey.Sequence != rec.Sequence {
		t.Fatalf("status by key %+v, want %+v", byKey, rec)
	}
	bySeq := decodeRecord(t, s.request(service.StatusSubject,
		`{"stream":"`+rec.Stream+`","sequence":`+jsonUint(rec.Sequence)+`,"account_id":"acct1","key_id":"key1"}`))
	if bySeq.Outcome != event.Revoked || bySeq.Sequence != rec.Sequence {
		t.Fatalf("status by sequence %+v, want %+v", bySeq, rec)
	}
	// The event is done and gone from the work stream: without its key,
	// its sequence alone finds nothing to read the record from.
	gone := s.request(service.StatusSubject, `{"stream":"`+rec.Stream+`","sequence":`+jsonUint(rec.Sequence)+`}`)
	if code := serviceError(gone); code != "404" {
		t.Fatalf("status of a done event without its key: code %q, want 404", code)
	}
	// An id alone names the event this service stored under it (SPEC §12);
	// an id it stored nothing under is 404.
	byID := decodeRecord(t, s.request(service.StatusSubject, `{"event_id":"incident-42"}`))
	if byID.Outcome != event.Revoked || byID.Sequence != rec.Sequence || byID.EventID != "incident-42" {
		t.Fatalf("status by id alone %+v, want %+v", byID, rec)
	}
	if code := serviceError(s.request(service.StatusSubject, `{"event_id":"never-stored"}`)); code != "404" {
		t.Fatalf("status by an unknown id: code %q, want 404", code)
	}
	// Unknown key: 404.
	if code := serviceError(s.request(service.StatusSubject, `{"account_id":"acct1","key_id":"nokey"}`)); code != "404" {
		t.Fatalf("status of an unknown key: code %q, want 404", code)
	}
}

func jsonUint(n uint64) string { b, _ := json.Marshal(n); return string(b) }

// The caller's trace context, in any letter case, goes on in the event:
// the record and the queued reply carry its trace id (SPEC §13).
func TestServiceRevokeContinuesTheCallersTrace(t *testing.T) {
	s := newStack(t, nil)
	s.api.AddKey("acct1", "tracekey1")
	const trace = "4bf92f3577b34da6a3ce929d0e0e4736"
	rec := decodeRecord(t, s.request(service.RevokeSubject, evJSON("acct1", "tracekey1"),
		"TraceParent", "00-"+trace+"-00f067aa0ba902b7-01", service.HeaderWait, "15s"))
	if rec.Outcome != event.Revoked || rec.TraceID != trace {
		t.Fatalf("record %+v, want revoked in the caller's trace %s", rec, trace)
	}
	const other = "0af7651916cd43dd8448eb211c80319c"
	q := decodeQueued(t, s.request(service.RevokeSubject, evJSON("acct1", "tracekey2"),
		"traceparent", "00-"+other+"-b7ad6b7169203331-01"))
	if q.TraceID != other {
		t.Fatalf("queued reply %+v, want trace id %s", q, other)
	}
}

// The request's headers count in any letter case, as its trace context
// does: an incident tool that sends revoker-urgent in lower case must not
// have its revocation wait behind the scheduled backlog.
func TestServiceHeadersInAnyLetterCase(t *testing.T) {
	s := newStack(t, nil)
	s.api.AddKey("acct1", "casekey1")
	rec := decodeRecord(t, s.request(service.RevokeSubject, evJSON("acct1", "casekey1"),
		"nats-msg-id", "incident-lc", "revoker-urgent", "true", "REVOKER-WAIT", "15s"))
	if rec.Outcome != event.Revoked || rec.EventID != "incident-lc" || rec.Subject != s.cfg.Subjects[0] {
		t.Fatalf("record %+v, want revoked incident-lc on the urgent subject %s", rec, s.cfg.Subjects[0])
	}
	reply := s.request(service.RevokeSubject, evJSON("acct1", "casekey2"), "revoker-urgent", "maybe")
	if code := serviceError(reply); code != "400" {
		t.Fatalf("a bad revoker-urgent: code %q, want 400", code)
	}
}

// An invalid event, or a bad header, is refused with 400 in the service
// headers and nothing is stored.
func TestServiceRefusesInvalidRequests(t *testing.T) {
	s := newStack(t, nil)
	for name, tc := range map[string]struct {
		body    string
		headers []string
	}{
		"not json":         {body: `{not json`},
		"bad account":      {body: evJSON("acct/../x", "key1")},
		"missing key":      {body: `{"account_id":"acct1"}`},
		"bad wait":         {body: evJSON("acct1", "key1"), headers: []string{service.HeaderWait, "soon"}},
		"negative wait":    {body: evJSON("acct1", "key1"), headers: []string{service.HeaderWait, "-1s"}},
		"bad urgent":       {body: evJSON("acct1", "key1"), headers: []string{service.HeaderUrgent, "very"}},
		"control chars id": {body: evJSON("acct1", "key1"), headers: []string{jetstream.MsgIDHeader, "a\x01b"}},
	} {
		reply := s.request(service.RevokeSubject, tc.body, tc.headers...)
		if code := serviceError(reply); code != "400" {
			t.Errorf("%s: code %q (%s), want 400", name, code, reply.Header.Get(micro.ErrorHeader))
		}
		if reply.Header.Get(micro.ErrorHeader) == "" {
			t.Errorf("%s: no error description", name)
		}
	}
	if n := s.workMsgs(); n != 0 {
		t.Fatalf("the work stream stored %d events, want none", n)
	}
}

// A wait that ends before the outcome answers the queued state, with the
// event's place; status by sequence says queued while the event is in the
// work stream, and the record once it is done.
func TestServiceWaitExceededIsQueued(t *testing.T) {
	s := newStack(t, nil, cloudflaretest.WithLatency(2*time.Second))
	s.api.AddKey("acct1", "slow1")
	q := decodeQueued(t, s.request(service.RevokeSubject, evJSON("acct1", "slow1"), service.HeaderWait, "100ms"))
	if q.State != service.StateQueued || q.Stream != s.cfg.Stream || q.Sequence == 0 || q.EventID == "" ||
		q.AccountID != "acct1" || q.KeyID != "slow1" {
		t.Fatalf("reply %+v, want the queued state of the stored event", q)
	}
	status := s.request(service.StatusSubject, `{"stream":"`+q.Stream+`","sequence":`+jsonUint(q.Sequence)+`}`)
	if st := decodeQueued(t, status); st.State != service.StateQueued || st.KeyID != "slow1" {
		t.Fatalf("status %+v, want queued", st)
	}
	// The queued reply, sent back as it is, asks for the event's outcome.
	body, _ := json.Marshal(q)
	queuetest.Eventually(t, 20*time.Second, "the revoked record", func() bool {
		r := s.request(service.StatusSubject, string(body))
		var rec event.Record
		return serviceError(r) == "" && json.Unmarshal(r.Data, &rec) == nil && rec.Outcome == event.Revoked && rec.Sequence == q.Sequence
	})
	// Without a wait, the answer is queued at once; the default subject is
	// the lowest priority.
	q2 := decodeQueued(t, s.request(service.RevokeSubject, evJSON("acct1", "slow2")))
	if q2.State != service.StateQueued {
		t.Fatalf("reply %+v, want queued", q2)
	}
	st, err := s.js.Stream(context.Background(), s.cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := st.GetMsg(context.Background(), q2.Sequence); err == nil && m.Subject != s.cfg.Subjects[len(s.cfg.Subjects)-1] {
		t.Fatalf("stored on %s, want the lowest priority subject", m.Subject)
	}
}

// A dead-lettered event answers its dead_lettered record.
func TestServiceDeadLettered(t *testing.T) {
	s := newStack(t, func(c *config.Config) { c.AllowedAccounts = []string{"allowed"} })
	rec := decodeRecord(t, s.request(service.RevokeSubject, evJSON("other", "key9"), service.HeaderWait, "15s"))
	if rec.Outcome != event.DeadLettered || rec.Reason != event.AccountNotAllowed || rec.KeyID != "key9" {
		t.Fatalf("record %+v, want dead_lettered account_not_allowed", rec)
	}
	byKey := decodeRecord(t, s.request(service.StatusSubject, `{"account_id":"other","key_id":"key9"}`))
	if byKey.Outcome != event.DeadLettered {
		t.Fatalf("status %+v, want dead_lettered", byKey)
	}
}

// An id already used by another key's event (planted by anyone who may
// publish events, say) does not drop the request: it is stored under an id
// of its own, which the answer names.
func TestServiceIDTakenStoresUnderAnIDOfItsOwn(t *testing.T) {
	s := newStack(t, nil, cloudflaretest.WithLatency(2*time.Second))
	decodeQueued(t, s.request(service.RevokeSubject, evJSON("acct1", "first"), jetstream.MsgIDHeader, "same-id"))
	reply := s.request(service.RevokeSubject, evJSON("acct1", "second"), jetstream.MsgIDHeader, "same-id")
	if code := serviceError(reply); code != "" {
		t.Fatalf("refused %s (%s): the first event's id dropped the second's revocation", code, reply.Header.Get(micro.ErrorHeader))
	}
	q := decodeQueued(t, reply)
	if !strings.HasPrefix(q.EventID, "same-id:") || len(q.EventID) <= len("same-id:") || q.KeyID != "second" {
		t.Fatalf("answered %+v; want the second key's event, under same-id:<an id of its own>", q)
	}
	if n := s.workMsgs(); n != 2 {
		t.Fatalf("work stream holds %d events, want 2", n)
	}
}

// The service is found by micro's discovery, under its name and version,
// with both endpoints in the shared queue group.
func TestServiceDiscoverable(t *testing.T) {
	s := newStack(t, nil)
	reply := s.request("$SRV.INFO."+service.Name, "")
	var info micro.Info
	if err := json.Unmarshal(reply.Data, &info); err != nil {
		t.Fatal(err)
	}
	if info.Name != service.Name || info.Version != "1.2.3" || len(info.Endpoints) != 2 {
		t.Fatalf("info %+v", info)
	}
	for _, e := range info.Endpoints {
		if e.QueueGroup != service.QueueGroup || (e.Subject != service.RevokeSubject && e.Subject != service.StatusSubject) {
			t.Fatalf("endpoint %+v", e)
		}
	}
}

// A request whose reply subject is not a caller's inbox is not answered:
// the worker's permissions must not write a reply onto a record, event or
// shared-state subject. Nothing is stored for it either.
func TestServiceDropsRepliesOutsideInboxes(t *testing.T) {
	s := newStack(t, nil)
	planted, err := s.caller.SubscribeSync("revoke.outcome.acct1.keyX")
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(service.StatusSubject)
	m.Reply = "revoke.outcome.acct1.keyX"
	m.Data = []byte(`{"account_id":"acct1","key_id":"keyX"}`)
	if err := s.caller.PublishMsg(m); err != nil {
		t.Fatal(err)
	}
	// A request answered after it shows the first was handled (one
	// endpoint handles its requests in order).
	if code := serviceError(s.request(service.StatusSubject, `{"account_id":"acct1","key_id":"keyX"}`)); code != "404" {
		t.Fatalf("code %q, want 404", code)
	}
	if got, err := planted.NextMsg(200 * time.Millisecond); err == nil {
		t.Fatalf("the service answered onto %s: %q", got.Subject, got.Data)
	}
	for reply, want := range map[string]bool{
		"_INBOX.abc.1": true, "_INBOX_service.x.y": true, "_INBOX_worker.x": false,
		"revoke.urgent": false, "_INBOX": false, "_INBOX.>": false, "$KV.revoker_budget.x": false,
		"_R_.aB3.x9Q": true, "_R_": false, "_R_.>": false, "_R_x.y": false,
	} {
		if got := service.ReplyAllowed(reply, "_INBOX_worker"); got != want {
			t.Errorf("ReplyAllowed(%q) = %v, want %v", reply, got, want)
		}
	}
}

// Stop ends the waits in progress: each answers its event's queued state
// at once (the event is stored), not when its wait would have ended.
func TestServiceStopAnswersQueued(t *testing.T) {
	s := newStack(t, nil, cloudflaretest.WithLatency(5*time.Second))
	s.api.AddKey("acct1", "stopkey")
	m := nats.NewMsg(service.RevokeSubject)
	m.Data = []byte(evJSON("acct1", "stopkey"))
	m.Header.Set(service.HeaderWait, "10s")
	type answer struct {
		m   *nats.Msg
		err error
	}
	got := make(chan answer, 1)
	go func() {
		r, err := s.caller.RequestMsg(m, 20*time.Second)
		got <- answer{r, err}
	}()
	queuetest.Eventually(t, 10*time.Second, "the request waits", func() bool { return s.waiter.Waiting() == 1 })
	start := time.Now()
	if err := s.svc.Stop(); err != nil {
		t.Fatal(err)
	}
	a := <-got
	if a.err != nil {
		t.Fatal(a.err)
	}
	if q := decodeQueued(t, a.m); q.State != service.StateQueued || q.KeyID != "stopkey" {
		t.Fatalf("reply %+v, want queued", q)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("answered %v after Stop, want at once", d)
	}
}

// An index that cannot take events (its bucket missing, creating nothing)
// fails no revoke, and is logged once, not once per request.
func TestServiceIndexFailureLoggedOnce(t *testing.T) {
	srv, nc, js := queuetest.JetStream(t)
	cfg := config.Default()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, js, cfg.Topology(), zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.WarnLevel)
	svc, err := service.Start(context.Background(), nc, service.Config{
		Client: queue.ClientOn(nc, js, cfg.Topology()), Subjects: cfg.Subjects, Version: "1.2.3", Log: zap.New(core),
		Index: queue.NewEventIndex(js, cfg.Stream, 1, false, zap.NewNop()),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = svc.Stop() }()
	caller, _ := queuetest.Connect(t, srv)
	for i := range 3 {
		reply, err := caller.Request(service.RevokeSubject, []byte(evJSON("acct1", fmt.Sprintf("idx%d", i))), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if code := serviceError(reply); code != "" {
			t.Fatalf("revoke %d: error %s", i, code)
		}
	}
	if n := logs.FilterMessageSnippet("event index").Len(); n != 1 {
		t.Fatalf("%d warnings about the event index for three requests, want 1", n)
	}
}

// A CloudEvent waiting in the work stream (SPEC §14) is an event like any
// other: revoker.status by its stream and sequence must say it is queued,
// as it does for a plain event, not 404; its Content-Type read in any
// letter case, as the worker reads it.
func TestStatusBySequenceOfAQueuedCloudEvent(t *testing.T) {
	for _, name := range []string{"Content-Type", "content-type"} {
		t.Run(name, func(t *testing.T) { statusOfAQueuedCloudEvent(t, name) })
	}
}

func statusOfAQueuedCloudEvent(t *testing.T, contentType string) {
	s := newStack(t, nil, cloudflaretest.WithLatency(3*time.Second))
	s.api.AddKey("acct1", "cekey1")
	m := nats.NewMsg(s.cfg.Subjects[0])
	m.Header[contentType] = []string{event.CloudEventsContentType}
	m.Data = []byte(`{"specversion":"1.0","id":"ce-1","source":"/soar","type":"com.example.revoke",` +
		`"data":{"account_id":"acct1","key_id":"cekey1"}}`)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := s.js.PublishMsg(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	reply := s.request(service.StatusSubject, `{"stream":"`+ack.Stream+`","sequence":`+jsonUint(ack.Sequence)+`}`)
	st, err := s.js.Stream(ctx, ack.Stream)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetMsg(ctx, ack.Sequence); err != nil {
		t.Fatalf("the CloudEvent is no longer in the work stream: %v", err)
	}
	if code := serviceError(reply); code != "" {
		t.Fatalf("status of the queued CloudEvent (still in the work stream) at %s/%d: error %s (%s), want queued", ack.Stream, ack.Sequence,
			code, reply.Header.Get(micro.ErrorHeader))
	}
	if q := decodeQueued(t, reply); q.State != service.StateQueued || q.KeyID != "cekey1" {
		t.Fatalf("status %+v, want queued for acct1/cekey1", q)
	}
}

// A retried request (same Nats-Msg-Id, same event) for an event already
// refused (dead-lettered) is answered its record, not "queued" ("a stored
// event with no outcome record yet").
func TestRetryOfAFinishedEventAnswersItsRecord(t *testing.T) {
	s := newStack(t, func(c *config.Config) { c.AllowedAccounts = []string{"allowed"} })
	rec := decodeRecord(t, s.request(service.RevokeSubject, evJSON("other", "key9"),
		jetstream.MsgIDHeader, "retry-1", service.HeaderWait, "15s"))
	if rec.Outcome != event.DeadLettered {
		t.Fatalf("first: %+v, want dead_lettered", rec)
	}
	reply := s.request(service.RevokeSubject, evJSON("other", "key9"), jetstream.MsgIDHeader, "retry-1")
	if code := serviceError(reply); code != "" {
		t.Fatalf("retry: error %s (%s)", code, reply.Header.Get(micro.ErrorHeader))
	}
	t.Logf("retry reply: %s", reply.Data)
	if again := decodeRecord(t, reply); again.Outcome != event.DeadLettered || again.EventID != "retry-1" {
		t.Fatalf("retry of an event already dead-lettered (%s) answered %s: want its record", rec.Reason, reply.Data)
	}
}
