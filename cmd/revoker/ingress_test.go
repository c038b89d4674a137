package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/ingress"
)

// iCallersFile writes a callers file with a bearer caller (token tok) and
// a PagerDuty caller (secret in its own file), and returns its path.
func iCallersFile(t *testing.T, tok string, pdSecret []byte) string {
	t.Helper()
	dir := t.TempDir()
	secret := filepath.Join(dir, "pd-secret")
	if err := os.WriteFile(secret, append(pdSecret, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(tok))
	body := "callers:\n" +
		"  - name: soar\n" +
		"    token_sha256: " + hex.EncodeToString(sum[:]) + "\n" +
		"    urgent: true\n" +
		"    accounts: [\"*\"]\n" +
		"  - name: pagerduty\n" +
		"    webhook_secret_file: " + secret + "\n" +
		"    accounts: [acct1]\n" +
		"    rate: 5\n"
	path := filepath.Join(dir, "callers.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// `revoker serve` with REVOKER_INGRESS_ADDR answers HTTP callers: a bearer
// caller and a PagerDuty-signed caller each revoke a key through the
// stand-in API, and asking to wait gets the revoked record with its CF-Ray.
func TestIngressServeRevokesOverHTTP(t *testing.T) {
	const tok = "ingress-soar-token"
	pd := []byte("pagerduty-secret")
	s := hStack(t, map[string]string{
		"REVOKER_INGRESS_ADDR":         "127.0.0.1:0",
		"REVOKER_INGRESS_CALLERS_FILE": iCallersFile(t, tok, pd),
	})
	s.api.AddKey("acct1", "httpkey1")
	s.api.AddKey("acct1", "httpkey2")
	addr := make(chan string, 1)
	s.startWorkerWith(serveOptions{ingressReady: func(a string) { addr <- a }})
	var base string
	select {
	case a := <-addr:
		base = "http://" + a
	case <-time.After(10 * time.Second):
		t.Fatal("the ingress did not listen")
	}

	post := func(body string, hdr map[string]string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, base+"/v1/revocations", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Prefer", "wait=5")
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, b
	}
	check := func(who string, code int, body []byte, key string) {
		t.Helper()
		var rec event.Record
		if code != http.StatusOK || json.Unmarshal(body, &rec) != nil || rec.Outcome != event.Revoked || rec.KeyID != key || rec.CFRay == "" {
			t.Fatalf("%s: %d %s, want 200 with the revoked record and its cf_ray", who, code, body)
		}
		if s.okDeletes(key) != 1 {
			t.Fatalf("%s: %d deletes of %s", who, s.okDeletes(key), key)
		}
	}

	code, body := post(`{"account_id":"acct1","key_id":"httpkey1"}`, map[string]string{"Authorization": "Bearer " + tok})
	check("bearer", code, body, "httpkey1")

	pdBody := `{"account_id":"acct1","key_id":"httpkey2","requested_by":"pagerduty"}`
	m := hmac.New(sha256.New, pd)
	m.Write([]byte(pdBody))
	code, body = post(pdBody, map[string]string{ingress.HeaderPagerDuty: "v1=" + hex.EncodeToString(m.Sum(nil))})
	check("pagerduty", code, body, "httpkey2")

	code, _ = post(pdBody, map[string]string{ingress.HeaderPagerDuty: "v1=" + strings.Repeat("00", 32)})
	if code != http.StatusUnauthorized {
		t.Fatalf("a bad signature got %d", code)
	}

	// One wait mechanism for the process: the NATS service and the
	// ingress share one subscription on the outcome subjects.
	cz, err := s.ns.Connz(&server.ConnzOptions{Subscriptions: true})
	if err != nil {
		t.Fatal(err)
	}
	subs := 0
	for _, c := range cz.Conns {
		for _, sub := range c.Subs {
			if sub == s.cfg().OutcomeSubject+".>" {
				subs++
			}
		}
	}
	if subs != 1 {
		t.Fatalf("%d subscriptions on the outcome subjects, want 1", subs)
	}
}

// A callers file that does not load stops serve at once with exit status
// 2, naming the variable and the line.
func TestIngressBadCallersFileExits2(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "callers.yaml")
	bad := "callers:\n  - name: soar\n    token_sha256: nothex\n    accounts: [\"*\"]\n"
	if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	env := hClone(hFastEnv)
	// No NATS server: the file is checked before connecting.
	env["REVOKER_NATS_URL"] = "nats://127.0.0.1:1"
	env["CLOUDFLARE_API_TOKEN"] = hToken
	env["REVOKER_INGRESS_ADDR"] = "127.0.0.1:0"
	env["REVOKER_INGRESS_CALLERS_FILE"] = path
	r := hRun(t, env, "", "serve")
	r.want(t, exitUsage, "REVOKER_INGRESS_CALLERS_FILE", strconv.Quote(path)+":3:", "token_sha256")
	if strings.Contains(r.stderr, "nothex") {
		t.Fatalf("the value reached stderr: %s", r.stderr)
	}
}
