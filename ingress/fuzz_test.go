package ingress

import (
	"net/http"
	"testing"
	"time"

	"github.com/revoker/revoker/event"
)

// Whatever a request carries, parsing it neither panics nor lets an
// unsigned request through, and what it yields keeps its bounds.
func FuzzRequestParsing(f *testing.F) {
	body := evBody(tAccount, "k", `"urgent":true`)
	f.Add([]byte(body), "Bearer "+tToken, "wait=5", "msg_1", "1700000000", "v1,abc", "v1=00", "application/json", "key-1")
	f.Add([]byte(`{"account_id":"a","key_id":"b","urgent":1}`), "Basic x", `respond-async, wait="7";x=y`, "", "", "v1, v2,", "v1=zz,v1=", "application/json; charset=utf-8", "")
	f.Add([]byte(`{`), "bearer", "WAIT=99999999999", "id", "-1", "", "v1=", "text/plain", "\x00")
	a := newAuthenticator(tCallers())
	now := time.Unix(1_700_000_000, 0)
	f.Fuzz(func(t *testing.T, body []byte, authz, prefer, id, ts, stdSig, pdSig, ct, idem string) {
		h := http.Header{}
		for k, v := range map[string]string{"Authorization": authz, HeaderPrefer: prefer, HeaderWebhookID: id,
			HeaderWebhookTimestamp: ts, HeaderWebhookSignature: stdSig, HeaderPagerDuty: pdSig} {
			if v != "" {
				h.Set(k, v)
			}
		}
		c, why := a.authenticate(h, body, now)
		if c != nil && why != "" || c == nil && why == "" {
			t.Fatalf("caller %v with reason %q", c, why)
		}
		if c != nil && authz == "" {
			// Only a true signature can pass, and the fuzzer cannot forge
			// an HMAC: a pass here means the check is broken.
			t.Fatalf("unsigned request accepted as %s", c.Name)
		}
		if w, ok := preferWait(h.Values(HeaderPrefer)); w < 0 || w > maxPreferWait || !ok && w != 0 {
			t.Fatalf("wait %v %v", w, ok)
		}
		_ = jsonContentType(ct)
		if validIdempotencyKey(idem) && (len(idem) > MaxIdempotencyKey || idem == "") {
			t.Fatalf("key %q accepted", idem)
		}
		if _, err := event.Decode(body); err == nil {
			_, _ = urgentOf(body)
		}
		standardSignatures(stdSig)
		pagerDutySignatures(pdSig)
	})
}

// Prefer's forms (RFC 7240).
func TestPreferWait(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"wait=5":                    5 * time.Second,
		"respond-async, wait=10":    10 * time.Second,
		`WAIT="3"; foo=bar`:         3 * time.Second,
		"wait=0":                    0,
		"wait=-1, wait=2":           2 * time.Second,
		"handling=lenient":          -1,
		"wait=soon":                 -1,
		"wait=99999999999999999999": maxPreferWait, // too many seconds to count: the longest
		"wait=999999999":            maxPreferWait,
	} {
		got, ok := preferWait([]string{in})
		if want < 0 && ok || want >= 0 && (!ok || got != want) {
			t.Errorf("%q: %v %v, want %v", in, got, ok, want)
		}
	}
}
