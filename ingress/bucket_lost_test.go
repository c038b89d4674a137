package ingress

import (
	"context"
	"net/http"
	"testing"
	"time"
)

// TestBucketLostIsMadeAgain: the ingress bucket is lost while the
// ingress runs (deleted by hand, lost with its stream's only replica).
// The ingress was told to create what it needs (Create), and answers 503
// "try again" (SPEC §11: a 5xx only when retrying can help). Retrying must
// then help: the bucket is bound (and made) again, as it would be at
// start, and a request is stored; not 503 until a restart, with no
// incident revocation getting through the ingress.
func TestBucketLostIsMadeAgain(t *testing.T) {
	h := newHarness(t)
	h.do(h.post(evBody(tAccount, "before"), bearer(tToken)...)).want(t, http.StatusAccepted)
	if err := h.js.DeleteKeyValue(context.Background(), Bucket); err != nil {
		t.Fatal(err)
	}
	var last resp
	n := 0
	ok := false
	deadline := time.Now().Add(15 * time.Second)
	// A paging tool retrying the 503; polled, the answer is the condition.
	for time.Now().Before(deadline) {
		n++
		last = h.do(h.post(evBody(tAccount, "after"), hdrs(bearer(tToken), []string{HeaderIdempotencyKey, "after"})...))
		if last.StatusCode != http.StatusServiceUnavailable {
			ok = last.StatusCode == http.StatusAccepted
			break
		}
		<-time.After(100 * time.Millisecond) // the polling interval of the retries, not a synchronisation
	}
	if !ok {
		t.Fatalf("after the bucket was lost, %d retries over 15s (Retry-After %s each) still answered %d %s; want 202 once the bucket is made again",
			n, last.Header.Get("Retry-After"), last.StatusCode, last.body)
	}
}
