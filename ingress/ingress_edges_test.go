package ingress

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/revoker/revoker/ingress/ingresstest"
)

// A captured Standard Webhooks delivery replayed within its 5 minutes with
// an Idempotency-Key added (a header the signature does not cover) must not
// become a second event: the signed webhook-id is the delivery's identity.
func TestSignedReplayWithAddedIdempotencyKeyStoresOnce(t *testing.T) {
	h := newHarness(t)
	body := evBody(tAccount, "rk1")
	signed := ingresstest.SignStandard(tStdSecret, "msg_replay", time.Now(), body)
	h.do(h.post(body, signed...)).want(t, http.StatusAccepted)
	r := h.do(h.post(body, hdrs(signed, []string{HeaderIdempotencyKey, "attacker-chosen"})...))
	if got := h.msgs(); got != 1 {
		t.Fatalf("replayed signed delivery (same webhook-id, body, signature) stored again: %d events, answer %d %s", got, r.StatusCode, r.body)
	}
}

// HEAD is allowed (Allow: GET, HEAD) on the GET routes; its answer must be
// one the OpenAPI document describes.
func TestContentEncodingIs415(t *testing.T) {
	h := newHarness(t)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write([]byte(evBody(tAccount, "gz1")))
	zw.Close()
	req, _ := http.NewRequest(http.MethodPost, h.base+"/v1/revocations", bytes.NewReader(buf.Bytes()))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Content-Encoding", "gzip")
	req.Header.Set("Authorization", "Bearer "+tToken)
	h.do(req).want(t, http.StatusUnsupportedMediaType, KindUnsupportedMedia)
}

// Headers over the bound are refused with an answer the document
// describes, as problem+json (SPEC §11: errors are problem+json).
func TestPreferWaitLeadingZeros(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxWait = 3 * time.Second })
	r := h.do(h.post(evBody(tAccount, "pz1"), hdrs(bearer(tToken), []string{HeaderPrefer, "wait=00000000001"})...))
	r.want(t, http.StatusAccepted)
	if got := r.Header.Get(HeaderPreferenceApplied); got != "wait=1" {
		t.Fatalf("Prefer: wait=00000000001 applied as %q, want wait=1", got)
	}
}

// The caller's rate counts its requests: one over it is 429 (SPEC §11),
// whatever else is wrong with it, rather than an answer that costs the
// ingress a body read and tells the caller to drop it.
func TestRateLimitNotBypassedByRefusedBodies(t *testing.T) {
	h := newHarness(t)
	h.do(h.post(evBody(tAccount, "rl1"), bearer(tSlowToken)...)).want(t, http.StatusAccepted)
	big := `{"account_id":"` + tAccount + `","key_id":"k","reason":"` + strings.Repeat("x", 70<<10) + `"}`
	for i := 0; i < 3; i++ {
		h.do(h.post(big, bearer(tSlowToken)...)).want(t, http.StatusTooManyRequests, KindRateLimited)
	}
}

// A body that stops arriving (the upload stalls past the read timeout) is
// not an invalid request the caller should drop: retrying can help, so the
// answer must not be a 400 (SPEC §11: paging tools drop other 4xx).
func TestStalledUploadIsNot400(t *testing.T) {
	defer func(r time.Duration) { readTimeout = r }(readTimeout)
	readTimeout = 500 * time.Millisecond
	h := newHarness(t)
	body := evBody(tAccount, "stall1")
	pr, pw := io.Pipe()
	defer pw.Close()
	req := h.post("", bearer(tToken)...)
	req.Body, req.ContentLength = pr, int64(len(body))
	go func() { _, _ = io.WriteString(pw, body[:1]) }()
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Skipf("no answer to observe: %v", err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode == http.StatusBadRequest {
		t.Fatalf("a stalled upload answered %d: %s", res.StatusCode, b)
	}
}

// A request in a transfer coding the server does not know cannot succeed
// on retry: it must not be answered 5xx (SPEC §11: a 5xx only when retrying
// can help; paging tools retry 5xx for ever).
