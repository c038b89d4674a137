package cloudflaretest_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/cloudflare/cloudflaretest"
)

const (
	accA, accB, accC, accD = "aaaa0001", "bbbb0002", "cccc0003", "dddd0004"
	tokA                   = "accountTokenA0123456789abcdefXYZ"
	tokB                   = "accountTokenB0123456789abcdefXYZ"
	tokUser                = "userToken0123456789abcdefXYZ"
	userEmail              = "ops@example.com"
	userKey                = "globalKey0123456789abcdef"
)

// accounts is a stand-in with two account tokens, each its own budget, and
// a user token and key sharing the user's budget over two accounts.
func accounts(opts ...cloudflaretest.Option) *cloudflaretest.Server {
	return cloudflaretest.NewServer(append([]cloudflaretest.Option{
		cloudflaretest.WithAccountToken("media-a", tokA, "", accA),
		cloudflaretest.WithAccountToken("media-b", tokB, "", accB),
		cloudflaretest.WithUserToken("ops", tokUser, "ops-user", accC, accD),
		cloudflaretest.WithUserKey("ops-key", userEmail, userKey, "ops-user", accC, accD),
	}, opts...)...)
}

// Each budget locks out on its own: past its limit, every call charged to it
// is refused for the lockout, whichever account or credential of the
// budget makes it, while the other budgets keep answering.
func TestBudgetsLockOutApart(t *testing.T) {
	s := accounts(cloudflaretest.WithRateLimit(3), cloudflaretest.WithLockout(time.Minute))
	defer s.Close()
	a := client(t, s, cloudflare.Token(tokA))
	b := client(t, s, cloudflare.Token(tokB))
	user := client(t, s, cloudflare.Token(tokUser))
	key := client(t, s, cloudflare.LegacyKey(userEmail, userKey))

	// untilLimited calls until the budget refuses; a slow machine may let
	// more than 3 through, never fewer.
	untilLimited := func(name string, c *cloudflare.Client, acc string, least int) {
		t.Helper()
		for i := range 50 {
			r := call(t, c, acc, fmt.Sprintf("%s%d", name, i))
			if r.Status == 429 {
				if i < least {
					t.Errorf("%s: refused after %d calls, want at least %d", name, i, least)
				}
				return
			}
			if r.Status != 200 {
				t.Fatalf("%s call %d: %d", name, i, r.Status)
			}
		}
		t.Fatalf("%s: never limited", name)
	}
	locked := func(name string, c *cloudflare.Client, acc string) {
		t.Helper()
		r := call(t, c, acc, name+"locked")
		if r.Status != 429 || !r.Envelope.HasCode(cloudflaretest.CodeRateLimited) || r.RetryAfter < 30*time.Second {
			t.Errorf("%s during its lockout: %d, Retry-After %v", name, r.Status, r.RetryAfter)
		}
		if !r.RateLimit.Known || r.RateLimit.Remaining != 0 || r.RateLimit.Reset < 30*time.Second {
			t.Errorf("%s during its lockout: Ratelimit %+v", name, r.RateLimit)
		}
	}
	n := 0
	answers := func(name string, c *cloudflare.Client, acc string) {
		t.Helper()
		n++
		r := call(t, c, acc, fmt.Sprintf("%sok%d", name, n))
		if r.Status != 200 {
			t.Errorf("%s while another budget is locked: %d", name, r.Status)
		}
		if !r.Policy.Known || r.Policy.Quota != 3*300 || r.Policy.Window != cloudflaretest.QuotaWindow {
			t.Errorf("%s: Ratelimit-Policy %+v", name, r.Policy)
		}
	}

	untilLimited("a", a, accA, 3)
	locked("a", a, accA)
	answers("b", b, accB)
	answers("user", user, accC)

	// The user's token and key share one budget: the key's calls lock the
	// token out too, on either account.
	untilLimited("key", key, accD, 2) // the user's token made one call
	locked("user", user, accC)
	locked("key", key, accC)
	answers("b", b, accB)

	if s.BudgetThrottled("media-a") != 2 || s.BudgetThrottled("ops-user") != 3 || s.BudgetThrottled("media-b") != 0 {
		t.Errorf("throttled: media-a %d, ops-user %d, media-b %d", s.BudgetThrottled("media-a"), s.BudgetThrottled("ops-user"), s.BudgetThrottled("media-b"))
	}
	if s.BudgetCount("media-b") != 2 || s.Throttled() != 5 {
		t.Errorf("media-b count %d, throttled %d", s.BudgetCount("media-b"), s.Throttled())
	}
	for _, r := range s.Requests() {
		if r.Budget == "" || r.Credential == "" {
			t.Errorf("request not attributed: %+v", r)
		}
	}
	if log := fmt.Sprintf("%+v", s.Requests()); strings.Contains(log, tokA) || strings.Contains(log, tokUser) || strings.Contains(log, userKey) {
		t.Error("the request log holds a secret")
	}
}

// A credential is accepted only for its own accounts: elsewhere it gets the
// API's authentication error, and an unknown one gets it everywhere.
func TestCredentialForAccount(t *testing.T) {
	s := accounts()
	defer s.Close()
	for _, tc := range []struct {
		name       string
		cred       cloudflare.Credential
		acc        string
		status     int
		credential string
	}{
		{"own account", cloudflare.Token(tokA), accA, 200, "media-a"},
		{"other account token's account", cloudflare.Token(tokA), accB, 403, "media-a"},
		{"user's account", cloudflare.Token(tokA), accC, 403, "media-a"},
		{"user token", cloudflare.Token(tokUser), accD, 200, "ops"},
		{"user token elsewhere", cloudflare.Token(tokUser), accA, 403, "ops"},
		{"user key", cloudflare.LegacyKey(userEmail, userKey), accC, 200, "ops-key"},
		{"user key elsewhere", cloudflare.LegacyKey(userEmail, userKey), accB, 403, "ops-key"},
		{"user key as a token", cloudflare.Token(userKey), accC, 403, ""},
		{"unknown token", cloudflare.Token("unknown0123456789"), accA, 403, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := s.Count()
			r := call(t, client(t, s, tc.cred), tc.acc, "k")
			if r.Status != tc.status || tc.status == 403 && !r.Envelope.HasCode(cloudflaretest.CodeAuthError) {
				t.Errorf("status %d, %s; want %d", r.Status, r.Envelope.Summary(), tc.status)
			}
			got := s.Requests()[n]
			if got.Credential != tc.credential || got.TokenOK != (tc.status == 200) {
				t.Errorf("logged %+v", got)
			}
			if s.Deleted(tc.acc, "k") != (tc.status == 200) {
				t.Errorf("Deleted = %v", !(tc.status == 200))
			}
			s.AddKey(tc.acc, "k")
		})
	}
}

// The token checks answer each kind of credential where Cloudflare does.
func TestTokenChecks(t *testing.T) {
	s := accounts()
	defer s.Close()
	base := strings.TrimSuffix(s.URL, cloudflaretest.APIPrefix)
	bearer := func(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }
	legacy := http.Header{"X-Auth-Email": {userEmail}, "X-Auth-Key": {userKey}}
	for _, tc := range []struct {
		name, path string
		h          http.Header
		status     int
		want       string // in the body
	}{
		{"user token, user endpoint", "/user/tokens/verify", bearer(tokUser), 200, `"status":"active"`},
		{"user token, account endpoint", "/accounts/" + accC + "/tokens/verify", bearer(tokUser), 401, `"code":1000`},
		{"account token, its account", "/accounts/" + accA + "/tokens/verify", bearer(tokA), 200, `"status":"active"`},
		{"account token, another account", "/accounts/" + accB + "/tokens/verify", bearer(tokA), 401, `"code":1000`},
		{"account token, user endpoint", "/user/tokens/verify", bearer(tokA), 401, `"code":1000`},
		{"unknown token", "/user/tokens/verify", bearer("nope0123456789"), 401, `"code":1000`},
		{"legacy pair, user", "/user", legacy, 200, `"success":true`},
		{"legacy pair, token check", "/user/tokens/verify", legacy, 401, `"code":1000`},
		{"account token, user", "/user", bearer(tokA), 403, `"code":10000`},
		{"bad account id", "/accounts/a-b/tokens/verify", bearer(tokA), 400, `"code":7003`},
	} {
		resp, body := raw(t, "GET", base+cloudflaretest.APIPrefix+tc.path, tc.h)
		if resp.StatusCode != tc.status || !strings.Contains(body, tc.want) {
			t.Errorf("%s: %d %s", tc.name, resp.StatusCode, body)
		}
	}

	s.SetTokenStatus("media-a", "disabled")
	resp, body := raw(t, "GET", s.URL+"/accounts/"+accA+"/tokens/verify", bearer(tokA))
	if resp.StatusCode != 200 || !strings.Contains(body, `"success":true`) || !strings.Contains(body, `"status":"disabled"`) {
		t.Errorf("disabled token check: %d %s", resp.StatusCode, body)
	}
	if r := call(t, client(t, s, cloudflare.Token(tokA)), accA, "k"); r.Status != 403 {
		t.Errorf("delete with a disabled token: %d", r.Status)
	}
	s.SetTokenStatus("media-a", "active")
	if r := call(t, client(t, s, cloudflare.Token(tokA)), accA, "k"); r.Status != 200 {
		t.Errorf("delete with the token active again: %d", r.Status)
	}
}

// Without credential options any well-formed token passes the user's token
// check, as it passes every other call.
func TestTokenCheckOpen(t *testing.T) {
	s := cloudflaretest.NewServer()
	defer s.Close()
	resp, body := raw(t, "GET", s.URL+"/user/tokens/verify", http.Header{"Authorization": {"Bearer anything"}})
	if resp.StatusCode != 200 || !strings.Contains(body, `"status":"active"`) {
		t.Errorf("%d %s", resp.StatusCode, body)
	}
	resp, _ = raw(t, "GET", s.URL+"/user/tokens/verify", http.Header{})
	if resp.StatusCode != 401 {
		t.Errorf("no credential: %d", resp.StatusCode)
	}
}
