package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/docs"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/ingress"
	"github.com/revoker/revoker/ingress/ingresstest"
	"github.com/revoker/revoker/queue/queuetest"
)

// The callers of TestIngressContract and their credentials.
const (
	ctSoarToken = "ct-soar-token-0123456789"
	ctLowToken  = "ct-low-token-abcdef"
	// ctOtherAccount is an account that low may not revoke in.
	ctOtherAccount = "e2eother"
)

var (
	ctPDSecret  = []byte("ct-pagerduty-raw-secret")
	ctStdSecret = []byte("ct-standard-webhooks-secret-32b!")
)

// ctCallersFile writes the callers file: soar (bearer, urgent, every
// account, a high rate), pagerduty (PagerDuty signatures, a raw secret),
// std (Standard Webhooks signatures, a whsec_ secret) and low (bearer, not
// urgent, one account, one request a second).
func ctCallersFile(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pd := write("pagerduty.secret", string(ctPDSecret)+"\n")
	std := write("std.secret", "whsec_"+base64.StdEncoding.EncodeToString(ctStdSecret)+"\n")
	hash := func(tok string) string { s := sha256.Sum256([]byte(tok)); return hex.EncodeToString(s[:]) }
	// Paths are written as double-quoted strings, which YAML reads as JSON
	// does.
	return write("callers.yaml", "callers:\n"+
		"  - name: soar\n"+
		"    token_sha256: "+hash(ctSoarToken)+"\n"+
		"    urgent: true\n"+
		"    accounts: [\"*\"]\n"+
		"    rate: 1000\n"+
		"  - name: pagerduty\n"+
		"    webhook_secret_file: "+strconv.Quote(pd)+"\n"+
		"    urgent: true\n"+
		"    accounts: ["+account+"]\n"+
		"    rate: 100\n"+
		"  - name: std\n"+
		"    webhook_secret_file: "+strconv.Quote(std)+"\n"+
		"    accounts: [\"*\"]\n"+
		"    rate: 100\n"+
		"  - name: low\n"+
		"    token_sha256: "+hash(ctLowToken)+"\n"+
		"    urgent: false\n"+
		"    accounts: ["+account+"]\n"+
		"    rate: 1\n")
}

// contract is the ingress of a running binary seen through
// docs/openapi.json: every answer read is validated against the document,
// and so is every request meant to be valid.
type contract struct {
	base   string
	router routers.Router
	client *http.Client
}

func newContract(t *testing.T, base string) *contract {
	t.Helper()
	return &contract{base: base, router: ingresstest.OpenAPIRouter(t), client: &http.Client{Timeout: time.Minute}}
}

// ctRequest is one request to the ingress.
type ctRequest struct {
	method, path string
	body         []byte
	header       http.Header
	// unchecked: the request breaks the document on purpose (a body over
	// its limit), so only the answer is validated.
	unchecked bool
}

// ctResp is one answer, its body read.
type ctResp struct {
	status int
	header http.Header
	body   []byte
}

func (r ctResp) String() string { return fmt.Sprintf("%d %s", r.status, bytes.TrimSpace(r.body)) }

// post is POST /v1/revocations with body and headers (name, value pairs).
func (c *contract) post(body string, hdr ...string) ctRequest {
	r := ctRequest{method: http.MethodPost, path: "/v1/revocations", body: []byte(body), header: http.Header{}}
	r.header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		r.header.Set(hdr[i], hdr[i+1])
	}
	return r
}

// get is GET path (as a Location names it: escaped) with headers.
func (c *contract) get(path string, hdr ...string) ctRequest {
	r := ctRequest{method: http.MethodGet, path: path, header: http.Header{}}
	for i := 0; i+1 < len(hdr); i += 2 {
		r.header.Set(hdr[i], hdr[i+1])
	}
	return r
}

// do sends r and validates request and answer against the document.
func (c *contract) do(t *testing.T, r ctRequest) ctResp {
	t.Helper()
	req, err := http.NewRequest(r.method, c.base+r.path, bytes.NewReader(r.body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = r.header.Clone()
	res, err := c.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", r.method, r.path, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the answer: %v", r.method, r.path, err)
	}
	c.validate(t, req.URL, r, res, body)
	return ctResp{status: res.StatusCode, header: res.Header, body: body}
}

// validate checks the request (unless unchecked) and the answer: the
// status is one the route lists, headers and body match their schemas.
func (c *contract) validate(t *testing.T, u *url.URL, r ctRequest, res *http.Response, body []byte) {
	t.Helper()
	// The route is found on the path alone: the document names no servers.
	probe, err := http.NewRequest(r.method, u.Path, bytes.NewReader(r.body))
	if err != nil {
		t.Fatal(err)
	}
	probe.URL.Path, probe.URL.RawPath = u.Path, u.RawPath
	probe.Header = r.header.Clone()
	route, params, err := c.router.FindRoute(probe)
	if err != nil {
		t.Fatalf("%s %s: no route in docs/openapi.json: %v", r.method, u.Path, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: probe, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: ctCredentialShape, MultiError: true}}
	if !r.unchecked {
		if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
			t.Errorf("%s %s: the request is not as docs/openapi.json says: %v", r.method, u.Path, err)
		}
	}
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in,
		Status:                 res.StatusCode,
		Header:                 res.Header,
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	out.SetBodyBytes(body)
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		t.Fatalf("%s %s answered %d, not as docs/openapi.json says: %v\nheaders: %v\nbody: %s",
			r.method, u.Path, res.StatusCode, err, res.Header, body)
	}
}

// ctCredentialShape checks that a request carries a credential of the
// form a security scheme of the document names. Whether it is a valid one
// is the ingress's to say; the answer tells.
func ctCredentialShape(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	h := in.RequestValidationInput.Request.Header
	s := in.SecurityScheme
	switch {
	case s.Type == "http" && strings.EqualFold(s.Scheme, "bearer"):
		if v := h.Get("Authorization"); len(v) > len("Bearer ") && strings.EqualFold(v[:len("Bearer ")], "Bearer ") {
			return nil
		}
		return errors.New("no Authorization: Bearer <token>")
	case s.Type == "apiKey" && s.In == "header":
		if h.Get(s.Name) != "" {
			return nil
		}
		return fmt.Errorf("no %s header", s.Name)
	}
	return fmt.Errorf("security scheme %s is not one this test knows", in.SecuritySchemeName)
}

// want fails unless the status is code and, for a problem, its type is
// that of kind (when given).
func (r ctResp) want(t *testing.T, code int, kind ...ingress.Kind) {
	t.Helper()
	if r.status != code {
		t.Fatalf("answered %v; want %d", r, code)
	}
	if len(kind) > 0 {
		if ct := r.header.Get("Content-Type"); ct != ingress.ProblemContentType {
			t.Fatalf("Content-Type %q; want %s", ct, ingress.ProblemContentType)
		}
		var p ingress.Problem
		if err := json.Unmarshal(r.body, &p); err != nil {
			t.Fatalf("not a problem: %v", r)
		}
		if p.Type != kind[0].Type() || p.Status != code {
			t.Fatalf("problem %s (status %d); want %s (%d)", p.Type, p.Status, kind[0].Type(), code)
		}
	}
}

// retryAfter fails unless the answer has a Retry-After of at least one
// second.
func (r ctResp) retryAfter(t *testing.T) int {
	t.Helper()
	n, err := strconv.Atoi(r.header.Get("Retry-After"))
	if err != nil || n < 1 {
		t.Fatalf("Retry-After %q; want a number of seconds, at least 1: %v", r.header.Get("Retry-After"), r)
	}
	return n
}

func (r ctResp) record(t *testing.T) event.Record {
	t.Helper()
	var rec event.Record
	if err := json.Unmarshal(r.body, &rec); err != nil {
		t.Fatalf("not a record: %v", r)
	}
	return rec
}

func (r ctResp) queued(t *testing.T) ingress.Queued {
	t.Helper()
	var q ingress.Queued
	if err := json.Unmarshal(r.body, &q); err != nil {
		t.Fatalf("not a queued state: %v", r)
	}
	return q
}

// revoked fails unless the answer is 200 with the revoked record of event
// id for key, confirmed by a call whose CF-Ray it names.
func (r ctResp) revoked(t *testing.T, id, key string) event.Record {
	t.Helper()
	r.want(t, http.StatusOK)
	rec := r.record(t)
	if rec.EventID != id || rec.AccountID != account || rec.KeyID != key || rec.Outcome != event.Revoked || rec.CFRay == "" || rec.Sequence == 0 {
		t.Fatalf("record %+v; want event %s of %s/%s revoked, with a CF-Ray and a sequence", rec, id, account, key)
	}
	return rec
}

// notRateLimited sends r until an answer is not 429: a caller with a rate
// of one a second gets a token back within the second.
func (c *contract) notRateLimited(t *testing.T, r ctRequest) ctResp {
	t.Helper()
	var a ctResp
	waitUntil(t, 10*time.Second, "an answer other than 429", func() bool {
		a = c.do(t, r)
		return a.status != http.StatusTooManyRequests
	})
	return a
}

// listening waits until the ingress serves its document, and checks that
// it is the repository's.
func (c *contract) listening(t *testing.T) {
	t.Helper()
	var a ctResp
	addr := strings.TrimPrefix(c.base, "http://")
	// A connection first, so that every HTTP answer read is validated.
	waitUntil(t, 30*time.Second, "the ingress listening at "+addr, func() bool {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		conn.Close()
		return true
	})
	a = c.do(t, c.get("/v1/openapi.json"))
	a.want(t, http.StatusOK)
	if !bytes.Equal(a.body, docs.OpenAPI) {
		t.Fatal("GET /v1/openapi.json is not docs/openapi.json")
	}
}

func ctBody(acct, key string, extra ...string) string {
	b := `{"account_id":"` + acct + `","key_id":"` + key + `","requested_by":"e2e-contract"`
	for _, e := range extra {
		b += "," + e
	}
	return b + "}"
}

func ctBearer(tok string) []string { return []string{"Authorization", "Bearer " + tok} }

func ctHeaders(parts ...[]string) []string {
	var out []string
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// ctLocation is the Location of event id.
func ctLocation(id string) string { return "/v1/revocations/" + url.PathEscape(id) }

// workLastSeq is the last sequence the work stream assigned, waiting for
// the stream to be readable (after a server restart, say).
func workLastSeq(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	var last uint64
	waitUntil(t, 30*time.Second, "the work stream readable", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, workStream)
		if err != nil {
			return false
		}
		info, err := s.Info(ctx)
		if err != nil {
			return false
		}
		last = info.State.LastSeq
		return true
	})
	return last
}

// ctDeletes is how many DELETEs the stand-in saw for key.
func ctDeletes(api *cloudflaretest.Server, key string) int {
	n := 0
	for _, q := range api.Requests() {
		if q.Method == http.MethodDelete && q.AccountID == account && q.KeyID == key {
			n++
		}
	}
	return n
}

// The HTTP ingress of the built binary answers SPEC §11's cases, each
// answer (status, headers, body) as docs/openapi.json describes it: bearer
// and PagerDuty-signed requests waiting for their record, a queued event
// read at its Location, idempotent repeats, every refusal with its status
// and problem type, and a 503 while NATS is down that stores nothing.
func TestIngressContract(t *testing.T) {
	skipShort(t)
	start := time.Now()
	srv := queuetest.Server(t)
	// The server is started again on the same store and port below.
	natsDir, natsPort := filepath.Dir(srv.StoreDir()), srv.Addr().(*net.TCPAddr).Port
	natsURL := srv.ClientURL()
	api := cloudflaretest.NewServer(cloudflaretest.WithToken(token))
	t.Cleanup(api.Close)
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	w := startWorker(t, "worker", natsURL, api,
		"REVOKER_STREAM_REPLICAS=1",
		"REVOKER_INGRESS_ADDR="+addr,
		"REVOKER_INGRESS_CALLERS_FILE="+ctCallersFile(t),
	)
	w.waitReady(60 * time.Second)
	c := newContract(t, "http://"+addr)
	c.listening(t)
	_, js := queuetest.ConnectURL(t, natsURL)
	soar := ctBearer(ctSoarToken)
	low := ctBearer(ctLowToken)

	// Run first, so the waits below do not include the worker's start.
	t.Run("queued then read at Location", func(t *testing.T) {
		const key = "ctqueued"
		id := "ingress:soar:ct-queued"
		a := c.do(t, c.post(ctBody(account, key), ctHeaders(soar, []string{ingress.HeaderIdempotencyKey, "ct-queued"})...))
		a.want(t, http.StatusAccepted)
		a.retryAfter(t)
		loc := a.header.Get("Location")
		if loc != ctLocation(id) {
			t.Fatalf("Location %q; want %q", loc, ctLocation(id))
		}
		q := a.queued(t)
		if q.EventID != id || q.State != ingress.StateQueued || q.AccountID != account || q.KeyID != key || q.Sequence == 0 {
			t.Fatalf("202 body %+v; want event %s queued with its sequence", q, id)
		}
		var got ctResp
		waitUntil(t, 60*time.Second, "GET "+loc+" answering the record", func() bool {
			got = c.do(t, c.get(loc, soar...))
			switch got.status {
			case http.StatusOK:
				return true
			case http.StatusAccepted:
				got.retryAfter(t)
				if qq := got.queued(t); qq.EventID != id || qq.Sequence != q.Sequence {
					t.Fatalf("GET %s while queued: %+v; want event %s at sequence %d", loc, qq, id, q.Sequence)
				}
				return false
			}
			t.Fatalf("GET %s: %v; want 202 until 200", loc, got)
			return false
		})
		if rec := got.revoked(t, id, key); rec.Sequence != q.Sequence {
			t.Fatalf("record of sequence %d; the 202 named %d", rec.Sequence, q.Sequence)
		}
	})

	t.Run("bearer waits for the record", func(t *testing.T) {
		const key = "ctbearer"
		a := c.do(t, c.post(ctBody(account, key),
			ctHeaders(soar, []string{ingress.HeaderIdempotencyKey, "ct-bearer", ingress.HeaderPrefer, "wait=5"})...))
		a.revoked(t, "ingress:soar:ct-bearer", key)
		if pa := a.header.Get(ingress.HeaderPreferenceApplied); pa != "wait=5" {
			t.Errorf("Preference-Applied %q; want wait=5", pa)
		}
		if !api.Deleted(account, key) {
			t.Error("the stand-in never deleted the key")
		}
	})

	t.Run("PagerDuty signature waits for the record", func(t *testing.T) {
		const key = "ctpagerduty"
		body := ctBody(account, key)
		a := c.do(t, c.post(body, ctHeaders(ingresstest.SignPagerDuty(ctPDSecret, body),
			[]string{ingress.HeaderIdempotencyKey, "ct-pd", ingress.HeaderPrefer, "wait=5"})...))
		a.revoked(t, "ingress:pagerduty:ct-pd", key)
		if !api.Deleted(account, key) {
			t.Error("the stand-in never deleted the key")
		}
	})

	// The control of the stale timestamp below: the same caller, the same
	// secret, a fresh timestamp, is taken (webhook-id as the key).
	t.Run("Standard Webhooks signature is taken", func(t *testing.T) {
		const key = "ctstd"
		body := ctBody(account, key)
		a := c.do(t, c.post(body, ctHeaders(ingresstest.SignStandard(ctStdSecret, "msg_ct_std", time.Now(), body),
			[]string{ingress.HeaderPrefer, "wait=5"})...))
		a.revoked(t, "ingress:std:msg_ct_std", key)
	})

	t.Run("Idempotency-Key repeats name one event", func(t *testing.T) {
		const key = "ctrepeat"
		id := "ingress:soar:ct-repeat"
		idem := []string{ingress.HeaderIdempotencyKey, "ct-repeat"}
		body := ctBody(account, key)
		first := c.do(t, c.post(body, ctHeaders(soar, idem)...))
		first.want(t, http.StatusAccepted)
		q := first.queued(t)
		if q.EventID != id || q.Sequence == 0 {
			t.Fatalf("first: %+v; want event %s with its sequence", q, id)
		}
		// A repeat answers what the event has earned by now: queued, or
		// its record.
		again := c.do(t, c.post(body, ctHeaders(soar, idem)...))
		switch again.status {
		case http.StatusAccepted:
			if qq := again.queued(t); qq.EventID != id || qq.Sequence != q.Sequence {
				t.Fatalf("repeat: %+v; want event %s at sequence %d", qq, id, q.Sequence)
			}
		case http.StatusOK:
			if rec := again.revoked(t, id, key); rec.Sequence != q.Sequence {
				t.Fatalf("repeat: record of sequence %d; want %d", rec.Sequence, q.Sequence)
			}
		default:
			t.Fatalf("repeat: %v; want 202 or 200", again)
		}
		waited := c.do(t, c.post(body, ctHeaders(soar, idem, []string{ingress.HeaderPrefer, "wait=5"})...))
		if rec := waited.revoked(t, id, key); rec.Sequence != q.Sequence {
			t.Fatalf("repeat with Prefer: record of sequence %d; want %d", rec.Sequence, q.Sequence)
		}
		c.do(t, c.post(ctBody(account, "ctrepeatother"), ctHeaders(soar, idem)...)).want(t, http.StatusUnprocessableEntity, ingress.KindKeyReused)
		if n := ctDeletes(api, key); n != 1 {
			t.Errorf("the stand-in saw %d DELETEs of %s; want 1: the repeats made no second event", n, key)
		}
		if n := ctDeletes(api, "ctrepeatother"); n != 0 {
			t.Errorf("the refused body was called for (%d DELETEs)", n)
		}
	})

	t.Run("bad signature is 401", func(t *testing.T) {
		body := ctBody(account, "ctbadsig")
		a := c.do(t, c.post(body, ctHeaders(ingresstest.SignPagerDuty([]byte("not-the-secret"), body),
			[]string{ingress.HeaderIdempotencyKey, "ct-badsig"})...))
		a.want(t, http.StatusUnauthorized, ingress.KindUnauthorized)
		if a.header.Get("WWW-Authenticate") == "" {
			t.Error("401 without WWW-Authenticate")
		}
	})

	t.Run("Standard Webhooks timestamp 10 minutes old is 401", func(t *testing.T) {
		body := ctBody(account, "ctstale")
		a := c.do(t, c.post(body, ingresstest.SignStandard(ctStdSecret, "msg_ct_stale", time.Now().Add(-10*time.Minute), body)...))
		a.want(t, http.StatusUnauthorized, ingress.KindUnauthorized)
	})

	t.Run("low may not publish urgent: 403", func(t *testing.T) {
		a := c.notRateLimited(t, c.post(ctBody(account, "ctlowurgent", `"urgent":true`),
			ctHeaders(low, []string{ingress.HeaderIdempotencyKey, "ct-low-urgent"})...))
		a.want(t, http.StatusForbidden, ingress.KindUrgentNotAllowed)
	})

	t.Run("low may not revoke in another account: 403", func(t *testing.T) {
		a := c.notRateLimited(t, c.post(ctBody(ctOtherAccount, "ctlowother"),
			ctHeaders(low, []string{ingress.HeaderIdempotencyKey, "ct-low-other"})...))
		a.want(t, http.StatusForbidden, ingress.KindAccountNotAllowed)
	})

	t.Run("65 KiB body is 413", func(t *testing.T) {
		head := `{"account_id":"` + account + `","key_id":"ctbig","reason":"`
		body := head + strings.Repeat("x", 65<<10-len(head)-2) + `"}`
		if len(body) != 65<<10 {
			t.Fatalf("body of %d bytes", len(body))
		}
		r := c.post(body, ctHeaders(soar, []string{ingress.HeaderIdempotencyKey, "ct-big"})...)
		r.unchecked = true // over the document's 64 KiB on purpose
		c.do(t, r).want(t, http.StatusRequestEntityTooLarge, ingress.KindTooLarge)
	})

	t.Run("low over its rate is 429", func(t *testing.T) {
		var second ctResp
		waitUntil(t, 30*time.Second, "two requests of low within one second", func() bool {
			sent := time.Now()
			first := c.do(t, c.post(ctBody(account, "ctlowurgent", `"urgent":true`),
				ctHeaders(low, []string{ingress.HeaderIdempotencyKey, "ct-low-urgent"})...))
			if first.status == http.StatusTooManyRequests {
				return false // the previous token is not back yet
			}
			first.want(t, http.StatusForbidden, ingress.KindUrgentNotAllowed)
			second = c.do(t, c.post(ctBody(account, "ctlowrate"),
				ctHeaders(low, []string{ingress.HeaderIdempotencyKey, "ct-low-rate"})...))
			if second.status == http.StatusTooManyRequests {
				return true
			}
			if time.Since(sent) < time.Second {
				t.Fatalf("the second request of low within %v of its first: %v; want 429", time.Since(sent), second)
			}
			return false // too slow to prove anything: again
		})
		second.want(t, http.StatusTooManyRequests, ingress.KindRateLimited)
		second.retryAfter(t)
	})

	t.Run("low cannot read soar's event: 404", func(t *testing.T) {
		loc := ctLocation("ingress:soar:ct-bearer")
		c.do(t, c.get(loc, soar...)).want(t, http.StatusOK)
		c.notRateLimited(t, c.get(loc, low...)).want(t, http.StatusNotFound, ingress.KindNotFound)
	})

	// Last: NATS goes away under the worker.
	t.Run("NATS down is 503 and stores nothing", func(t *testing.T) {
		const key, idem = "ctnatsdown", "ct-nats-down"
		id := "ingress:soar:" + idem
		req := c.post(ctBody(account, key), ctHeaders(soar, []string{ingress.HeaderIdempotencyKey, idem})...)
		before := workLastSeq(t, js)
		srv.Shutdown()
		srv.WaitForShutdown()
		waitUntil(t, 30*time.Second, "the worker not ready", func() bool { return !w.ready() })

		a := c.do(t, req)
		a.want(t, http.StatusServiceUnavailable, ingress.KindUnavailable)
		a.retryAfter(t)

		restarted := startNATS(t, natsDir, natsPort)
		t.Cleanup(func() {
			restarted.Shutdown()
			restarted.WaitForShutdown()
		})
		w.waitReady(60 * time.Second)
		if after := workLastSeq(t, js); after != before {
			t.Fatalf("the work stream's last sequence went from %d to %d while the only request answered 503", before, after)
		}
		var got ctResp
		waitUntil(t, 30*time.Second, "GET of the refused event answering", func() bool {
			got = c.do(t, c.get(ctLocation(id), soar...))
			return got.status != http.StatusServiceUnavailable
		})
		got.want(t, http.StatusNotFound, ingress.KindNotFound)
		if n := ctDeletes(api, key); n != 0 {
			t.Fatalf("the stand-in saw %d DELETEs of the refused event's key", n)
		}

		// Repeated as the 503 asks, the request is stored once, as a new
		// event: the refusal left no claim on its key.
		var again ctResp
		waitUntil(t, 30*time.Second, "the repeated request stored", func() bool {
			again = c.do(t, req)
			return again.status != http.StatusServiceUnavailable
		})
		again.want(t, http.StatusAccepted)
		if q := again.queued(t); q.EventID != id || q.Sequence != before+1 {
			t.Fatalf("repeat after the outage: %+v; want event %s at sequence %d", q, id, before+1)
		}
	})
	t.Logf("TestIngressContract took %v", time.Since(start).Round(time.Millisecond))
}
