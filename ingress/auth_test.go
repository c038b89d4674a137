package ingress

import (
	"github.com/revoker/revoker/ingress/ingresstest"
	"net/http"
	"testing"
	"time"
)

// Signature verification, case by case: the schemes' own forms, several
// signatures, other versions, stale and future timestamps, tampering.
func TestSignatureVerification(t *testing.T) {
	a := newAuthenticator(tCallers())
	now := time.Unix(1_700_000_000, 0)
	body := evBody(tAccount, "k")
	std := func(secret []byte, id string, ts time.Time, b string) http.Header {
		h := http.Header{}
		kv := ingresstest.SignStandard(secret, id, ts, b)
		for i := 0; i < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		return h
	}
	pd := func(v string) http.Header { h := http.Header{}; h.Set(HeaderPagerDuty, v); return h }
	good := std(tStdSecret, "msg_1", now, body)
	pdGood := ingresstest.SignPagerDuty(tPDSecret, body)[1]
	cases := []struct {
		name   string
		h      http.Header
		caller string // "" = refused
	}{
		{"standard", good, "std"},
		{"standard, among several", func() http.Header {
			h := good.Clone()
			h.Set(HeaderWebhookSignature, "v1,AAAA v2,xyz "+good.Get(HeaderWebhookSignature))
			return h
		}(), "std"},
		{"standard, 4 minutes old", std(tStdSecret, "msg_1", now.Add(-4*time.Minute), body), "std"},
		{"standard, 5 minutes 1 second old", std(tStdSecret, "msg_1", now.Add(-5*time.Minute-time.Second), body), ""},
		{"standard, 5 minutes 1 second ahead", std(tStdSecret, "msg_1", now.Add(5*time.Minute+time.Second), body), ""},
		{"standard, timestamp not a number", func() http.Header { h := good.Clone(); h.Set(HeaderWebhookTimestamp, "soon"); return h }(), ""},
		{"standard, no id", func() http.Header { h := good.Clone(); h.Del(HeaderWebhookID); return h }(), ""},
		{"standard, other id", func() http.Header { h := good.Clone(); h.Set(HeaderWebhookID, "msg_2"); return h }(), ""},
		{"standard, wrong secret", std([]byte("x"), "msg_1", now, body), ""},
		{"standard, other body", std(tStdSecret, "msg_1", now, body+" "), ""},
		{"standard, v2 only", func() http.Header {
			h := good.Clone()
			h.Set(HeaderWebhookSignature, "v2,"+good.Get(HeaderWebhookSignature)[3:])
			return h
		}(), ""},
		{"standard, truncated", func() http.Header {
			h := good.Clone()
			v := h.Get(HeaderWebhookSignature)
			h.Set(HeaderWebhookSignature, v[:len(v)-4])
			return h
		}(), ""},
		{"standard, a pagerduty secret", std(tPDSecret, "msg_1", now, body), "pd"},
		{"pagerduty", pd(pdGood), "pd"},
		{"pagerduty, among several", pd("v1=00, " + pdGood), "pd"},
		{"pagerduty, upper-case hex", pd("v1=" + upper(pdGood[3:])), "pd"},
		{"pagerduty, wrong version", pd("v0=" + pdGood[3:]), ""},
		{"pagerduty, one digit off", pd(pdGood[:len(pdGood)-1] + flip(pdGood[len(pdGood)-1])), ""},
		{"pagerduty, wrong secret", pd(ingresstest.SignPagerDuty([]byte("x"), body)[1]), ""},
		{"bearer", http.Header{"Authorization": {"Bearer " + tToken}}, "soar"},
		{"bearer, scheme in lower case", http.Header{"Authorization": {"bearer " + tLowToken}}, "low"},
		{"bearer, unknown", http.Header{"Authorization": {"Bearer nope"}}, ""},
		{"bearer, empty", http.Header{"Authorization": {"Bearer "}}, ""},
		{"bearer wins over signatures", func() http.Header { h := good.Clone(); h.Set("Authorization", "Bearer nope"); return h }(), ""},
		{"nothing", http.Header{}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, why := a.authenticate(c.h, []byte(body), now)
			switch {
			case c.caller == "" && got != nil:
				t.Fatalf("accepted as %s", got.Name)
			case c.caller == "" && why == "":
				t.Fatal("refused without a reason")
			case c.caller != "" && (got == nil || got.Name != c.caller):
				t.Fatalf("got %v (%s), want %s", got, why, c.caller)
			}
		})
	}
}

func upper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'a' && c <= 'f' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

func flip(c byte) string {
	if c == '0' {
		return "1"
	}
	return "0"
}

// Every candidate is compared in constant time, whichever matches and
// whether any does: the time taken tells nothing of which caller matched.
func TestSecretsComparedInConstantTimeAll(t *testing.T) {
	a := newAuthenticator(tCallers())
	calls := 0
	defer func(old func(a, b []byte) bool) { equal = old }(equal)
	equal = func(x, y []byte) bool { calls++; return string(x) == string(y) }
	now := time.Now()
	body := evBody(tAccount, "k")

	for _, tok := range []string{tToken, tSlowToken, "none"} {
		calls = 0
		a.authenticate(http.Header{"Authorization": {"Bearer " + tok}}, nil, now)
		if calls != len(a.tokens) {
			t.Fatalf("token %s: %d comparisons, want one per bearer caller (%d)", tok, calls, len(a.tokens))
		}
	}
	for _, secret := range [][]byte{tStdSecret, tPDSecret, []byte("none")} {
		calls = 0
		h := http.Header{}
		h.Set(HeaderPagerDuty, ingresstest.SignPagerDuty(secret, body)[1]+",v1="+ingresstest.SignPagerDuty([]byte("y"), body)[1][3:])
		a.authenticate(h, []byte(body), now)
		if want := 2 * len(a.webhooks); calls != want {
			t.Fatalf("%d comparisons, want %d (every signature with every webhook caller)", calls, want)
		}
	}
}

// The token bucket: a burst of max(rate, 1), then one per 1/rate.
func TestRateBucket(t *testing.T) {
	b := newBucket(2)
	now := time.Unix(0, 0)
	for i := range 2 {
		if ok, _ := b.take(now); !ok {
			t.Fatalf("request %d of the burst refused", i)
		}
	}
	ok, wait := b.take(now)
	if ok || wait != 500*time.Millisecond || retryAfter(wait) != 1 {
		t.Fatalf("third: %v %v", ok, wait)
	}
	if ok, _ := b.take(now.Add(500 * time.Millisecond)); !ok {
		t.Fatal("refused after the refill")
	}
	if ok, _ := newBucket(0).take(now); !ok {
		t.Fatal("rate 0 limits")
	}
	tiny := newBucket(1e-12)
	tiny.take(now)
	if ok, wait := tiny.take(now); ok || wait <= 0 || retryAfter(wait) > maxRetryAfter {
		t.Fatalf("tiny rate: %v %v", ok, wait)
	}
}
