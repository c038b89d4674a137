package ingress

import (
	"net/http"
	"testing"
)

// TestPreferWaitBeyondNineDigitsIsCapped: SPEC §11 caps Prefer:
// wait at REVOKER_INGRESS_MAX_WAIT; RFC 7240's wait is delta-seconds,
// which RFC 9111 §1.2.2 says to take as the greatest value representable
// when it overflows, never to ignore. A caller asking for "as long as you
// can" with a 10-digit wait gets the capped wait, as one asking 999999999.
func TestPreferWaitBeyondNineDigitsIsCapped(t *testing.T) {
	h := newHarness(t)
	h.startWorker()
	r := h.do(h.post(evBody(tAccount, "bigwait"), hdrs(bearer(tToken), []string{"Prefer", "wait=10000000000"})...))
	if r.StatusCode != http.StatusOK || r.Header.Get(HeaderPreferenceApplied) != "wait=10" {
		t.Fatalf("Prefer: wait=10000000000 answered %d (Preference-Applied %q) %s; want 200 with the record after a wait capped at MaxWait (10s), as wait=999999999 gets",
			r.StatusCode, r.Header.Get(HeaderPreferenceApplied), r.body)
	}
}
