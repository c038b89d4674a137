package ingress

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/ingress/ingresstest"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// Test callers' credentials.
const (
	tToken     = "soar-token-0123456789"
	tLowToken  = "low-token-abcdef"
	tSlowToken = "slow-token-zzz"
	tAccount   = "023e105f4ecef8ad9ca31a8372d0c353"
	tOther     = "9a7806061c88ada191ed06f989cc3dac"
)

var (
	tStdSecret = []byte("standard-webhooks-secret-bytes!!")
	tPDSecret  = []byte("pagerduty-raw-secret")
)

func sha(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }

// tCallers: soar (bearer, urgent, any account), low (bearer, one
// account, not urgent), slow (bearer, a rate that allows one request),
// std (Standard Webhooks), pd (PagerDuty).
func tCallers() *Callers {
	return &Callers{List: []*Caller{
		{Name: "soar", tokenHash: sha(tToken), Urgent: true, AnyAccount: true, Rate: 0},
		{Name: "low", tokenHash: sha(tLowToken), Accounts: map[string]bool{tAccount: true}, Rate: 0},
		{Name: "slow", tokenHash: sha(tSlowToken), AnyAccount: true, Rate: 0.001},
		{Name: "std", secret: tStdSecret, Urgent: true, AnyAccount: true, Rate: 0},
		{Name: "pd", secret: tPDSecret, Accounts: map[string]bool{tAccount: true}, Rate: 0},
	}}
}

// harness is one embedded JetStream server, the streams, and an ingress
// on a loopback port; every response it sees is validated against
// docs/openapi.json.
type harness struct {
	t      *testing.T
	ns     *server.Server
	nc     *nats.Conn
	js     jetstream.JetStream
	topo   config.Topology
	client *queue.Client
	waiter *queue.Waiter
	s      *Server
	reg    *prometheus.Registry
	logs   *observer.ObservedLogs
	base   string
	router routers.Router
	// storeDir is the server's store, for a restart on it.
	storeDir string
}

// startNATS runs a JetStream server on port (0: any) storing in dir, shut
// down when the test ends.
func startNATS(t *testing.T, port int, dir string) *server.Server {
	t.Helper()
	if port == 0 {
		port = -1
	}
	ns, err := queue.StartServer(&server.Options{Host: "127.0.0.1", Port: port, StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return ns
}

func tTopology() config.Topology {
	cfg := config.Default()
	cfg.Concurrency = 2
	return cfg.Topology()
}

func newHarness(t *testing.T, tweak ...func(*Config)) *harness {
	t.Helper()
	dir := t.TempDir()
	ns := startNATS(t, 0, dir)
	nc, js := queuetest.Connect(t, ns)
	h := &harness{t: t, ns: ns, nc: nc, js: js, topo: tTopology(), storeDir: dir}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, js, h.topo, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	h.client = queue.ClientOn(nc, js, h.topo)
	w, err := queue.NewWaiter(h.client)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	h.waiter = w
	core, logs := observer.New(zapcore.DebugLevel)
	h.logs = logs
	h.reg = prometheus.NewRegistry()
	cfg := Config{
		Addr: "127.0.0.1:0", Callers: tCallers(), MaxWait: 10 * time.Second, MaxWaiting: 8,
		Client: h.client, Waiter: w, Subjects: h.topo.Subjects, Replicas: 1, Create: true,
		Log: zap.New(core), Registerer: h.reg,
	}
	for _, f := range tweak {
		f(&cfg)
	}
	s, err := Start(context.Background(), js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	h.s, h.base = s, "http://"+s.Addr()
	h.router = ingresstest.OpenAPIRouter(t)
	return h
}

// resp is one answer, its body read.
type resp struct {
	*http.Response
	body []byte
}

func (r resp) problem(t *testing.T) Problem {
	t.Helper()
	var p Problem
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatalf("not a problem: %s", r.body)
	}
	return p
}

func (r resp) record(t *testing.T) event.Record {
	t.Helper()
	var rec event.Record
	if err := json.Unmarshal(r.body, &rec); err != nil {
		t.Fatalf("not a record: %s", r.body)
	}
	return rec
}

func (r resp) queued(t *testing.T) Queued {
	t.Helper()
	var q Queued
	if err := json.Unmarshal(r.body, &q); err != nil {
		t.Fatalf("not a queued state: %s", r.body)
	}
	return q
}

// want fails unless the status is code (and, for a problem, its type is
// that of kind, when given).
func (r resp) want(t *testing.T, code int, kind ...Kind) {
	t.Helper()
	if r.StatusCode != code {
		t.Fatalf("status %d, want %d: %s", r.StatusCode, code, r.body)
	}
	if len(kind) > 0 && r.problem(t).Type != kind[0].Type() {
		t.Fatalf("problem %s, want %s", r.problem(t).Type, kind[0].Type())
	}
}

// do sends req and validates the answer against the OpenAPI document.
func (h *harness) do(req *http.Request) resp {
	h.t.Helper()
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	validate(h.t, h.router, req, res, body)
	return resp{res, body}
}

// validate checks an answer against the document: its status is one the
// route lists, its headers and body match the schemas.
func validate(t testing.TB, router routers.Router, req *http.Request, res *http.Response, body []byte) {
	t.Helper()
	// The route is found on the path alone; the document has no servers.
	probe, _ := http.NewRequest(req.Method, req.URL.Path, nil)
	probe.URL.Path, probe.URL.RawPath = req.URL.Path, req.URL.RawPath
	route, params, err := router.FindRoute(probe)
	if err != nil {
		if res.StatusCode == http.StatusNotFound || res.StatusCode == http.StatusMethodNotAllowed {
			if res.Header.Get("Content-Type") != ProblemContentType {
				t.Errorf("%s %s: %d is not a problem", req.Method, req.URL.Path, res.StatusCode)
			}
			return
		}
		t.Fatalf("%s %s: no route in docs/openapi.json: %v", req.Method, req.URL.Path, err)
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: probe, PathParams: params, Route: route},
		Status:                 res.StatusCode,
		Header:                 res.Header,
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	in.SetBodyBytes(body)
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		t.Fatalf("%s %s answered %d, not as docs/openapi.json says: %v\nbody: %s", req.Method, req.URL.Path, res.StatusCode, err, body)
	}
}

// post builds POST /v1/revocations with body and headers (name, value
// pairs).
func (h *harness) post(body string, hdr ...string) *http.Request {
	h.t.Helper()
	req, err := http.NewRequest(http.MethodPost, h.base+"/v1/revocations", strings.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i+1] == "" {
			req.Header.Del(hdr[i])
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	return req
}

func (h *harness) get(path string, hdr ...string) *http.Request {
	h.t.Helper()
	req, err := http.NewRequest(http.MethodGet, h.base+path, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	return req
}

func bearer(tok string) []string { return []string{"Authorization", "Bearer " + tok} }

func hdrs(parts ...[]string) []string {
	var out []string
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func evBody(account, key string, extra ...string) string {
	b := `{"account_id":"` + account + `","key_id":"` + key + `"`
	for _, e := range extra {
		b += "," + e
	}
	return b + "}"
}

// msgs is how many events the work stream holds.
func (h *harness) msgs() uint64 {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := h.js.Stream(ctx, h.topo.Stream)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	return info.State.Msgs
}

// startWorker runs a stand-in worker: it takes the events of every lane
// and writes each one's revoked record with queue.Records, as the worker
// does (published_at from the delivery, the record before the ack).
func (h *harness) startWorker() {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	h.t.Cleanup(func() { cancel(); wg.Wait() })
	recs := &queue.Records{JS: h.js, Log: zap.NewNop(), Timeout: 5 * time.Second,
		DLQStream: h.topo.DLQStream, DLQSubject: h.topo.DLQSubject,
		OutcomeStream: h.topo.OutcomeStream, OutcomePrefix: h.topo.OutcomePrefix}
	for _, subj := range h.topo.Subjects {
		cons, err := h.js.Consumer(ctx, h.topo.Stream, h.topo.Durable(subj))
		if err != nil {
			h.t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				batch, err := cons.Fetch(4, jetstream.FetchMaxWait(100*time.Millisecond))
				if err != nil {
					continue
				}
				for m := range batch.Messages() {
					meta, err := m.Metadata()
					ev, derr := event.Decode(m.Data())
					if err != nil || derr != nil {
						_ = m.Term()
						continue
					}
					rec := event.Record{
						EventID: m.Headers().Get(jetstream.MsgIDHeader), AccountID: ev.AccountID, KeyID: ev.KeyID,
						Outcome: event.Revoked, Status: 200, CFRay: "8f00" + ev.KeyID + "-AMS", Attempts: 1,
						Subject: m.Subject(), Sequence: meta.Sequence.Stream, Stream: meta.Stream,
						PublishedAt: meta.Timestamp.UTC().Format(time.RFC3339Nano),
						CompletedAt: time.Now().UTC().Format(time.RFC3339Nano), Worker: "test",
					}
					if _, err := recs.Outcome(ctx, rec); err != nil {
						_ = m.Nak()
						continue
					}
					_ = m.Ack()
				}
			}
		}()
	}
}

// counter is the value of revoker_ingress_requests_total for the labels.
func (h *harness) counter(route, code, caller string) float64 {
	h.t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "revoker_ingress_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			if got["route"] == route && got["code"] == code && got["caller"] == caller {
				return m.GetCounter().GetValue()
			}
		}
	}
	return -1
}

// logged is every logged message and field value, for secrecy checks.
func (h *harness) logged() string {
	var b bytes.Buffer
	for _, e := range h.logs.All() {
		b.WriteString(e.Message)
		for k, v := range e.ContextMap() {
			b.WriteString(" " + k + "=")
			b.WriteString(toString(v))
		}
		b.WriteString("\n")
	}
	return b.String()
}

func toString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
