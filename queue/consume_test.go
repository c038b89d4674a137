package queue_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/queue"
)

const acct = "acct01"

// answers is a Responder keyed by key id: the listed answers are given in
// order, then the default behaviour resumes.
func answers(byKey map[string][]answer) cloudflaretest.Option {
	next := map[string]int{}
	var mu = make(chan struct{}, 1)
	return cloudflaretest.WithResponder(func(r cloudflaretest.Request) (int, http.Header, string, bool) {
		mu <- struct{}{}
		defer func() { <-mu }()
		list := byKey[r.KeyID]
		i := next[r.KeyID]
		if i >= len(list) {
			return 0, nil, "", false
		}
		next[r.KeyID]++
		a := list[i]
		h := http.Header{}
		for k, v := range a.header {
			h.Set(k, v)
		}
		return a.status, h, a.body, true
	})
}

type answer struct {
	status int
	header map[string]string
	body   string
}

func envelope(code int, msg string) string {
	return `{"success":false,"errors":[{"code":` + strconv.Itoa(code) + `,"message":"` + msg + `"}],"messages":[],"result":null}`
}

const okBody = `{"success":true,"errors":[],"messages":[],"result":"Revoked"}`

// TestOutcomes runs one event through each row of SPEC §4 and asserts the
// message's fate, the calls made, the records and the metrics.
func TestOutcomes(t *testing.T) {
	html503 := answer{status: 503, body: "<html><body>503 Service Temporarily Unavailable</body></html>"}
	tests := []struct {
		name       string
		key        string
		answers    []answer
		tune       func(*config.Config)
		wantFinal  string // outcome in the outcome record
		wantReason string // dead-letter reason, "" if not dead-lettered
		wantStatus string // Revoker-Status of the record
		wantCalls  int
		wantDetail string
	}{
		{name: "revoked", key: "krevoked", answers: []answer{{status: 200, body: okBody}},
			wantFinal: "revoked", wantCalls: 1},
		{name: "not found is already gone", key: "kgone", answers: []answer{{status: 404, body: envelope(10003, "not found")}},
			wantFinal: "not_found", wantCalls: 1},
		{name: "not found dead-lettered when asked", key: "kgone2",
			answers:   []answer{{status: 404, body: envelope(10003, "not found")}},
			tune:      func(c *config.Config) { c.NotFoundDeadLetter = true },
			wantFinal: "dead_lettered", wantReason: "not_found", wantStatus: "404", wantCalls: 1},
		{name: "5xx then revoked", key: "kflaky", answers: []answer{html503, {status: 502, body: "<html>bad gateway</html>"}},
			wantFinal: "revoked", wantCalls: 3},
		{name: "408 and 409 are retried", key: "k408", answers: []answer{{status: 408}, {status: 409, body: envelope(1, "conflict")}},
			wantFinal: "revoked", wantCalls: 3},
		{name: "x-should-retry true on a 400", key: "kshould", answers: []answer{{status: 400, header: map[string]string{"x-should-retry": "true"}, body: envelope(9, "later")}},
			wantFinal: "revoked", wantCalls: 2},
		{name: "retries exhausted", key: "kdown",
			answers:   repeat(html503, 100),
			wantFinal: "dead_lettered", wantReason: "retries_exhausted", wantStatus: "503", wantDetail: "HTTP 503"},
		{name: "403 is unauthorized, dead-lettered after max deliveries", key: "kauth",
			answers:   repeat(answer{status: 403, body: envelope(10000, "Authentication error")}, 100),
			wantFinal: "dead_lettered", wantReason: "unauthorized", wantStatus: "403", wantDetail: "10000 Authentication error"},
		{name: "400 code 6003 is unauthorized", key: "k6003",
			answers:   repeat(answer{status: 400, body: `{"success":false,"errors":[{"code":6003,"message":"Invalid request headers","error_chain":[{"code":6111,"message":"Invalid format for Authorization header"}]}],"messages":[],"result":null}`}, 100),
			wantFinal: "dead_lettered", wantReason: "unauthorized", wantStatus: "400", wantDetail: "6003"},
		{name: "other 4xx is rejected at once", key: "kbad", answers: []answer{{status: 400, body: envelope(7003, "Could not route")}},
			wantFinal: "dead_lettered", wantReason: "api_rejected", wantStatus: "400", wantCalls: 1, wantDetail: "7003 Could not route"},
		{name: "200 with success false is rejected", key: "kfalse", answers: []answer{{status: 200, body: envelope(10005, "key locked")}},
			wantFinal: "dead_lettered", wantReason: "api_rejected", wantStatus: "200", wantCalls: 1, wantDetail: "10005 key locked"},
		{name: "200 that is not the envelope is rejected", key: "khtml", answers: []answer{{status: 200, body: "<html>captive portal</html>"}},
			wantFinal: "dead_lettered", wantReason: "api_rejected", wantStatus: "200", wantCalls: 1, wantDetail: "not the API envelope"},
		{name: "x-should-retry false on a 503 is rejected", key: "knoretry", answers: []answer{{status: 503, header: map[string]string{"x-should-retry": "false"}, body: "<html/>"}},
			wantFinal: "dead_lettered", wantReason: "api_rejected", wantStatus: "503", wantCalls: 1, wantDetail: "x-should-retry: false"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newStack(t, func(c *config.Config) {
				c.MaxDeliver = 2
				if tc.tune != nil {
					tc.tune(c)
				}
			}, answers(map[string][]answer{tc.key: tc.answers}))
			s.start()
			body := eventJSON(acct, tc.key)
			s.publish(s.cfg.LowestPriority(), body, "id-"+tc.key)
			s.waitFor("an outcome record", func() bool { return len(s.outcomes()) == 1 })

			o := s.outcomes()[0]
			if string(o.Outcome) != tc.wantFinal || string(o.Reason) != tc.wantReason {
				t.Fatalf("outcome = %s/%s, want %s/%s", o.Outcome, o.Reason, tc.wantFinal, tc.wantReason)
			}
			calls := s.deletes(tc.key)
			if tc.wantCalls > 0 && calls != tc.wantCalls {
				t.Errorf("API calls = %d, want %d", calls, tc.wantCalls)
			}
			if o.Attempts != calls || o.EventID != "id-"+tc.key || o.AccountID != acct || o.KeyID != tc.key || o.Worker != "test-host" {
				t.Errorf("outcome record = %+v, API calls %d", o, calls)
			}
			// The work stream is empty: acked or terminated, nothing pending.
			s.waitFor("work stream empty", func() bool { return s.count(s.cfg.Stream) == 0 })

			dl := s.msgs(s.cfg.DLQStream)
			if tc.wantReason == "" {
				if len(dl) != 0 {
					t.Fatalf("dead letters = %d, want 0", len(dl))
				}
				if got := s.processed(tc.wantFinal); got != 1 {
					t.Errorf("processed{%s} = %v, want 1", tc.wantFinal, got)
				}
				if tc.wantFinal == "revoked" {
					if o.Status != 200 || o.CFRay == "" {
						t.Errorf("revoked record has status %d, cf_ray %q", o.Status, o.CFRay)
					}
					if n := testutil.CollectAndCount(s.m.RevocationLatency); n != len(s.cfg.Subjects) {
						t.Errorf("latency series = %d", n)
					}
				}
				if want := float64(calls - 1); testutil.ToFloat64(s.m.APIRetries) != want {
					t.Errorf("retries = %v, want %v", testutil.ToFloat64(s.m.APIRetries), want)
				}
				return
			}
			if len(dl) != 1 {
				t.Fatalf("dead letters = %d, want 1", len(dl))
			}
			rec := dl[0]
			if !bytes.Equal(rec.Data, []byte(body)) {
				t.Errorf("record body = %q, want the original %q", rec.Data, body)
			}
			h := rec.Header
			want := map[string]string{
				jetstream.MsgIDHeader:      "dlq:" + s.cfg.Stream + ":1",
				queue.HeaderReason:         tc.wantReason,
				queue.HeaderStatus:         tc.wantStatus,
				queue.HeaderAttempts:       strconv.Itoa(calls),
				queue.HeaderEventID:        "id-" + tc.key,
				queue.HeaderSourceSubject:  s.cfg.LowestPriority(),
				queue.HeaderSourceSequence: "1",
			}
			for k, v := range want {
				if got := h.Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
			if h.Get(queue.HeaderFailedAt) == "" || !strings.Contains(h.Get(queue.HeaderDetail), tc.wantDetail) {
				t.Errorf("failed-at %q, detail %q (want it to contain %q)", h.Get(queue.HeaderFailedAt), h.Get(queue.HeaderDetail), tc.wantDetail)
			}
			if got := testutil.ToFloat64(s.m.DeadLetters.WithLabelValues(tc.wantReason)); got != 1 {
				t.Errorf("dead_letters{%s} = %v", tc.wantReason, got)
			}
			if got := s.processed("dead_lettered"); got != 1 {
				t.Errorf("processed{dead_lettered} = %v", got)
			}
			if tc.wantReason == "retries_exhausted" || tc.wantReason == "unauthorized" {
				// Dead-lettered on delivery MaxDeliver, given back before.
				if got := s.processed("requeued"); got != float64(s.cfg.MaxDeliver-1) {
					t.Errorf("processed{requeued} = %v, want %d", got, s.cfg.MaxDeliver-1)
				}
				if calls < s.cfg.MaxDeliver {
					t.Errorf("only %d calls over %d deliveries", calls, s.cfg.MaxDeliver)
				}
			}
		})
	}
}

func repeat(a answer, n int) []answer {
	out := make([]answer, n)
	for i := range out {
		out[i] = a
	}
	return out
}

// TestUnauthorizedTurnsNotReady: a 403 makes the worker not ready, the
// next success makes it ready again.
func TestUnauthorizedTurnsNotReady(t *testing.T) {
	s := newStack(t, func(c *config.Config) { c.MaxDeliver = 5 },
		answers(map[string][]answer{"kauth": {{status: 403, body: envelope(10000, "Authentication error")}}}))
	s.start()
	s.publish(s.cfg.LowestPriority(), eventJSON(acct, "kauth"), "")
	s.waitFor("not ready", func() bool {
		ok, why := s.ready.Ready()
		return !ok && strings.Contains(why, "credential")
	})
	s.waitFor("revoked after the credential works", func() bool {
		o := s.outcomes()
		return len(o) == 1 && o[0].Outcome == "revoked"
	})
	if ok, why := s.ready.Ready(); !ok {
		t.Fatalf("still not ready after a successful call: %s", why)
	}
	if got := testutil.ToFloat64(s.m.APIRequests.WithLabelValues("403")); got != 1 {
		t.Errorf("api_requests{403} = %v", got)
	}
}

// TestInvalidEventsAreDeadLetteredWithoutCalls covers SPEC §2's rules.
func TestInvalidEventsAreDeadLetteredWithoutCalls(t *testing.T) {
	bodies := map[string]string{
		"not json":        `revoke acct01 k1`,
		"empty":           ``,
		"only spaces":     "  \n ",
		"array":           `[{"account_id":"a","key_id":"k"}]`,
		"missing key":     `{"account_id":"acct01"}`,
		"missing account": `{"key_id":"k1"}`,
		"33 chars":        `{"account_id":"acct01","key_id":"` + strings.Repeat("a", 33) + `"}`,
		"dot dot slash":   `{"account_id":"acct01","key_id":"../../accounts"}`,
		"slash":           `{"account_id":"acct01","key_id":"a/b"}`,
		"question mark":   `{"account_id":"acct01","key_id":"a?b=c"}`,
		"encoded slash":   `{"account_id":"acct01","key_id":"a%2Fb"}`,
		"space":           `{"account_id":"acct 01","key_id":"k1"}`,
		"non-ascii":       `{"account_id":"acct01","key_id":"kéy"}`,
		"number id":       `{"account_id":"acct01","key_id":12345}`,
		"null id":         `{"account_id":"acct01","key_id":null}`,
		"duplicate field": `{"account_id":"acct01","key_id":"k1","key_id":"k2"}`,
		"two objects":     `{"account_id":"acct01","key_id":"k1"}{"account_id":"acct01","key_id":"k2"}`,
		"bad time":        `{"account_id":"acct01","key_id":"k1","requested_at":"yesterday"}`,
		"too large":       `{"account_id":"acct01","key_id":"k1","pad":"` + strings.Repeat("x", 64<<10) + `"}`,
		"bad utf8":        "{\"account_id\":\"acct01\",\"key_id\":\"k1\",\"reason\":\"\xff\"}",
	}
	s := newStack(t, nil)
	s.start()
	for name, body := range bodies {
		s.publish(s.cfg.LowestPriority(), body, "bad:"+name)
	}
	s.waitFor("every invalid event dead-lettered", func() bool { return s.count(s.cfg.DLQStream) == len(bodies) })
	if n := s.api.Count(); n != 0 {
		t.Fatalf("the API was called %d times for invalid events", n)
	}
	for _, rec := range s.msgs(s.cfg.DLQStream) {
		name := strings.TrimPrefix(rec.Header.Get(queue.HeaderEventID), "bad:")
		want, ok := bodies[name]
		if !ok {
			t.Errorf("record for unknown event %q", rec.Header.Get(queue.HeaderEventID))
			continue
		}
		if !bytes.Equal(rec.Data, []byte(want)) {
			t.Errorf("%s: body not byte-identical", name)
		}
		h := rec.Header
		if h.Get(queue.HeaderReason) != "invalid_event" || h.Get(queue.HeaderAttempts) != "0" || h.Get(queue.HeaderDetail) == "" {
			t.Errorf("%s: reason %q attempts %q detail %q", name, h.Get(queue.HeaderReason), h.Get(queue.HeaderAttempts), h.Get(queue.HeaderDetail))
		}
		if _, present := h[queue.HeaderStatus]; present {
			t.Errorf("%s: Revoker-Status present though no call was made", name)
		}
	}
	if got := testutil.ToFloat64(s.m.DeadLetters.WithLabelValues("invalid_event")); got != float64(len(bodies)) {
		t.Errorf("dead_letters{invalid_event} = %v", got)
	}
	s.waitFor("work stream empty", func() bool { return s.count(s.cfg.Stream) == 0 })
}

func TestAccountNotAllowed(t *testing.T) {
	s := newStack(t, func(c *config.Config) { c.AllowedAccounts = []string{"acct01"} })
	s.start()
	s.publish(s.cfg.LowestPriority(), eventJSON("other9", "k1"), "")
	s.publish(s.cfg.LowestPriority(), eventJSON(acct, "k2"), "")
	s.waitFor("two outcomes", func() bool { return len(s.outcomes()) == 2 })
	dl := s.msgs(s.cfg.DLQStream)
	if len(dl) != 1 || dl[0].Header.Get(queue.HeaderReason) != "account_not_allowed" {
		t.Fatalf("dead letters = %v", dl)
	}
	if s.deletes("k1") != 0 || s.deletes("k2") != 1 {
		t.Fatalf("calls: k1 %d, k2 %d", s.deletes("k1"), s.deletes("k2"))
	}
}

// TestDeadLetterStreamDown: while the dead-letter stream refuses writes,
// the event is held (kept alive) and the write retried; nothing is
// terminated or lost, and once the stream is back the record appears.
func TestDeadLetterStreamDown(t *testing.T) {
	s := newStack(t, nil)
	s.start()
	ctx := context.Background()
	if err := s.js.DeleteStream(ctx, s.cfg.DLQStream); err != nil {
		t.Fatal(err)
	}
	body := `{"account_id":"acct01","key_id":"../x"}`
	s.publish(s.cfg.LowestPriority(), body, "")
	s.waitFor("the write retried", func() bool {
		return s.logs.FilterMessageSnippet("dead-letter record not written").Len() >= 1
	})
	if s.count(s.cfg.Stream) != 1 {
		t.Fatal("the event left the work stream while its dead letter could not be written")
	}
	if _, err := s.js.CreateStream(ctx, queue.DLQStream(s.cfg.Topology())); err != nil {
		t.Fatal(err)
	}
	s.waitFor("the record written", func() bool { return s.count(s.cfg.DLQStream) == 1 })
	s.waitFor("the original removed", func() bool { return s.count(s.cfg.Stream) == 0 })
	if got := s.msgs(s.cfg.DLQStream)[0].Data; string(got) != body {
		t.Fatalf("record body %q", got)
	}
}

// TestShutdownDuringRetry: SIGTERM while an event is between retries gives
// it back; a new worker revokes it.
func TestShutdownDuringRetry(t *testing.T) {
	s := newStack(t, func(c *config.Config) {
		c.RetryMaxElapsed = config.Default().RetryMaxElapsed // stay in the retry loop
		c.RetryMaxInterval = 200 * time.Millisecond
	}, answers(map[string][]answer{"kretry": repeat(answer{status: 503, body: "<html/>"}, 3)}))
	s.start()
	s.publish(s.cfg.LowestPriority(), eventJSON(acct, "kretry"), "")
	s.waitFor("two failed calls", func() bool { return s.deletes("kretry") >= 2 })
	s.stop()
	if s.count(s.cfg.Stream) != 1 {
		t.Fatal("the event is gone from the work stream after shutdown mid-retry")
	}
	if len(s.outcomes()) != 0 {
		t.Fatal("an outcome was recorded for an unfinished event")
	}
	s.start()
	s.waitFor("revoked after restart", func() bool {
		o := s.outcomes()
		return len(o) == 1 && o[0].Outcome == "revoked"
	})
	s.waitFor("work stream empty", func() bool { return s.count(s.cfg.Stream) == 0 })
}

// TestSecretsNeverLeak proves the token appears in no log line, record or
// metric, whatever happens to events.
func TestSecretsNeverLeak(t *testing.T) {
	s := newStack(t, func(c *config.Config) { c.MaxDeliver = 1 },
		answers(map[string][]answer{
			"kauth": repeat(answer{status: 403, body: envelope(10000, "Authentication error")}, 10),
			"kdown": repeat(answer{status: 503}, 100),
		}))
	s.start()
	for _, k := range []string{"kok", "kauth", "kdown", "kok"} {
		s.publish(s.cfg.LowestPriority(), eventJSON(acct, k), "")
	}
	s.publish(s.cfg.LowestPriority(), `{"account_id":"acct01","key_id":"../x"}`, "")
	s.waitFor("five outcomes", func() bool { return len(s.outcomes()) == 5 })

	var everything strings.Builder
	for _, e := range s.logs.All() {
		everything.WriteString(e.Message)
		for k, v := range e.ContextMap() {
			everything.WriteString(k + "=" + toString(v) + "\n")
		}
	}
	for _, stream := range []string{s.cfg.DLQStream, s.cfg.OutcomeStream} {
		for _, m := range s.msgs(stream) {
			everything.Write(m.Data)
			for k, v := range m.Header {
				everything.WriteString(k + "=" + strings.Join(v, ",") + "\n")
			}
		}
	}
	everything.WriteString(s.metricsText())
	if strings.Contains(everything.String(), testToken) || strings.Contains(everything.String(), testToken[4:12]) {
		t.Fatal("the API token appears in logs, records or metrics")
	}
	if s.logs.Len() == 0 || !strings.Contains(everything.String(), "kauth") {
		t.Fatal("captured nothing: the check above proves nothing")
	}
}

func toString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case error:
		return x.Error()
	}
	return fmt.Sprint(v)
}

// TestAttemptsCountEveryDelivery: Revoker-Attempts counts the calls of all
// deliveries together, also when a restart came between them.
func TestAttemptsCountEveryDelivery(t *testing.T) {
	s := newStack(t, func(c *config.Config) {
		c.MaxDeliver = 100 // the first worker never gives up
		c.RetryMaxElapsed = time.Minute
		c.RetryMaxInterval = 100 * time.Millisecond
	}, answers(map[string][]answer{"kdown": repeat(answer{status: 503}, 1000)}))
	s.start()
	s.publish(s.cfg.LowestPriority(), eventJSON(acct, "kdown"), "")
	s.waitFor("two failed calls", func() bool { return s.deletes("kdown") >= 2 })
	s.stop() // gives the event back, its calls remembered

	// A new worker, as after a restart, that gives up on this delivery.
	s.cfg.MaxDeliver = 2
	s.cfg.RetryMaxElapsed = 100 * time.Millisecond
	s.start()
	// The outcome record follows the dead letter.
	s.waitFor("dead-lettered and recorded", func() bool {
		return s.count(s.cfg.DLQStream) == 1 && s.count(s.cfg.OutcomeStream) == 1
	})
	rec := s.msgs(s.cfg.DLQStream)[0]
	if got, want := rec.Header.Get(queue.HeaderAttempts), strconv.Itoa(s.deletes("kdown")); got != want {
		t.Fatalf("Revoker-Attempts = %s, want %s (every call of both workers)", got, want)
	}
	if o := s.outcomes(); len(o) != 1 || o[0].Attempts != s.deletes("kdown") {
		t.Fatalf("outcome records %+v", o)
	}
}

// TestExistingConsumerMaxDeliverIsHonoured: a consumer made elsewhere with a
// MaxDeliver below REVOKER_MAX_DELIVER would silently stop redelivering;
// the worker dead-letters at the consumer's limit instead.
func TestExistingConsumerMaxDeliverIsHonoured(t *testing.T) {
	s := newStack(t, func(c *config.Config) { c.MaxDeliver = 5 },
		answers(map[string][]answer{"kdown": repeat(answer{status: 503}, 1000)}))
	ctx := context.Background()
	if _, err := s.js.CreateStream(ctx, queue.WorkStream(s.cfg.Topology())); err != nil {
		t.Fatal(err)
	}
	tight := queue.LaneConsumer(s.cfg.Topology(), s.cfg.LowestPriority())
	tight.MaxDeliver = 2
	if _, err := s.js.CreateConsumer(ctx, s.cfg.Stream, tight); err != nil {
		t.Fatal(err)
	}
	s.start()
	s.publish(s.cfg.LowestPriority(), eventJSON(acct, "kdown"), "")
	s.waitFor("dead-lettered", func() bool { return s.count(s.cfg.DLQStream) == 1 })
	if r := s.msgs(s.cfg.DLQStream)[0].Header.Get(queue.HeaderReason); r != "retries_exhausted" {
		t.Fatalf("reason %q", r)
	}
	s.waitFor("work stream empty", func() bool { return s.count(s.cfg.Stream) == 0 })
}

// TestConsumerDeletedWhileRunning: the worker notices, turns not-ready,
// sets its consumers up again and goes on revoking.
func TestConsumerDeletedWhileRunning(t *testing.T) {
	s := newStack(t, nil)
	s.start()
	s.publish(s.cfg.LowestPriority(), eventJSON(acct, "kbefore"), "")
	s.waitFor("first revoked", func() bool { return s.deletes("kbefore") == 1 })
	if err := s.js.DeleteConsumer(context.Background(), s.cfg.Stream, s.cfg.Durable(s.cfg.LowestPriority())); err != nil {
		t.Fatal(err)
	}
	s.publish(s.cfg.LowestPriority(), eventJSON(acct, "kafter"), "")
	s.waitFor("revoked after the consumer came back", func() bool { return s.deletes("kafter") == 1 })
	if ok, why := s.ready.Ready(); !ok {
		t.Fatalf("not ready after binding again: %s", why)
	}
	found := false
	for _, e := range s.logs.All() {
		if strings.Contains(e.Message, "consumer disappeared") {
			found = true
		}
	}
	if !found {
		t.Fatal("the lost consumer was not logged")
	}
}
