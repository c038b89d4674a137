package ingress

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/docs"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/ingress/ingresstest"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// A bearer caller asking to wait gets the revoked record, with its CF-Ray,
// read from the audit trail.
func TestIngressBearerWaitAnswersRecord(t *testing.T) {
	h := newHarness(t)
	h.startWorker()
	// The harness's longest wait: a worker just started on a loaded machine
	// took over 5s; the answer comes as soon as the record is stored.
	r := h.do(h.post(evBody(tAccount, "key1", `"reason":"leaked"`), hdrs(bearer(tToken), []string{"Prefer", "wait=10"})...))
	r.want(t, http.StatusOK)
	rec := r.record(t)
	if rec.Outcome != event.Revoked || rec.KeyID != "key1" || rec.CFRay == "" || rec.Sequence == 0 {
		t.Fatalf("record %+v", rec)
	}
	if got := r.Header.Get(HeaderPreferenceApplied); got != "wait=10" {
		t.Fatalf("Preference-Applied %q", got)
	}
	if r.Header.Get(HeaderTraceID) == "" {
		t.Fatal("no Revoker-Trace-Id")
	}
	if h.counter(RoutePost, "200", "soar") != 1 {
		t.Fatalf("requests_total{POST,200,soar} = %v", h.counter(RoutePost, "200", "soar"))
	}
}

// Without Prefer the answer is 202 with Location and Retry-After at once;
// the Location answers 202 (queued) until the record exists, then 200.
func TestIngressQueuedThenGet(t *testing.T) {
	h := newHarness(t)
	r := h.do(h.post(evBody(tAccount, "key2"), bearer(tToken)...))
	r.want(t, http.StatusAccepted)
	loc := r.Header.Get("Location")
	q := r.queued(t)
	if q.State != StateQueued || loc != "/v1/revocations/"+q.EventID || r.Header.Get("Retry-After") == "" || q.Sequence == 0 {
		t.Fatalf("202 %s, Location %q", r.body, loc)
	}
	if !strings.HasPrefix(q.EventID, "ingress:soar:") {
		t.Fatalf("event id %q is not namespaced by caller", q.EventID)
	}
	h.do(h.get(loc, bearer(tToken)...)).want(t, http.StatusAccepted)
	h.startWorker()
	var rec event.Record
	queuetest.Eventually(t, 10*time.Second, "GET answers the record", func() bool {
		g := h.do(h.get(loc, bearer(tToken)...))
		if g.StatusCode != http.StatusOK {
			return false
		}
		rec = g.record(t)
		return true
	})
	if rec.Outcome != event.Revoked || rec.Sequence != q.Sequence || rec.CFRay == "" {
		t.Fatalf("record %+v for %+v", rec, q)
	}
}

// A repeat of a request (same Idempotency-Key and body) answers what the
// event has earned: 202 while it is queued, its record once there is one,
// without Prefer: wait and without storing anything again (SPEC §11).
func TestIngressRepeatAnswersTheRecord(t *testing.T) {
	h := newHarness(t)
	body := evBody(tAccount, "key3")
	req := func() resp {
		return h.do(h.post(body, hdrs(bearer(tToken), []string{HeaderIdempotencyKey, "inc-7"})...))
	}
	req().want(t, http.StatusAccepted)
	h.startWorker()
	var again resp
	queuetest.Eventually(t, 10*time.Second, "the repeat answered the record", func() bool {
		again = req()
		return again.StatusCode == http.StatusOK
	})
	if rec := again.record(t); rec.Outcome != event.Revoked || rec.EventID != "ingress:soar:inc-7" || rec.Sequence != 1 {
		t.Fatalf("repeat answered %s; want the record of the one event stored, sequence 1", again.body)
	}
}

// Signed callers: Standard Webhooks and PagerDuty v3 signatures are
// accepted; a bad or stale one is 401.
func TestIngressSignedCallers(t *testing.T) {
	h := newHarness(t)
	body := evBody(tAccount, "key3")
	now := time.Now()
	h.do(h.post(body, ingresstest.SignStandard(tStdSecret, "msg_1", now, body)...)).want(t, http.StatusAccepted)
	h.do(h.post(body, ingresstest.SignPagerDuty(tPDSecret, body)...)).want(t, http.StatusAccepted)

	bad := []struct {
		name string
		hdr  []string
	}{
		{"standard, wrong secret", ingresstest.SignStandard([]byte("nope"), "msg_2", now, body)},
		{"standard, other body", ingresstest.SignStandard(tStdSecret, "msg_2", now, evBody(tAccount, "other"))},
		{"standard, 6 minutes old", ingresstest.SignStandard(tStdSecret, "msg_2", now.Add(-6*time.Minute), body)},
		{"standard, 6 minutes ahead", ingresstest.SignStandard(tStdSecret, "msg_2", now.Add(6*time.Minute), body)},
		{"pagerduty, wrong secret", ingresstest.SignPagerDuty([]byte("nope"), body)},
		{"pagerduty, other body", ingresstest.SignPagerDuty(tPDSecret, body+" ")},
		{"bearer, unknown token", bearer("not-a-token")},
		{"basic auth", []string{"Authorization", "Basic dXNlcjpwdw=="}},
		{"nothing", nil},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			r := h.do(h.post(body, c.hdr...))
			r.want(t, http.StatusUnauthorized, KindUnauthorized)
			if r.Header.Get("WWW-Authenticate") == "" {
				t.Fatal("no WWW-Authenticate")
			}
		})
	}
	if got := h.msgs(); got != 2 {
		t.Fatalf("%d events stored, want the 2 signed ones", got)
	}
	logs := h.logged()
	for _, secret := range []string{string(tStdSecret), string(tPDSecret), tToken} {
		if strings.Contains(logs, secret) {
			t.Fatal("a secret reached the log")
		}
	}
}

// The same Idempotency-Key and body answer as the first and store one
// event; another body with the key is 422. A Standard Webhooks webhook-id
// is the key when there is no Idempotency-Key.
func TestIngressIdempotency(t *testing.T) {
	h := newHarness(t)
	body := evBody(tAccount, "key4")
	first := h.do(h.post(body, hdrs(bearer(tToken), []string{HeaderIdempotencyKey, "inc-42"})...))
	first.want(t, http.StatusAccepted)
	again := h.do(h.post(body, hdrs(bearer(tToken), []string{HeaderIdempotencyKey, "inc-42"})...))
	again.want(t, http.StatusAccepted)
	a, b := first.queued(t), again.queued(t)
	if a.EventID != "ingress:soar:inc-42" || a.EventID != b.EventID || a.Sequence != b.Sequence || a.Stream != b.Stream {
		t.Fatalf("first %+v, again %+v", a, b)
	}
	if got := h.msgs(); got != 1 {
		t.Fatalf("%d events in the work stream, want 1", got)
	}
	h.do(h.post(evBody(tAccount, "key5"), hdrs(bearer(tToken), []string{HeaderIdempotencyKey, "inc-42"})...)).
		want(t, http.StatusUnprocessableEntity, KindKeyReused)
	// Another caller's same key is another event.
	h.do(h.post(body, hdrs(bearer(tLowToken), []string{HeaderIdempotencyKey, "inc-42"})...)).want(t, http.StatusAccepted)
	if got := h.msgs(); got != 2 {
		t.Fatalf("%d events in the work stream, want 2", got)
	}
	// webhook-id is the key of a signed request.
	s1 := h.do(h.post(body, ingresstest.SignStandard(tStdSecret, "msg_7", time.Now(), body)...))
	s2 := h.do(h.post(body, ingresstest.SignStandard(tStdSecret, "msg_7", time.Now(), body)...))
	s1.want(t, http.StatusAccepted)
	s2.want(t, http.StatusAccepted)
	if s1.queued(t).EventID != "ingress:std:msg_7" || s1.queued(t).Sequence != s2.queued(t).Sequence {
		t.Fatalf("%s / %s", s1.body, s2.body)
	}
	h.do(h.post(body, hdrs(bearer(tToken), []string{HeaderIdempotencyKey, "bad key"})...)).want(t, http.StatusBadRequest, KindInvalidRequest)
	h.do(h.post(body, hdrs(bearer(tToken), []string{HeaderIdempotencyKey, strings.Repeat("k", 201)})...)).want(t, http.StatusBadRequest, KindInvalidRequest)
}

// Concurrent first requests with one key store one event; each is
// answered that event or 409.
func TestIngressConcurrentFirstRequests(t *testing.T) {
	h := newHarness(t)
	body := evBody(tAccount, "key6")
	const n = 8
	var wg sync.WaitGroup
	codes := make([]int, n)
	seqs := make([]uint64, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := h.post(body, hdrs(bearer(tToken), []string{HeaderIdempotencyKey, "race"})...)
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer res.Body.Close()
			codes[i] = res.StatusCode
			var q Queued
			_ = json.NewDecoder(res.Body).Decode(&q)
			seqs[i] = q.Sequence
		}()
	}
	wg.Wait()
	var seq uint64
	for i, c := range codes {
		switch c {
		case http.StatusAccepted:
			if seq != 0 && seqs[i] != seq {
				t.Fatalf("two events answered: %d and %d", seq, seqs[i])
			}
			seq = seqs[i]
		case http.StatusConflict:
		default:
			t.Fatalf("status %d", c)
		}
	}
	if seq == 0 {
		t.Fatal("no request was answered 202")
	}
	if got := h.msgs(); got != 1 {
		t.Fatalf("%d events stored, want 1", got)
	}
}

// A burst of first requests binds the bucket once: one request creates it
// and the others wait for that, rather than each proposing the same stream
// (on a loaded cluster, some of forty such proposals went unanswered for
// the whole store timeout, and their requests failed 503).
func TestIngressFirstRequestsCreateTheBucketOnce(t *testing.T) {
	h := newHarness(t)
	creates, err := h.nc.SubscribeSync("$JS.API.STREAM.CREATE.KV_" + Bucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	const n = 16
	var wg sync.WaitGroup
	codes := make([]int, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := h.post(evBody(tAccount, fmt.Sprintf("burst%02d", i)), bearer(tToken)...)
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			res.Body.Close()
			codes[i] = res.StatusCode
		}()
	}
	wg.Wait()
	for i, c := range codes {
		if c != http.StatusAccepted {
			t.Errorf("request %d: status %d, want 202", i, c)
		}
	}
	if err := h.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := creates.Pending(); got != 1 {
		t.Fatalf("%d requests to create the bucket for %d first requests, want 1", got, n)
	}
}

// A claim left "storing" blocks its key with 409 while fresh, and is taken
// over once stale.
func TestIngressStaleClaim(t *testing.T) {
	h := newHarness(t)
	body := evBody(tAccount, "key7")
	ctx := context.Background()
	kv, err := h.s.bucket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := "ingress:soar:stale"
	claim := entry{Caller: "soar", BodySHA256: bodyDigest([]byte(body)), State: stateStoring, EventID: id,
		Subject: h.topo.Subjects[1], AccountID: tAccount, KeyID: "key7", ClaimedAt: time.Now()}
	v, _ := json.Marshal(claim)
	rev, err := kv.Create(ctx, entryKey(id), v)
	if err != nil {
		t.Fatal(err)
	}
	r := h.do(h.post(body, hdrs(bearer(tToken), []string{HeaderIdempotencyKey, "stale"})...))
	r.want(t, http.StatusConflict, KindInProgress)
	if r.Header.Get("Retry-After") == "" {
		t.Fatal("409 in progress without Retry-After")
	}
	h.do(h.get("/v1/revocations/"+id, bearer(tToken)...)).want(t, http.StatusAccepted)

	claim.ClaimedAt = time.Now().Add(-StaleClaim - time.Second)
	v, _ = json.Marshal(claim)
	if _, err := kv.Update(ctx, entryKey(id), v, rev); err != nil {
		t.Fatal(err)
	}
	h.do(h.post(body, hdrs(bearer(tToken), []string{HeaderIdempotencyKey, "stale"})...)).want(t, http.StatusAccepted)
	if got := h.msgs(); got != 1 {
		t.Fatalf("%d events stored, want 1", got)
	}
}

// Permissions: urgent and accounts, per caller.
func TestIngressPermissions(t *testing.T) {
	h := newHarness(t)
	h.do(h.post(evBody(tAccount, "k8", `"urgent":true`), bearer(tLowToken)...)).want(t, http.StatusForbidden, KindUrgentNotAllowed)
	h.do(h.post(evBody(tOther, "k8"), bearer(tLowToken)...)).want(t, http.StatusForbidden, KindAccountNotAllowed)
	h.do(h.post(evBody(tOther, "k8"), ingresstest.SignPagerDuty(tPDSecret, evBody(tOther, "k8"))...)).want(t, http.StatusForbidden, KindAccountNotAllowed)
	h.do(h.post(evBody(tAccount, "k8", `"urgent":"yes"`), bearer(tToken)...)).want(t, http.StatusBadRequest, KindInvalidEvent)
	h.do(h.get("/v1/keys/"+tOther+"/k8", bearer(tLowToken)...)).want(t, http.StatusForbidden, KindAccountNotAllowed)

	r := h.do(h.post(evBody(tAccount, "k8", `"urgent":true`), bearer(tToken)...))
	r.want(t, http.StatusAccepted)
	if q := r.queued(t); q.Subject != h.topo.Subjects[0] {
		t.Fatalf("urgent event on %s", q.Subject)
	}
	r = h.do(h.post(evBody(tAccount, "k9"), bearer(tLowToken)...))
	r.want(t, http.StatusAccepted)
	if q := r.queued(t); q.Subject != h.topo.Subjects[len(h.topo.Subjects)-1] {
		t.Fatalf("scheduled event on %s", q.Subject)
	}
	if got := h.msgs(); got != 2 {
		t.Fatalf("%d events stored, want 2", got)
	}
}

// The body's bounds and type, and the event's rules.
func TestIngressBodyRules(t *testing.T) {
	h := newHarness(t)
	big := evBody(tAccount, "k10", `"reason":"`+strings.Repeat("x", event.MaxBytes)+`"`)
	h.do(h.post(big, bearer(tToken)...)).want(t, http.StatusRequestEntityTooLarge, KindTooLarge)
	chunked := h.post(big, bearer(tToken)...)
	chunked.ContentLength = -1 // no Content-Length: the limit holds while reading
	h.do(chunked).want(t, http.StatusRequestEntityTooLarge, KindTooLarge)
	h.do(h.post(evBody(tAccount, "k10"), hdrs(bearer(tToken), []string{"Content-Type", "text/plain"})...)).want(t, http.StatusUnsupportedMediaType, KindUnsupportedMedia)
	h.do(h.post(evBody(tAccount, "k10"), hdrs(bearer(tToken), []string{"Content-Type", ""})...)).want(t, http.StatusUnsupportedMediaType, KindUnsupportedMedia)
	h.do(h.post(evBody(tAccount, "k10"), hdrs(bearer(tToken), []string{"Content-Type", "application/json; charset=latin1"})...)).want(t, http.StatusUnsupportedMediaType, KindUnsupportedMedia)
	for _, bad := range []string{`{"account_id":"a b","key_id":"k"}`, `{"account_id":"a","account_id":"b","key_id":"k"}`, `[]`, `{"account_id":"a"}`} {
		h.do(h.post(bad, bearer(tToken)...)).want(t, http.StatusBadRequest, KindInvalidEvent)
	}
	// No credential at all is 401 first (SPEC §11), whatever else is wrong.
	h.do(h.post(big)).want(t, http.StatusUnauthorized, KindUnauthorized)
	h.do(h.post(evBody(tAccount, "k10"), "Content-Type", "text/plain")).want(t, http.StatusUnauthorized, KindUnauthorized)
	h.do(h.post(evBody(tAccount, "k10"), hdrs(bearer(tToken), []string{"Content-Type", "application/json; charset=UTF-8"})...)).want(t, http.StatusAccepted)
	if got := h.msgs(); got != 1 {
		t.Fatalf("%d events stored, want 1", got)
	}
}

// A caller over its rate is 429 with Retry-After.
func TestIngressRateLimit(t *testing.T) {
	h := newHarness(t)
	h.do(h.post(evBody(tAccount, "k11"), bearer(tSlowToken)...)).want(t, http.StatusAccepted)
	r := h.do(h.post(evBody(tAccount, "k12"), bearer(tSlowToken)...))
	r.want(t, http.StatusTooManyRequests, KindRateLimited)
	if r.Header.Get("Retry-After") == "" {
		t.Fatal("429 without Retry-After")
	}
	h.do(h.get("/v1/revocations/x", bearer(tSlowToken)...)).want(t, http.StatusTooManyRequests)
	// Other callers are not held.
	h.do(h.post(evBody(tAccount, "k12"), bearer(tToken)...)).want(t, http.StatusAccepted)
	if h.counter(RoutePost, "429", "slow") != 1 {
		t.Fatal("429 not counted for its caller")
	}
}

// Callers see only their own events.
func TestIngressOtherCallersEventNotFound(t *testing.T) {
	h := newHarness(t)
	r := h.do(h.post(evBody(tAccount, "k13"), bearer(tToken)...))
	r.want(t, http.StatusAccepted)
	loc := r.Header.Get("Location")
	h.do(h.get(loc, bearer(tLowToken)...)).want(t, http.StatusNotFound, KindNotFound)
	h.do(h.get(loc, bearer(tToken)...)).want(t, http.StatusAccepted)
	h.do(h.get("/v1/revocations/nothing-here", bearer(tToken)...)).want(t, http.StatusNotFound, KindNotFound)
	h.do(h.get(loc)).want(t, http.StatusUnauthorized, KindUnauthorized)
}

// With NATS away, a request is 503 with Retry-After and nothing is stored.
func TestIngressNATSDownStoresNothing(t *testing.T) {
	h := newHarness(t)
	// A first request binds the bucket, so the failure below is NATS's.
	h.do(h.post(evBody(tAccount, "k14"), bearer(tToken)...)).want(t, http.StatusAccepted)
	port := h.ns.Addr().(*net.TCPAddr).Port
	h.ns.Shutdown()
	h.ns.WaitForShutdown()
	queuetest.Eventually(t, 5*time.Second, "client disconnected", func() bool { return !h.nc.IsConnected() })
	r := h.do(h.post(evBody(tAccount, "k15"), hdrs(bearer(tToken), []string{HeaderIdempotencyKey, "down"})...))
	r.want(t, http.StatusServiceUnavailable, KindUnavailable)
	if r.Header.Get("Retry-After") == "" {
		t.Fatal("503 without Retry-After")
	}
	h.do(h.post(evBody(tAccount, "k15"), hdrs(bearer(tToken), []string{"Prefer", "wait=1"})...)).want(t, http.StatusServiceUnavailable, KindUnavailable)

	// The server back on the same store: still only the first event, and
	// the key is free.
	startNATS(t, port, h.storeDir)
	queuetest.Eventually(t, 10*time.Second, "client reconnected", h.nc.IsConnected)
	if got := h.msgs(); got != 1 {
		t.Fatalf("%d events stored, want 1", got)
	}
	h.do(h.post(evBody(tAccount, "k15"), hdrs(bearer(tToken), []string{HeaderIdempotencyKey, "down"})...)).want(t, http.StatusAccepted)
}

// A work stream that refuses the event is 503 too, and releases the key.
func TestIngressStreamRefusedStoresNothing(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	st, err := h.js.Stream(ctx, h.topo.Stream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	if err := h.js.DeleteStream(ctx, h.topo.Stream); err != nil {
		t.Fatal(err)
	}
	req := func() resp {
		return h.do(h.post(evBody(tAccount, "k16"), hdrs(bearer(tToken), []string{HeaderIdempotencyKey, "refused"})...))
	}
	r := req()
	r.want(t, http.StatusServiceUnavailable, KindUnavailable)
	if _, err := h.js.CreateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	req().want(t, http.StatusAccepted)
	if got := h.msgs(); got != 1 {
		t.Fatalf("%d events stored, want 1", got)
	}
}

// At most MaxWaiting requests wait; beyond, 503 before anything is
// stored. A waiting caller that hangs up loses nothing.
func TestIngressTooManyWaiting(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxWaiting = 1 })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		req := h.post(evBody(tAccount, "k17"), hdrs(bearer(tToken), []string{"Prefer", "wait=10"})...).WithContext(ctx)
		res, err := http.DefaultClient.Do(req)
		if err == nil {
			res.Body.Close()
		}
		done <- err
	}()
	queuetest.Eventually(t, 5*time.Second, "one request waiting", func() bool { return h.waiter.Waiting() == 1 })
	r := h.do(h.post(evBody(tAccount, "k18"), hdrs(bearer(tToken), []string{"Prefer", "wait=10"})...))
	r.want(t, http.StatusServiceUnavailable, KindTooManyWaiting)
	if r.Header.Get("Retry-After") == "" {
		t.Fatal("503 without Retry-After")
	}
	// Without Prefer nobody waits: accepted.
	h.do(h.post(evBody(tAccount, "k19"), bearer(tToken)...)).want(t, http.StatusAccepted)
	cancel() // the waiting caller hangs up
	<-done
	queuetest.Eventually(t, 5*time.Second, "the wait ended", func() bool { return h.waiter.Waiting() == 0 })
	if got := h.msgs(); got != 2 {
		t.Fatalf("%d events stored, want 2 (the hung-up one kept, the refused one not stored)", got)
	}
}

// GET /v1/keys answers the key's records; bad ids are 400.
func TestIngressKeyRecords(t *testing.T) {
	h := newHarness(t)
	h.startWorker()
	h.do(h.post(evBody(tAccount, "k20"), hdrs(bearer(tToken), []string{"Prefer", "wait=5"})...)).want(t, http.StatusOK)
	r := h.do(h.get("/v1/keys/"+tAccount+"/k20", bearer(tToken)...))
	r.want(t, http.StatusOK)
	var kr KeyRecords
	if err := json.Unmarshal(r.body, &kr); err != nil || len(kr.Records) != 1 || kr.Records[0].Outcome != event.Revoked {
		t.Fatalf("%s (%v)", r.body, err)
	}
	r = h.do(h.get("/v1/keys/"+tAccount+"/none", bearer(tToken)...))
	r.want(t, http.StatusOK)
	if !strings.Contains(string(r.body), `"records":[]`) {
		t.Fatalf("%s", r.body)
	}
	h.do(h.get("/v1/keys/"+tAccount+"/bad%2Did", bearer(tToken)...)).want(t, http.StatusBadRequest, KindInvalidRequest)

	// A record of another key stored on this key's subject is neither
	// answered nor passed over in silence (SPEC §4 "The proof", point 8).
	var strays []queue.Stray
	var mu sync.Mutex
	h.client.Stray = func(s queue.Stray) { mu.Lock(); strays = append(strays, s); mu.Unlock() }
	planted := queue.OutcomeMsg(h.topo.OutcomePrefix, event.Record{EventID: "x", AccountID: tAccount, KeyID: "other", Outcome: event.Revoked})
	planted.Subject = queue.OutcomeSubject(h.topo.OutcomePrefix, tAccount, "plantk")
	if _, err := h.js.PublishMsg(context.Background(), planted); err != nil {
		t.Fatal(err)
	}
	r = h.do(h.get("/v1/keys/"+tAccount+"/plantk", bearer(tToken)...))
	r.want(t, http.StatusOK)
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(string(r.body), `"records":[]`) || len(strays) != 1 || strays[0].Subject != planted.Subject {
		t.Fatalf("answer %s, strays reported %+v; want no records and the planted message reported", r.body, strays)
	}
}

// The OpenAPI document is served; unknown routes and methods are problems.
func TestIngressOpenAPIAndRoutes(t *testing.T) {
	h := newHarness(t)
	r := h.do(h.get("/v1/openapi.json"))
	r.want(t, http.StatusOK)
	var doc map[string]any
	if err := json.Unmarshal(r.body, &doc); err != nil || doc["openapi"] != "3.1.0" {
		t.Fatalf("%.200s", r.body)
	}
	h.do(h.get("/v2/anything")).want(t, http.StatusNotFound, KindNotFound)
	del, _ := http.NewRequest(http.MethodDelete, h.base+"/v1/revocations", nil)
	r = h.do(del)
	r.want(t, http.StatusMethodNotAllowed, KindMethodNotAllowed)
	if r.Header.Get("Allow") != "POST" {
		t.Fatalf("Allow %q", r.Header.Get("Allow"))
	}
	if h.counter(RouteOther, "404", UnknownCaller) != 1 {
		t.Fatal("404 not counted under route other")
	}
}

// Every problem type the code can answer is documented.
func TestIngressProblemKindsDocumented(t *testing.T) {
	var doc struct {
		Components struct {
			Schemas map[string]struct {
				Properties map[string]struct {
					Enum []string `json:"enum"`
				} `json:"properties"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(docs.OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, v := range doc.Components.Schemas["Problem"].Properties["type"].Enum {
		documented[v] = true
	}
	for _, k := range allKinds {
		if !documented[k.Type()] {
			t.Errorf("%s is not in docs/openapi.json", k.Type())
		}
	}
}

// Two traceparent values that disagree are neither continued, as
// revoker reads trace headers everywhere (SPEC §13).
func TestIngressContinuesNoneOfTwoTraces(t *testing.T) {
	h := newHarness(t)
	const first, second = "4bf92f3577b34da6a3ce929d0e0e4736", "11111111111111111111111111111111"
	req := h.post(evBody(tAccount, "k22"), hdrs(bearer(tToken), []string{"traceparent", "00-" + first + "-00f067aa0ba902b7-01"})...)
	req.Header.Add("traceparent", "00-"+second+"-2222222222222222-01")
	r := h.do(req)
	r.want(t, http.StatusAccepted)
	if got := r.Header.Get(HeaderTraceID); got == first || got == second {
		t.Fatalf("Revoker-Trace-Id %s: one of two traceparents that disagree was continued", got)
	}
}

// A traceparent sent is continued: the answer names its trace, and the
// stored event carries it on.
func TestIngressContinuesTrace(t *testing.T) {
	h := newHarness(t)
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	r := h.do(h.post(evBody(tAccount, "k21"), hdrs(bearer(tToken), []string{"traceparent", "00-" + traceID + "-00f067aa0ba902b7-01"})...))
	r.want(t, http.StatusAccepted)
	if got := r.Header.Get(HeaderTraceID); got != traceID {
		t.Fatalf("Revoker-Trace-Id %q, want %s", got, traceID)
	}
	st, err := h.js.Stream(context.Background(), h.topo.Stream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetMsg(context.Background(), r.queued(t).Sequence)
	if err != nil {
		t.Fatal(err)
	}
	if tp := m.Header.Get("traceparent"); !strings.Contains(tp, traceID) {
		t.Fatalf("stored traceparent %q", tp)
	}
	if m.Header.Get(jetstream.MsgIDHeader) != r.queued(t).EventID {
		t.Fatal("stored event has another id")
	}
	// A lookup of the event, carrying no trace of its own, names the
	// event's trace.
	g := h.do(h.get(r.Header.Get("Location"), bearer(tToken)...))
	g.want(t, http.StatusAccepted)
	if got := g.Header.Get(HeaderTraceID); got != traceID {
		t.Fatalf("lookup's Revoker-Trace-Id %q, want the event's %s", got, traceID)
	}
}

// Closing the ingress ends the waits in hand: each answers 202.
func TestIngressCloseEndsWaits(t *testing.T) {
	h := newHarness(t)
	got := make(chan int, 1)
	go func() {
		res, err := http.DefaultClient.Do(h.post(evBody(tAccount, "k22"), hdrs(bearer(tToken), []string{"Prefer", "wait=10"})...))
		if err != nil {
			got <- 0
			return
		}
		res.Body.Close()
		got <- res.StatusCode
	}()
	queuetest.Eventually(t, 5*time.Second, "one request waiting", func() bool { return h.waiter.Waiting() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := h.s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if code := <-got; code != http.StatusAccepted {
		t.Fatalf("waiting request answered %d, want 202", code)
	}
	if time.Since(start) > 4*time.Second {
		t.Fatal("close waited out the wait")
	}
}

// When Start's context ends, the requests in hand get CloseTimeout
// (REVOKER_SHUTDOWN_TIMEOUT) to finish, not a fixed time of the ingress's
// own: here a store held by a silent cut is given up after it.
func TestIngressContextEndClosesWithinCloseTimeout(t *testing.T) {
	dir := t.TempDir()
	ns := startNATS(t, 0, dir)
	_, direct := queuetest.Connect(t, ns)
	topo := tTopology()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, direct, topo, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	hole := queuetest.NewBlackhole(t, ns.Addr().String())
	nc, js := queuetest.ConnectURL(t, hole.URL())
	const closeTimeout = 500 * time.Millisecond
	run, stop := context.WithCancel(context.Background())
	defer stop()
	s, err := Start(run, js, Config{
		Addr: "127.0.0.1:0", Callers: tCallers(), Client: queue.ClientOn(nc, js, topo),
		Subjects: topo.Subjects, Replicas: 1, Create: true, CloseTimeout: closeTimeout, Log: zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	post := func(key string) (*http.Response, error) {
		req, err := http.NewRequest(http.MethodPost, "http://"+s.Addr()+"/v1/revocations", strings.NewReader(evBody(tAccount, key)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+tToken)
		return http.DefaultClient.Do(req)
	}
	// A first request binds what the ingress binds on first use.
	res, err := post("k1")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusAccepted {
		t.Fatalf("first request answered %d", res.StatusCode)
	}

	hole.Cut()
	sent := nc.Stats().OutMsgs
	ended := make(chan error, 1)
	go func() {
		res, err := post("k2")
		if err == nil {
			res.Body.Close()
			err = fmt.Errorf("answered %d", res.StatusCode)
		}
		ended <- err
	}()
	queuetest.Eventually(t, 5*time.Second, "the second request storing its event", func() bool { return nc.Stats().OutMsgs > sent })
	start := time.Now()
	stop()
	// The store would hold on for its own 15 s: the close waits for it
	// CloseTimeout, no less (it could finish meanwhile) and not the 10 s
	// it once took whatever the setting, then closes the connection.
	select {
	case err := <-ended:
		took := time.Since(start)
		t.Logf("the request held by the cut ended %v after the context: %v", took.Round(time.Millisecond), err)
		if err == nil {
			t.Fatal("the request held by the cut was answered")
		}
		if took < closeTimeout*9/10 {
			t.Fatalf("the close gave the request in hand %v, less than its CloseTimeout %s", took, closeTimeout)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the request held by the cut still open 5 s after the context ended (CloseTimeout %s)", closeTimeout)
	}
}
