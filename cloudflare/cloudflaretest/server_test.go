package cloudflaretest_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/cloudflare/cloudflaretest"
)

const token = "standInToken0123456789abcdefXYZ"

func client(t *testing.T, s *cloudflaretest.Server, cred cloudflare.Credential) *cloudflare.Client {
	t.Helper()
	c, err := cloudflare.New(cloudflare.Config{BaseURL: s.URL, Credential: cred, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func call(t *testing.T, c *cloudflare.Client, acc, key string) *cloudflare.Response {
	t.Helper()
	resp, err := c.DeleteSigningKey(t.Context(), acc, key)
	if err != nil {
		t.Fatalf("DeleteSigningKey(%s, %s): %v", acc, key, err)
	}
	return resp
}

// raw sends a request with exactly the given headers, for what the client
// refuses to send (malformed auth, other methods and paths).
func raw(t *testing.T, method, url string, h http.Header) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = h
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestDefaultDeleteThenNotFound(t *testing.T) {
	s := cloudflaretest.NewServer()
	defer s.Close()
	if !strings.HasSuffix(s.URL, "/client/v4") || !strings.HasPrefix(s.URL, "http://127.0.0.1:") {
		t.Errorf("URL = %q", s.URL)
	}
	c := client(t, s, cloudflare.Token(token))

	if s.Deleted("acc", "k1") {
		t.Fatal("deleted before any call")
	}
	r1 := call(t, c, "acc", "k1")
	if r1.Status != 200 || r1.Envelope == nil || !r1.Envelope.Success || string(r1.Envelope.Result) != `"ok"` {
		t.Fatalf("first call: %+v", r1)
	}
	if !s.Deleted("acc", "k1") || s.Deleted("other", "k1") {
		t.Error("Deleted does not track per account")
	}
	r2 := call(t, c, "acc", "k1")
	if r2.Status != 404 || r2.Envelope == nil || r2.Envelope.Success || !r2.Envelope.HasCode(cloudflaretest.CodeNotFound) {
		t.Fatalf("second call: %+v", r2)
	}
	// Another account's key of the same id is separate.
	if r := call(t, c, "other", "k1"); r.Status != 200 {
		t.Errorf("other account: %d", r.Status)
	}

	rayRE := regexp.MustCompile(`^[0-9a-f]{16}-SJC$`)
	rays := map[string]bool{}
	for _, r := range []*cloudflare.Response{r1, r2} {
		if !rayRE.MatchString(r.CFRay) || rays[r.CFRay] {
			t.Errorf("CF-Ray %q not unique or malformed", r.CFRay)
		}
		rays[r.CFRay] = true
	}

	reqs := s.Requests()
	if len(reqs) != 3 || s.Count() != 3 {
		t.Fatalf("log has %d entries, Count %d", len(reqs), s.Count())
	}
	want := cloudflaretest.Request{Method: "DELETE", Path: "/client/v4/accounts/acc/stream/keys/k1", AccountID: "acc", KeyID: "k1", Auth: "bearer", TokenOK: true, Status: 200}
	got := reqs[0]
	if got.At.IsZero() {
		t.Error("At not set")
	}
	got.At = time.Time{}
	if got != want {
		t.Errorf("log[0] = %+v, want %+v", got, want)
	}
	if reqs[1].Status != 404 {
		t.Errorf("log[1].Status = %d", reqs[1].Status)
	}
	if strings.Contains(fmt.Sprintf("%+v", reqs), token) {
		t.Error("the request log holds the token")
	}
}

func TestScript(t *testing.T) {
	s := cloudflaretest.NewServer()
	defer s.Close()
	c := client(t, s, cloudflare.Token(token))
	s.Script("k1", 503, 429, 502, 500)
	s.Script("k1", 200)

	r := call(t, c, "acc", "k1")
	if r.Status != 503 || r.Envelope != nil || !strings.Contains(r.BodyError, "<html>") {
		t.Errorf("503: %+v", r)
	}
	r = call(t, c, "acc", "k1")
	if r.Status != 429 || !r.HasRetryAfter || r.RetryAfter != time.Second || !r.Envelope.HasCode(cloudflaretest.CodeRateLimited) {
		t.Errorf("429: %+v", r)
	}
	for _, want := range []int{502, 500} {
		if r = call(t, c, "acc", "k1"); r.Status != want || r.Envelope != nil {
			t.Errorf("%d: %+v", want, r)
		}
	}
	if s.Deleted("acc", "k1") {
		t.Error("deleted by failures")
	}
	if r = call(t, c, "acc", "k1"); r.Status != 200 || !r.Envelope.Success {
		t.Errorf("scripted 200: %+v", r)
	}
	if !s.Deleted("acc", "k1") {
		t.Error("scripted 200 did not delete")
	}
	if r = call(t, c, "acc", "k1"); r.Status != 404 {
		t.Errorf("after the script: %d, want the default 404", r.Status)
	}
	// Other keys are untouched by k1's script.
	if r = call(t, c, "acc", "k2"); r.Status != 200 {
		t.Errorf("k2: %d", r.Status)
	}

	tests := []struct {
		status  int
		check   func(r *cloudflare.Response) bool
		deleted bool
	}{
		{204, func(r *cloudflare.Response) bool { return r.Envelope == nil && r.BodyError == "empty body" }, true},
		{302, func(r *cloudflare.Response) bool { return r.Envelope == nil }, false},
		{400, func(r *cloudflare.Response) bool { return r.Envelope.HasCode(cloudflaretest.CodeScripted) }, false},
		{403, func(r *cloudflare.Response) bool { return r.Envelope.HasCode(cloudflaretest.CodeAuthError) }, false},
		{404, func(r *cloudflare.Response) bool { return r.Envelope.HasCode(cloudflaretest.CodeNotFound) }, false},
		{409, func(r *cloudflare.Response) bool { return r.Envelope != nil && !r.Envelope.Success }, false},
	}
	for i, tt := range tests {
		key := fmt.Sprintf("s%d", i)
		s.Script(key, tt.status)
		r := call(t, c, "acc", key)
		if r.Status != tt.status || !tt.check(r) {
			t.Errorf("scripted %d: %+v", tt.status, r)
		}
		if s.Deleted("acc", key) != tt.deleted {
			t.Errorf("scripted %d: Deleted = %v", tt.status, !tt.deleted)
		}
	}
}

func TestWithToken(t *testing.T) {
	s := cloudflaretest.NewServer(cloudflaretest.WithToken(token))
	defer s.Close()

	if r := call(t, client(t, s, cloudflare.Token(token)), "acc", "k1"); r.Status != 200 {
		t.Errorf("right token: %d", r.Status)
	}
	r := call(t, client(t, s, cloudflare.Token(token+"x")), "acc", "k2")
	if r.Status != 403 || !r.Envelope.HasCode(cloudflaretest.CodeAuthError) || s.Deleted("acc", "k2") {
		t.Errorf("wrong token: %+v", r)
	}
	r = call(t, client(t, s, cloudflare.LegacyKey("a@b.c", token)), "acc", "k2")
	if r.Status != 403 || !r.Envelope.HasCode(cloudflaretest.CodeAuthError) {
		t.Errorf("legacy pair where a token is required: %+v", r)
	}

	url := s.URL + "/accounts/acc/stream/keys/k3"
	for _, tc := range []struct {
		name   string
		h      http.Header
		status int
		codes  []int
		auth   string
	}{
		{"missing", http.Header{}, 403, []int{cloudflaretest.CodeAuthError}, "none"},
		{"basic", http.Header{"Authorization": {"Basic dXNlcjpwdw=="}}, 400, []int{cloudflaretest.CodeBadHeaders, cloudflaretest.CodeBadAuthzHeader}, "malformed"},
		{"bearer without token", http.Header{"Authorization": {"Bearer "}}, 400, []int{cloudflaretest.CodeBadHeaders, cloudflaretest.CodeBadAuthzHeader}, "malformed"},
		{"bearer two words", http.Header{"Authorization": {"Bearer a b"}}, 400, []int{cloudflaretest.CodeBadHeaders, cloudflaretest.CodeBadAuthzHeader}, "malformed"},
		{"two headers", http.Header{"Authorization": {"Bearer " + token, "Bearer " + token}}, 400, []int{cloudflaretest.CodeBadHeaders}, "malformed"},
		{"lower-case scheme", http.Header{"Authorization": {"bearer " + token}}, 200, nil, "bearer"},
		{"key without email", http.Header{"X-Auth-Key": {"abc"}}, 400, []int{cloudflaretest.CodeBadHeaders, cloudflaretest.CodeBadAuthEmail}, "malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := s.Count()
			resp, body := raw(t, http.MethodDelete, url, tc.h)
			if resp.StatusCode != tc.status {
				t.Fatalf("status = %d, body %s", resp.StatusCode, body)
			}
			if tc.codes != nil {
				env, bodyErr := decode(body)
				if env == nil {
					t.Fatalf("body %q: %s", body, bodyErr)
				}
				for _, code := range tc.codes {
					if !env.HasCode(code) {
						t.Errorf("HasCode(%d) = false; body %s", code, body)
					}
				}
			}
			reqs := s.Requests()
			if len(reqs) != n+1 || reqs[n].Auth != tc.auth || reqs[n].TokenOK != (tc.status == 200) {
				t.Errorf("log entry = %+v", reqs[len(reqs)-1])
			}
		})
	}
}

// decode goes through the real client so the test checks what the worker
// would see.
func decode(body string) (*cloudflare.Envelope, string) {
	srv := cloudflaretest.NewServer(cloudflaretest.WithResponder(func(cloudflaretest.Request) (int, http.Header, string, bool) {
		return 400, nil, body, true
	}))
	defer srv.Close()
	c, err := cloudflare.New(cloudflare.Config{BaseURL: srv.URL, Credential: cloudflare.Token("x")})
	if err != nil {
		return nil, err.Error()
	}
	resp, err := c.DeleteSigningKey(context.Background(), "a", "k")
	if err != nil {
		return nil, err.Error()
	}
	return resp.Envelope, resp.BodyError
}

func TestWithLegacyKey(t *testing.T) {
	s := cloudflaretest.NewServer(cloudflaretest.WithLegacyKey("ops@example.com", token), cloudflaretest.WithToken("other"))
	defer s.Close()
	if r := call(t, client(t, s, cloudflare.LegacyKey("ops@example.com", token)), "a", "k1"); r.Status != 200 {
		t.Errorf("right pair: %d", r.Status)
	}
	if r := call(t, client(t, s, cloudflare.Token("other")), "a", "k2"); r.Status != 200 {
		t.Errorf("token also configured: %d", r.Status)
	}
	if r := call(t, client(t, s, cloudflare.LegacyKey("ops@example.com", token+"x")), "a", "k3"); r.Status != 403 {
		t.Errorf("wrong key: %d", r.Status)
	}
	if r := call(t, client(t, s, cloudflare.LegacyKey("eve@example.com", token)), "a", "k3"); r.Status != 403 {
		t.Errorf("wrong email: %d", r.Status)
	}
	reqs := s.Requests()
	if reqs[0].Auth != "legacy" || !reqs[0].TokenOK || reqs[2].TokenOK {
		t.Errorf("log = %+v", reqs)
	}
}

func TestNoCredentialRequired(t *testing.T) {
	s := cloudflaretest.NewServer()
	defer s.Close()
	resp, _ := raw(t, http.MethodDelete, s.URL+"/accounts/a/stream/keys/k", http.Header{})
	if resp.StatusCode != 200 {
		t.Errorf("status = %d", resp.StatusCode)
	}
	if r := s.Requests()[0]; r.Auth != "none" || r.TokenOK {
		t.Errorf("log = %+v", r)
	}
}

func TestWithRateLimit(t *testing.T) {
	const perSecond = 5
	s := cloudflaretest.NewServer(cloudflaretest.WithRateLimit(perSecond))
	defer s.Close()
	c := client(t, s, cloudflare.Token(token))

	start := time.Now()
	var statuses []int
	var limited []*cloudflare.Response
	for i := range 20 {
		r := call(t, c, "acc", fmt.Sprintf("k%d", i))
		statuses = append(statuses, r.Status)
		if r.Status == 429 {
			limited = append(limited, r)
		}
		if !r.RateLimit.Known {
			t.Errorf("call %d: no rate-limit headers", i)
		}
	}
	elapsed := time.Since(start)

	ok := 20 - len(limited)
	if elapsed < time.Second {
		// The whole burst fell in one window: exactly perSecond got through,
		// and they were the first ones.
		if ok != perSecond {
			t.Errorf("%d calls answered in %v, want %d: %v", ok, elapsed, perSecond, statuses)
		}
		for i, st := range statuses[:perSecond] {
			if st != 200 {
				t.Errorf("call %d = %d", i, st)
			}
		}
	} else if ok > perSecond*(int(elapsed/time.Second)+1) {
		t.Errorf("%d calls answered in %v: more than %d/s", ok, elapsed, perSecond)
	}
	if s.Throttled() != len(limited) || len(limited) == 0 {
		t.Errorf("Throttled = %d, 429s = %d", s.Throttled(), len(limited))
	}
	for _, r := range limited {
		if !r.Envelope.HasCode(cloudflaretest.CodeRateLimited) || !r.HasRetryAfter || r.RetryAfter != time.Second {
			t.Errorf("429: %+v", r)
		}
		if r.RateLimit.Remaining != 0 {
			t.Errorf("429 with Remaining %d", r.RateLimit.Remaining)
		}
	}
	// A throttled call did not delete its key.
	for i, st := range statuses {
		if s.Deleted("acc", fmt.Sprintf("k%d", i)) != (st == 200) {
			t.Errorf("key %d: status %d, Deleted %v", i, st, !(st == 200))
		}
	}
}

func TestWithRateLimitConcurrent(t *testing.T) {
	const perSecond = 10
	s := cloudflaretest.NewServer(cloudflaretest.WithRateLimit(perSecond))
	defer s.Close()
	c := client(t, s, cloudflare.Token(token))
	start := time.Now()
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() { call(t, c, "acc", fmt.Sprintf("k%d", i)) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	ok := 0
	for _, r := range s.Requests() {
		if r.Status == 200 {
			ok++
		}
	}
	if ok == 0 || ok > perSecond*(int(elapsed/time.Second)+1) {
		t.Errorf("%d answered in %v with a limit of %d/s", ok, elapsed, perSecond)
	}
	if ok+s.Throttled() != 50 {
		t.Errorf("ok %d + throttled %d != 50", ok, s.Throttled())
	}
}

func TestResponder(t *testing.T) {
	var mu sync.Mutex
	var seen []cloudflaretest.Request
	var s *cloudflaretest.Server
	s = cloudflaretest.NewServer(cloudflaretest.WithToken(token), cloudflaretest.WithResponder(func(r cloudflaretest.Request) (int, http.Header, string, bool) {
		mu.Lock()
		seen = append(seen, r)
		mu.Unlock()
		_ = s.Count() // may call back into the server without deadlock
		switch r.KeyID {
		case "weird":
			return 200, http.Header{"X-Should-Retry": {"false"}, "Cf-Ray": {"custom-ray"}}, `{"success":false,"errors":[{"code":1,"message":"no"}]}`, true
		case "revoked":
			return 200, nil, `{"success":true,"errors":[],"messages":[],"result":"Revoked"}`, true
		}
		return 0, nil, "", false
	}))
	defer s.Close()
	c := client(t, s, cloudflare.Token(token))

	r := call(t, c, "acc", "weird")
	if r.Status != 200 || r.Envelope.Success || r.ShouldRetry == nil || *r.ShouldRetry || r.CFRay != "custom-ray" {
		t.Errorf("weird: %+v", r)
	}
	if r = call(t, c, "acc", "revoked"); string(r.Envelope.Result) != `"Revoked"` {
		t.Errorf("revoked: %+v", r)
	}
	if r = call(t, c, "acc", "plain"); r.Status != 200 || !s.Deleted("acc", "plain") {
		t.Errorf("fallback: %+v", r)
	}
	if s.Deleted("acc", "weird") {
		t.Error("a handled request changed the default state")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 3 || seen[0].Auth != "bearer" || !seen[0].TokenOK || seen[0].Status != 0 {
		t.Errorf("responder saw %+v", seen)
	}
	if got := s.Requests()[0].Status; got != 200 {
		t.Errorf("log Status = %d", got)
	}
}

func TestOtherRoutes(t *testing.T) {
	s := cloudflaretest.NewServer()
	defer s.Close()
	for _, tc := range []struct {
		method, path string
		status, code int
	}{
		{"GET", "/client/v4/user/tokens", 404, cloudflaretest.CodeNoRoute},
		{"DELETE", "/client/v4/accounts/a/stream/keys", 404, cloudflaretest.CodeNoRoute},
		{"DELETE", "/", 404, cloudflaretest.CodeNoRoute},
		{"GET", "/client/v4/accounts/a/stream/keys/k", 405, cloudflaretest.CodeMethod},
		{"POST", "/client/v4/accounts/a/stream/keys/k", 405, cloudflaretest.CodeMethod},
		{"DELETE", "/client/v4/accounts/a%2Fb/stream/keys/k", 400, cloudflaretest.CodeBadIdentifier},
		{"DELETE", "/client/v4/accounts/a/stream/keys/" + strings.Repeat("k", 33), 400, cloudflaretest.CodeBadIdentifier},
		{"POST", "/client/v4/accounts/a/stream/keys", 404, cloudflaretest.CodeNoRoute},
		{"GET", "/client/v4/accounts/a%2Fb/stream/keys", 400, cloudflaretest.CodeBadIdentifier},
		{"GET", "/client/v4/accounts/" + strings.Repeat("a", 33) + "/stream/keys", 400, cloudflaretest.CodeBadIdentifier},
	} {
		resp, body := raw(t, tc.method, strings.TrimSuffix(s.URL, "/client/v4")+tc.path, http.Header{"Authorization": {"Bearer x"}})
		if resp.StatusCode != tc.status || !strings.Contains(body, fmt.Sprintf(`"code":%d`, tc.code)) || resp.Header.Get("Cf-Ray") == "" {
			t.Errorf("%s %s: %d %s", tc.method, tc.path, resp.StatusCode, body)
		}
	}
	if s.Count() != 10 {
		t.Errorf("Count = %d", s.Count())
	}
}

func TestWithLatency(t *testing.T) {
	s := cloudflaretest.NewServer(cloudflaretest.WithLatency(time.Hour))
	defer s.Close()
	c, err := cloudflare.New(cloudflare.Config{BaseURL: s.URL, Credential: cloudflare.Token(token), Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.DeleteSigningKey(t.Context(), "acc", "k1")
	if !errors.Is(err, cloudflare.ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	// The answer was decided before the latency: the key is gone although
	// the client never heard so, the ambiguity a real timeout has.
	if !s.Deleted("acc", "k1") {
		t.Error("key not deleted")
	}
}

func BenchmarkDeleteSigningKey(b *testing.B) {
	s := cloudflaretest.NewServer(cloudflaretest.WithToken(token))
	defer s.Close()
	c, err := cloudflare.New(cloudflare.Config{BaseURL: s.URL, Credential: cloudflare.Token(token)})
	if err != nil {
		b.Fatal(err)
	}
	var mu sync.Mutex
	n := 0
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			mu.Lock()
			n++
			key := fmt.Sprintf("k%d", n)
			mu.Unlock()
			resp, err := c.DeleteSigningKey(b.Context(), "acc", key)
			if err != nil || resp.Status != 200 {
				b.Errorf("%v %v", resp, err)
				return
			}
		}
	})
}

func list(t *testing.T, c *cloudflare.Client, acc string) *cloudflare.KeyList {
	t.Helper()
	l, err := c.ListSigningKeys(t.Context(), acc)
	if err != nil {
		t.Fatalf("ListSigningKeys(%s): %v", acc, err)
	}
	return l
}

// ids is the result of a list answer, in its order.
func ids(t *testing.T, l *cloudflare.KeyList) []string {
	t.Helper()
	var entries []struct {
		ID      string `json:"id"`
		Created string `json:"created"`
	}
	if l.Envelope == nil {
		t.Fatalf("no envelope: %s", l.BodyError)
	}
	if err := json.Unmarshal(l.Envelope.Result, &entries); err != nil {
		t.Fatalf("result %s: %v", l.Envelope.Result, err)
	}
	out := []string{}
	for _, e := range entries {
		if _, err := time.Parse(time.RFC3339Nano, e.Created); err != nil {
			t.Errorf("created %q: %v", e.Created, err)
		}
		out = append(out, e.ID)
	}
	return out
}

func TestKeyList(t *testing.T) {
	s := cloudflaretest.NewServer(cloudflaretest.WithToken(token))
	defer s.Close()
	c := client(t, s, cloudflare.Token(token))

	l := list(t, c, "acc")
	if l.Status != 200 || !l.Listed || len(ids(t, l)) != 0 || l.CFRay == "" {
		t.Fatalf("empty account: %+v", l)
	}
	s.AddKey("acc", "k1")
	s.AddKey("acc", "k2")
	s.AddKey("other", "k3")
	if got := ids(t, list(t, c, "acc")); !slices.Equal(got, []string{"k1", "k2"}) {
		t.Errorf("list = %v, want the keys in the order added", got)
	}
	if !s.Listed("acc", "k1") || s.Deleted("acc", "k1") || s.Listed("acc", "k3") {
		t.Error("Listed/Deleted do not follow AddKey")
	}

	if r := call(t, c, "acc", "k1"); r.Status != 200 {
		t.Fatalf("delete k1: %d", r.Status)
	}
	if r := call(t, c, "acc", "k1"); r.Status != 404 || !r.Envelope.HasCode(cloudflaretest.CodeNotFound) {
		t.Fatalf("delete k1 again: %+v", r)
	}
	l = list(t, c, "acc")
	if !l.Listed || l.Has("k1") || !l.Has("k2") || s.Listed("acc", "k1") {
		t.Errorf("after the delete: %v", ids(t, l))
	}
	// A key never seen is created by its first delete: it succeeds and
	// the key is never listed.
	if r := call(t, c, "acc", "k9"); r.Status != 200 || !s.Deleted("acc", "k9") || list(t, c, "acc").Has("k9") {
		t.Errorf("delete of an unknown key: %+v", r)
	}
	if got := ids(t, list(t, c, "other")); !slices.Equal(got, []string{"k3"}) {
		t.Errorf("other account = %v", got)
	}
	// RemoveKey: gone elsewhere, so unlisted and 404, and not logged.
	n := s.Count()
	s.RemoveKey("acc", "k2")
	if s.Count() != n || s.Listed("acc", "k2") || list(t, c, "acc").Has("k2") {
		t.Error("RemoveKey left the key listed or logged a request")
	}
	if r := call(t, c, "acc", "k2"); r.Status != 404 || r.Envelope == nil {
		t.Errorf("delete of a removed key: %+v", r)
	}
	// AddKey brings a deleted key back.
	s.AddKey("acc", "k1")
	if !list(t, c, "acc").Has("k1") {
		t.Error("AddKey did not list a deleted key again")
	}

	// The log tells a list from a delete, in order: the list after the
	// 404 comes after it.
	var seq []string
	for _, r := range s.Requests() {
		seq = append(seq, fmt.Sprintf("%s %s %d", r.Method, strings.TrimPrefix(r.Path, cloudflaretest.APIPrefix), r.Status))
	}
	want := []string{
		"GET /accounts/acc/stream/keys 200",
		"GET /accounts/acc/stream/keys 200",
		"DELETE /accounts/acc/stream/keys/k1 200",
		"DELETE /accounts/acc/stream/keys/k1 404",
		"GET /accounts/acc/stream/keys 200",
	}
	if !slices.Equal(seq[:len(want)], want) {
		t.Errorf("log starts %q, want %q", seq[:len(want)], want)
	}
	if r := s.Requests()[0]; r.AccountID != "acc" || r.KeyID != "" || r.Auth != "bearer" || !r.TokenOK {
		t.Errorf("list log entry = %+v", r)
	}

	// Same auth as a delete.
	l = list(t, client(t, s, cloudflare.Token(token+"x")), "acc")
	if l.Status != 403 || l.Listed || !l.Envelope.HasCode(cloudflaretest.CodeAuthError) {
		t.Errorf("wrong token: %+v", l)
	}
}

func TestKeepListed(t *testing.T) {
	s := cloudflaretest.NewServer()
	defer s.Close()
	c := client(t, s, cloudflare.Token(token))
	s.KeepListed("acc", "k1")
	for range 2 {
		r := call(t, c, "acc", "k1")
		if r.Status != 404 || r.Envelope == nil || r.Envelope.Success || !r.Envelope.HasCode(cloudflaretest.CodeNotFound) {
			t.Fatalf("delete: %+v", r)
		}
		if l := list(t, c, "acc"); !l.Listed || !l.Has("k1") || s.Deleted("acc", "k1") {
			t.Fatalf("404 on delete, but the key is not listed: %v", ids(t, l))
		}
	}
	// The delete finally spreads.
	s.RemoveKey("acc", "k1")
	if l := list(t, c, "acc"); !l.Listed || l.Has("k1") {
		t.Errorf("after RemoveKey: %v", ids(t, l))
	}

	// A scripted success ends it too.
	s.KeepListed("acc", "k2")
	s.Script("k2", 200)
	if r := call(t, c, "acc", "k2"); r.Status != 200 || list(t, c, "acc").Has("k2") {
		t.Errorf("scripted 200: %+v", r)
	}
}

func TestHTML404(t *testing.T) {
	s := cloudflaretest.NewServer()
	defer s.Close()
	c := client(t, s, cloudflare.Token(token))
	s.AddKey("acc", "k1")
	s.Script("k1", cloudflaretest.HTML404)
	s.Script("k2", cloudflaretest.HTML404)

	for _, key := range []string{"k1", "k2"} {
		r := call(t, c, "acc", key)
		if r.Status != 404 || r.Envelope != nil || !strings.Contains(r.BodyError, "<html>") || !strings.Contains(r.BodyError, "text/html") {
			t.Errorf("%s: %+v", key, r)
		}
	}
	// Nothing changed: k1 is still live, k2 still unknown.
	if !s.Listed("acc", "k1") || s.Deleted("acc", "k1") || s.Deleted("acc", "k2") || s.Listed("acc", "k2") {
		t.Error("an HTML 404 changed the keys")
	}
	if r := s.Requests()[0]; r.Status != 404 {
		t.Errorf("logged status %d", r.Status)
	}
	if r := call(t, c, "acc", "k1"); r.Status != 200 {
		t.Errorf("after the script: %d", r.Status)
	}
}

func TestScriptList(t *testing.T) {
	s := cloudflaretest.NewServer()
	defer s.Close()
	c := client(t, s, cloudflare.Token(token))
	s.AddKey("acc", "k1")
	s.ScriptList("acc", 503, 404, cloudflaretest.HTML404, 429, 403, 204, 201)

	checks := []func(l *cloudflare.KeyList) bool{
		func(l *cloudflare.KeyList) bool { return l.Status == 503 && l.Envelope == nil },
		func(l *cloudflare.KeyList) bool {
			return l.Status == 404 && l.Envelope.HasCode(cloudflaretest.CodeNoRoute)
		},
		func(l *cloudflare.KeyList) bool { return l.Status == 404 && l.Envelope == nil },
		func(l *cloudflare.KeyList) bool { return l.Status == 429 && l.HasRetryAfter },
		func(l *cloudflare.KeyList) bool {
			return l.Status == 403 && l.Envelope.HasCode(cloudflaretest.CodeAuthError)
		},
		func(l *cloudflare.KeyList) bool { return l.Status == 204 && l.Envelope == nil },
	}
	for i, check := range checks {
		if l := list(t, c, "acc"); l.Listed || !check(l) {
			t.Errorf("scripted list %d: %+v", i, l)
		}
	}
	if l := list(t, c, "acc"); l.Status != 201 || !l.Listed || !l.Has("k1") {
		t.Errorf("scripted 201: %+v", l)
	}
	if l := list(t, c, "acc"); l.Status != 200 || !l.Listed || !l.Has("k1") {
		t.Errorf("after the script: %+v", l)
	}
	if !s.Listed("acc", "k1") {
		t.Error("a scripted list changed the keys")
	}
}

func TestWithoutAPI(t *testing.T) {
	s := cloudflaretest.NewServer(cloudflaretest.WithoutAPI(), cloudflaretest.WithToken(token), cloudflaretest.WithRateLimit(1))
	defer s.Close()
	for _, cred := range []cloudflare.Credential{cloudflare.Token(token), cloudflare.Token("wrong")} {
		c := client(t, s, cred)
		for range 3 {
			r := call(t, c, "acc", "k1")
			if r.Status != 404 || r.Envelope != nil || !strings.Contains(r.BodyError, "404 Not Found") || r.RateLimit.Known {
				t.Errorf("delete: %+v", r)
			}
			l := list(t, c, "acc")
			if l.Status != 404 || l.Envelope != nil || l.Listed {
				t.Errorf("list: %+v", l)
			}
		}
	}
	resp, body := raw(t, http.MethodPost, strings.TrimSuffix(s.URL, cloudflaretest.APIPrefix)+"/anything", http.Header{})
	if resp.StatusCode != 404 || !strings.HasPrefix(body, "<html>") {
		t.Errorf("other route: %d %s", resp.StatusCode, body)
	}
	if s.Deleted("acc", "k1") || s.Throttled() != 0 || s.Count() != 13 {
		t.Errorf("Deleted %v, Throttled %d, Count %d", s.Deleted("acc", "k1"), s.Throttled(), s.Count())
	}
}

func TestListRateLimited(t *testing.T) {
	s := cloudflaretest.NewServer(cloudflaretest.WithRateLimit(1))
	defer s.Close()
	c := client(t, s, cloudflare.Token(token))
	start := time.Now()
	if r := call(t, c, "acc", "k1"); r.Status != 200 {
		t.Fatalf("delete: %d", r.Status)
	}
	// The list shares the delete's budget of one call a second.
	l := list(t, c, "acc")
	if l.Status != 429 {
		if time.Since(start) < time.Second {
			t.Fatalf("list answered within the delete's second: %+v", l)
		}
		t.Skip("the machine took over a second between two calls")
	}
	if !l.Envelope.HasCode(cloudflaretest.CodeRateLimited) || !l.HasRetryAfter || l.Listed || !l.RateLimit.Known {
		t.Errorf("429: %+v", l)
	}
	if s.Throttled() != 1 {
		t.Errorf("Throttled = %d", s.Throttled())
	}
}
