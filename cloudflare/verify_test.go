package cloudflare_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/cloudflare/cloudflaretest"
)

const (
	verifyAcc    = "023e105f4ecef8ad9ca31a8372d0c353"
	verifyOther  = "9a7806061c88ada191ed06f989cc3dac"
	userTok      = "userTOKEN0123456789abcdefGHIJ"
	accountTok   = "cfat_accountTOKEN0123456789abcdef"
	verifyEmail  = "ops@example.com"
	verifyAPIKey = "globalKEY0123456789abcdef"
)

func verifyServer(opts ...cloudflaretest.Option) *cloudflaretest.Server {
	return cloudflaretest.NewServer(append([]cloudflaretest.Option{
		cloudflaretest.WithUserToken("ops", userTok, "ops-user", "*"),
		cloudflaretest.WithAccountToken("media", accountTok, "", verifyAcc),
		cloudflaretest.WithUserKey("ops-key", verifyEmail, verifyAPIKey, "ops-user", "*"),
		cloudflaretest.WithRateLimit(100),
	}, opts...)...)
}

func verifyClient(t *testing.T, s *cloudflaretest.Server, cred cloudflare.Credential) *cloudflare.Client {
	t.Helper()
	c, err := cloudflare.New(cloudflare.Config{BaseURL: s.URL, Credential: cred, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestVerifyToken(t *testing.T) {
	s := verifyServer()
	defer s.Close()
	keyPath := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyPath, []byte(verifyAPIKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	keyFile, err := cloudflare.NewLegacyKeyFile(verifyEmail, keyPath, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		cred      cloudflare.Credential
		account   string
		active    bool
		status    int
		endpoint  string
		tokStatus string
		paths     []string // the requests made, in order
	}{
		{"user token", cloudflare.Token(userTok), verifyAcc, true, 200, cloudflare.VerifyUser, "active",
			[]string{"/user/tokens/verify"}},
		{"account token", cloudflare.Token(accountTok), verifyAcc, true, 200, cloudflare.VerifyAccount, "active",
			[]string{"/user/tokens/verify", "/accounts/" + verifyAcc + "/tokens/verify"}},
		{"account token, another account", cloudflare.Token(accountTok), verifyOther, false, 401, cloudflare.VerifyAccount, "",
			[]string{"/user/tokens/verify", "/accounts/" + verifyOther + "/tokens/verify"}},
		{"account token, no account given", cloudflare.Token(accountTok), "", false, 401, cloudflare.VerifyUser, "",
			[]string{"/user/tokens/verify"}},
		{"refused", cloudflare.Token("unknownTOKEN0123456789"), verifyAcc, false, 401, cloudflare.VerifyAccount, "",
			[]string{"/user/tokens/verify", "/accounts/" + verifyAcc + "/tokens/verify"}},
		{"legacy pair", cloudflare.LegacyKey(verifyEmail, verifyAPIKey), verifyAcc, true, 200, cloudflare.VerifyLegacy, "",
			[]string{"/user"}},
		{"legacy key file", keyFile, verifyAcc, true, 200, cloudflare.VerifyLegacy, "",
			[]string{"/user"}},
		{"legacy pair refused", cloudflare.LegacyKey(verifyEmail, "wrongKEY0123456789"), verifyAcc, false, 403, cloudflare.VerifyLegacy, "",
			[]string{"/user"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := s.Count()
			v, err := verifyClient(t, s, tc.cred).VerifyToken(t.Context(), tc.account)
			if err != nil {
				t.Fatal(err)
			}
			if v.Active != tc.active || v.Status != tc.status || v.Endpoint != tc.endpoint || v.TokenStatus != tc.tokStatus {
				t.Errorf("got active %v, status %d, endpoint %q, token status %q", v.Active, v.Status, v.Endpoint, v.TokenStatus)
			}
			if !v.Policy.Known || v.Policy.PerSecond() != 100 {
				t.Errorf("Policy = %+v", v.Policy)
			}
			var paths []string
			for _, r := range s.Requests()[n:] {
				paths = append(paths, strings.TrimPrefix(r.Path, cloudflaretest.APIPrefix))
			}
			if strings.Join(paths, " ") != strings.Join(tc.paths, " ") {
				t.Errorf("requests %v, want %v", paths, tc.paths)
			}
		})
	}
}

// success true is not enough: a disabled or expired token is not active,
// and a message code (10000 on success too) decides nothing.
func TestVerifyTokenJudgesStatus(t *testing.T) {
	s := verifyServer()
	defer s.Close()
	s.SetTokenStatus("media", "disabled")
	v, err := verifyClient(t, s, cloudflare.Token(accountTok)).VerifyToken(t.Context(), verifyAcc)
	if err != nil {
		t.Fatal(err)
	}
	if v.Active || v.Status != 200 || v.Envelope == nil || !v.Envelope.Success || v.TokenStatus != "disabled" {
		t.Errorf("disabled token: active %v, status %d, token status %q", v.Active, v.Status, v.TokenStatus)
	}

	for _, tc := range []struct {
		name   string
		status int
		body   string
		active bool
	}{
		{"active", 200, `{"success":true,"errors":[],"messages":[{"code":10000,"message":"This API Token is valid and active"}],"result":{"id":"x","status":"active"}}`, true},
		{"success false", 200, `{"success":false,"errors":[],"messages":[],"result":{"id":"x","status":"active"}}`, false},
		{"no status", 200, `{"success":true,"errors":[],"messages":[],"result":{"id":"x"}}`, false},
		{"status not a string", 200, `{"success":true,"errors":[],"messages":[],"result":{"status":true}}`, false},
		{"result a string", 200, `{"success":true,"errors":[],"messages":[],"result":"active"}`, false},
		{"status Active", 200, `{"success":true,"errors":[],"messages":[],"result":{"status":"Active"}}`, false},
		{"STATUS beside status", 200, `{"success":true,"errors":[],"messages":[],"result":{"status":"disabled","STATUS":"active"}}`, false},
		{"only Status", 200, `{"success":true,"errors":[],"messages":[],"result":{"Status":"active"}}`, false},
		{"status twice", 200, `{"success":true,"errors":[],"messages":[],"result":{"status":"disabled","status":"active"}}`, false},
		{"status with a NUL", 200, `{"success":true,"errors":[],"messages":[],"result":{"status":"active\u0000"}}`, false},
		{"status with white space", 200, `{"success":true,"errors":[],"messages":[],"result":{"status":" active\n"}}`, false},
		{"status after nested objects", 200, `{"success":true,"errors":[],"messages":[],"result":{"id":"x","policies":[{"status":"x"}],"status":"active"}}`, true},
		{"not the envelope", 200, `<html>active</html>`, false},
		{"201 is still 2xx", 201, `{"success":true,"errors":[],"messages":[],"result":{"status":"active"}}`, true},
		{"3xx", 302, `{"success":true,"errors":[],"messages":[],"result":{"status":"active"}}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := cloudflaretest.NewServer(cloudflaretest.WithResponder(func(r cloudflaretest.Request) (int, http.Header, string, bool) {
				return tc.status, nil, tc.body, true
			}))
			defer s.Close()
			v, err := verifyClient(t, s, cloudflare.Token(userTok)).VerifyToken(t.Context(), "")
			if err != nil {
				t.Fatal(err)
			}
			if v.Active != tc.active {
				t.Errorf("Active = %v", v.Active)
			}
		})
	}
}

// A 429 says nothing about the token: the account endpoint is not asked.
func TestVerifyTokenRateLimited(t *testing.T) {
	s := cloudflaretest.NewServer(cloudflaretest.WithResponder(func(r cloudflaretest.Request) (int, http.Header, string, bool) {
		return 429, http.Header{"Retry-After": {"3"}}, `{"success":false,"errors":[{"code":971,"message":"limited"}],"messages":[],"result":null}`, true
	}))
	defer s.Close()
	v, err := verifyClient(t, s, cloudflare.Token(userTok)).VerifyToken(t.Context(), verifyAcc)
	if err != nil {
		t.Fatal(err)
	}
	if v.Active || v.Status != 429 || v.RetryAfter != 3*time.Second || s.Count() != 1 {
		t.Errorf("active %v, status %d, Retry-After %v, %d requests", v.Active, v.Status, v.RetryAfter, s.Count())
	}
}

func TestVerifyTokenErrors(t *testing.T) {
	s := verifyServer()
	defer s.Close()
	c := verifyClient(t, s, cloudflare.Token(userTok))
	if _, err := c.VerifyToken(t.Context(), "a/b"); !errors.Is(err, cloudflare.ErrInvalidIdentifier) || s.Count() != 0 {
		t.Errorf("bad account: %v, %d requests", err, s.Count())
	}
	s.Close()
	v, err := c.VerifyToken(t.Context(), verifyAcc)
	if err == nil || v == nil || v.Response == nil || v.Active {
		t.Fatalf("server gone: %v, %+v", err, v)
	}
	if strings.Contains(err.Error(), userTok) {
		t.Error("the error holds the token")
	}
}

func TestLegacyKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key")
	if err := os.WriteFile(path, []byte(verifyAPIKey), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := cloudflare.NewLegacyKeyFile("bad email", path, 0); err == nil || strings.Contains(err.Error(), "bad email") {
		t.Errorf("bad email: %v", err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := cloudflare.NewLegacyKeyFile(verifyEmail, empty, 0); err == nil || !strings.Contains(err.Error(), "API key file") {
		t.Errorf("empty file: %v", err)
	}
	kf, err := cloudflare.NewLegacyKeyFile(verifyEmail, path, 0)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", "http://x", nil)
	if err := kf.Apply(req); err != nil {
		t.Fatal(err)
	}
	if req.Header.Get("X-Auth-Email") != verifyEmail || req.Header.Get("X-Auth-Key") != verifyAPIKey || req.Header.Get("Authorization") != "" {
		t.Errorf("headers %v", req.Header)
	}
	if !kf.Legacy() || !strings.HasPrefix(kf.ID(), "keyfile:") || strings.Contains(kf.String(), verifyAPIKey) {
		t.Errorf("ID %q, String %q", kf.ID(), kf.String())
	}
	// Rotated in place: the next call sends the new key.
	if err := os.WriteFile(path, []byte("rotatedKEY0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	req, _ = http.NewRequest("GET", "http://x", nil)
	_ = kf.Apply(req)
	if req.Header.Get("X-Auth-Key") != "rotatedKEY0123456789" {
		t.Errorf("after rotation: %q", req.Header.Get("X-Auth-Key"))
	}
}

// FuzzResultStatus: whatever a verify answer's result holds, a status is
// read only where the result is an object naming "status" exactly once,
// as a string, and it is that string.
func FuzzResultStatus(f *testing.F) {
	for _, s := range []string{`{"status":"active"}`, `{"status":"disabled","STATUS":"active"}`, `{"Status":"active"}`,
		`{"status":"a","status":"b"}`, `{"x":[{"status":"y"}],"status":"active"}`, `"active"`, `{"status":1}`, `{`, `{"status":"\u0000"}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, result string) {
		got := cloudflare.ResultStatus(&cloudflare.Envelope{Result: json.RawMessage(result)})
		if got == "" {
			return
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(result), &m); err != nil {
			t.Fatalf("status %q read from a result that is not an object: %q", got, result)
		}
		var want string
		if err := json.Unmarshal(m["status"], &want); err != nil || want != got {
			t.Fatalf("status %q read from %q, whose status is %s", got, result, m["status"])
		}
	})
}
