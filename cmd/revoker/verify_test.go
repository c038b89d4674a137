package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

const (
	vAcct  = "023e105f4ecef8ad9ca31a8372d0c353"
	vOther = "9a7806061c88ada191ed06f989cc3dac"
)

// vRecord stores an outcome record on the subject of (account, key) as
// the worker would; rec names what the record says.
func vRecord(t *testing.T, s *stack, account, key string, rec event.Record) {
	t.Helper()
	if rec.AccountID == "" {
		rec.AccountID, rec.KeyID = account, key
	}
	if rec.CompletedAt == "" {
		rec.CompletedAt = time.Now().UTC().Format(time.RFC3339Nano)
	}
	rec.CFRay, rec.Stream, rec.Sequence, rec.EventID = "ray-"+rec.KeyID, "REVOCATIONS", uint64(time.Now().UnixNano()), "e-"+rec.KeyID
	m := queue.OutcomeMsg(s.cfg().OutcomeSubject, rec)
	m.Subject = queue.OutcomeSubject(s.cfg().OutcomeSubject, account, key)
	if _, err := s.js.PublishMsg(trailCtx(t), m); err != nil {
		t.Fatal(err)
	}
}

func vStack(t *testing.T) *stack {
	s := hStack(t, nil)
	s.ensure()
	return s
}

// vLists counts the key lists the stand-in answered, of account ("" all).
func vLists(s *stack, account string) int {
	n := 0
	for _, q := range s.api.Requests() {
		if q.Method == http.MethodGet && (account == "" || q.AccountID == account) {
			n++
		}
	}
	return n
}

func TestVerifyKeysGone(t *testing.T) {
	s := vStack(t)
	s.api.AddKey(vAcct, "gone1")
	s.api.RemoveKey(vAcct, "gone1")
	vRecord(t, s, vAcct, "gone1", event.Record{Outcome: event.Revoked, Status: 200})
	vRecord(t, s, vAcct, "gone2", event.Record{Outcome: event.NotFound, Status: 404})
	// Dead-lettered: the trail does not say it is gone.
	s.api.AddKey(vAcct, "kept")
	vRecord(t, s, vAcct, "kept", event.Record{Outcome: event.DeadLettered, Reason: event.APIRejected})

	r := s.run("verify")
	r.want(t, exitOK)
	if r.stdout != "" {
		t.Errorf("stdout %q, want nothing", r.stdout)
	}
	if n := vLists(s, ""); n != 1 {
		t.Errorf("%d key lists, want 1", n)
	}
}

func TestVerifyStillListed(t *testing.T) {
	s := vStack(t)
	s.api.KeepListed(vAcct, "alive")
	vRecord(t, s, vAcct, "alive", event.Record{Outcome: event.NotFound, Status: 404})
	vRecord(t, s, vAcct, "again", event.Record{Outcome: event.Revoked, Status: 200})
	s.api.AddKey(vAcct, "again") // listed after its record said revoked
	vRecord(t, s, vAcct, "gone", event.Record{Outcome: event.Revoked, Status: 200})

	r := s.run("verify")
	r.want(t, exitFailed)
	lines := hLines(r.stdout)
	if len(lines) != 2 {
		t.Fatalf("stdout has %d lines, want one per still-listed key:\n%s", len(lines), r.stdout)
	}
	for i, want := range [][]string{{vAcct, "again", "revoked", "ray-again"}, {vAcct, "alive", "not_found", "ray-alive"}} {
		f := strings.Fields(lines[i])
		if len(f) != 5 || f[0] != want[0] || f[1] != want[1] || f[2] != want[2] || f[4] != want[3] {
			t.Errorf("line %q, want account, key, outcome, completed_at, cf_ray: %v", lines[i], want)
		}
		if _, err := time.Parse(time.RFC3339Nano, f[3]); err != nil {
			t.Errorf("line %q: completed_at: %v", lines[i], err)
		}
	}
	if strings.Contains(r.stdout, "gone") {
		t.Errorf("stdout names a key proven gone:\n%s", r.stdout)
	}
}

func TestVerifyListFailureNamedOnStderr(t *testing.T) {
	s := vStack(t)
	vRecord(t, s, vAcct, "k1", event.Record{Outcome: event.Revoked, Status: 200})
	vRecord(t, s, vOther, "k2", event.Record{Outcome: event.Revoked, Status: 200})
	s.api.ScriptList(vOther, 500)

	r := s.run("verify")
	r.want(t, exitFailed)
	if r.stdout != "" {
		t.Errorf("stdout %q, want nothing: no key is still listed", r.stdout)
	}
	if !strings.Contains(r.stderr, vOther) || strings.Contains(r.stderr, vAcct) {
		t.Errorf("stderr must name %s, and only it:\n%s", vOther, r.stderr)
	}
}

func TestVerifyAccountFilter(t *testing.T) {
	s := vStack(t)
	s.api.KeepListed(vAcct, "alive")
	vRecord(t, s, vAcct, "alive", event.Record{Outcome: event.NotFound, Status: 404})
	vRecord(t, s, vOther, "gone", event.Record{Outcome: event.Revoked, Status: 200})

	r := s.run("verify", "--account", vOther)
	r.want(t, exitOK)
	if r.stdout != "" || vLists(s, vAcct) != 0 || vLists(s, vOther) != 1 {
		t.Fatalf("--account %s: stdout %q, lists of %s %d (want 0), of %s %d (want 1)",
			vOther, r.stdout, vAcct, vLists(s, vAcct), vOther, vLists(s, vOther))
	}
	r = s.run("verify", "--account", vAcct)
	r.want(t, exitFailed, "alive")
	if strings.Contains(r.stdout, vOther) || vLists(s, vOther) != 1 {
		t.Errorf("--account %s reached %s:\n%s", vAcct, vOther, r.stdout)
	}
}

func TestVerifyJSON(t *testing.T) {
	s := vStack(t)
	s.api.KeepListed(vAcct, "alive")
	vRecord(t, s, vAcct, "alive", event.Record{Outcome: event.NotFound, Status: 404})
	vRecord(t, s, vAcct, "gone", event.Record{Outcome: event.Revoked, Status: 200})

	r := s.run("verify", "--json")
	r.want(t, exitFailed)
	lines := hLines(r.stdout)
	if len(lines) != 1 {
		t.Fatalf("want one JSON object, got:\n%s", r.stdout)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &got); err != nil {
		t.Fatal(err)
	}
	if got["account_id"] != vAcct || got["key_id"] != "alive" || got["outcome"] != "not_found" ||
		got["cf_ray"] != "ray-alive" || got["completed_at"] == "" {
		t.Errorf("object %v", got)
	}
}

func TestVerifyRecordOfAnotherKeyNotBelieved(t *testing.T) {
	s := vStack(t)
	s.api.KeepListed(vAcct, "alive")
	s.api.AddKey(vAcct, "host")
	// On the subject of "host", a record naming "alive": it counts for
	// neither key.
	vRecord(t, s, vAcct, "host", event.Record{AccountID: vAcct, KeyID: "alive", Outcome: event.Revoked, Status: 200})

	r := s.run("verify")
	r.want(t, exitOK)
	if r.stdout != "" || vLists(s, "") != 0 {
		t.Errorf("stdout %q, %d lists: a record off its own subject was believed", r.stdout, vLists(s, ""))
	}
}

// A worker whose clock is ahead writes records that say they completed
// after this run's list will start; they were stored before it all the
// same (the records are read first), so the list judges them: a key still
// listed is printed, never hidden as "not judged", and one gone is proven
// gone (SPEC §7).
func TestVerifyJudgesRecordsOfAClockAhead(t *testing.T) {
	ahead := time.Now().Add(time.Hour).UTC().Format(time.RFC3339Nano)
	t.Run("listed", func(t *testing.T) {
		s := vStack(t)
		s.api.AddKey(vAcct, "ahead")
		vRecord(t, s, vAcct, "ahead", event.Record{Outcome: event.Revoked, Status: 200, CompletedAt: ahead})
		r := s.run("verify")
		r.want(t, exitFailed)
		if !strings.Contains(r.stdout, "ahead") {
			t.Errorf("stdout %q: %s/ahead, recorded revoked, is still listed and not printed", r.stdout, vAcct)
		}
	})
	t.Run("gone", func(t *testing.T) {
		s := vStack(t)
		vRecord(t, s, vAcct, "ahead", event.Record{Outcome: event.Revoked, Status: 200, CompletedAt: ahead})
		s.run("verify").want(t, exitOK)
	})
}

// With REVOKER_NOT_FOUND=dead-letter a proven absence is recorded
// dead_lettered, reason not_found: it says the key is gone, and verify
// checks it as it checks a not_found.
func TestVerifyChecksADeadLetteredNotFound(t *testing.T) {
	s := vStack(t)
	s.api.KeepListed(vAcct, "alive")
	vRecord(t, s, vAcct, "alive", event.Record{Outcome: event.DeadLettered, Reason: event.ReasonNotFound, Status: 404,
		AbsenceCheckedAt: time.Now().UTC().Format(time.RFC3339Nano)})
	r := s.run("verify")
	r.want(t, exitFailed)
	if !strings.Contains(r.stdout, "alive") || !strings.Contains(r.stdout, "dead_lettered/not_found") {
		t.Errorf("stdout %q: the trail says %s/alive is gone (dead-lettered not_found) while its account lists it", r.stdout, vAcct)
	}
}

// A check run by hand paces its key lists at the credential's rate (SPEC
// §6: key lists are API calls, charged to the budget): six accounts at
// --rate-limit 2 are listed 500 ms apart (a margin of a tenth is left for
// the lists' own travel), where unpaced they go out at once.
func TestVerifyPacesItsLists(t *testing.T) {
	s := vStack(t)
	for i := range 6 {
		account := fmt.Sprintf("acct%02d", i)
		vRecord(t, s, account, "paced", event.Record{Outcome: event.Revoked, Status: 200})
	}
	s.run("verify", "--rate-limit", "2").want(t, exitOK)
	var at []time.Time
	for _, q := range s.api.Requests() {
		if q.Method == http.MethodGet {
			at = append(at, q.At)
		}
	}
	if len(at) != 6 {
		t.Fatalf("%d key lists, want 6", len(at))
	}
	slices.SortFunc(at, time.Time.Compare)
	for i := 2; i < len(at); i++ {
		if gap := at[i].Sub(at[i-2]); gap < 900*time.Millisecond {
			t.Fatalf("lists %d to %d within %s: more than 2 in a second", i-1, i+1, gap)
		}
	}
}

func TestVerifyUsage(t *testing.T) {
	s := vStack(t)
	s.run("verify", "--since", "-1h").want(t, exitUsage, "--since")
	s.run("verify", "--account", "not/an/id").want(t, exitUsage, "--account")
	s.run("verify", "extra").want(t, exitUsage)
}

func TestVerifyServeExportsStillListed(t *testing.T) {
	s := hStack(t, map[string]string{"REVOKER_VERIFY_INTERVAL": "50ms"})
	s.ensure()
	s.api.KeepListed(vAcct, "alive")
	vRecord(t, s, vAcct, "alive", event.Record{Outcome: event.NotFound, Status: 404})

	ctx, cancel := context.WithCancel(context.Background())
	addr, done := make(chan string, 1), make(chan error, 1)
	go func() {
		done <- serve(ctx, s.cfg(), serveOptions{
			log:   zaptest.NewLogger(t, zaptest.Level(zapcore.ErrorLevel)),
			ready: func(a string) { addr <- a },
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	var a string
	select {
	case a = <-addr:
	case err := <-done:
		t.Fatalf("serve stopped at start: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not listen within 10s")
	}
	queuetest.Eventually(t, 10*time.Second, "revoker_keys_still_listed 1 on /metrics", func() bool {
		resp, err := http.Get("http://" + a + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), "\nrevoker_keys_still_listed 1\n")
	})
	if vLists(s, vAcct) == 0 {
		t.Error("no key list fetched")
	}
}

// vCredentials gives s a credentials file in place of its single token:
// one credential, entry (%s is its token file, which holds the token the
// stand-in takes).
func vCredentials(t *testing.T, s *stack, entry string) {
	t.Helper()
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(hToken), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "credentials.yaml")
	if err := os.WriteFile(file, []byte("credentials:\n"+fmt.Sprintf(entry, tokenFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	delete(s.env, "CLOUDFLARE_API_TOKEN")
	s.env["REVOKER_CREDENTIALS_FILE"] = file
}

// TestVerifyWithCredentialsFile: with only a credentials file (no single
// credential), verify lists each account with the credential the file
// names for it, as serve calls.
func TestVerifyWithCredentialsFile(t *testing.T) {
	s := vStack(t)
	vCredentials(t, s, "  - name: media-eu\n    token_file: %s\n    accounts: ["+vAcct+"]\n")
	s.api.AddKey(vAcct, "alive1")
	vRecord(t, s, vAcct, "alive1", event.Record{Outcome: event.Revoked, Status: 200})

	r := s.run("verify")
	r.want(t, exitFailed)
	if !strings.Contains(r.stdout, "alive1") {
		t.Errorf("stdout %q, want the still-listed key", r.stdout)
	}
	if n := vLists(s, vAcct); n != 1 {
		t.Errorf("%d key lists of %s, want 1", n, vAcct)
	}
}

// TestVerifyHeedsA429OfItsBudget: `revoker verify` run by hand paces each
// budget's key lists itself, and a 429 on one list holds its budget's
// next for the Retry-After, as serve's check and the worker do (SPEC §6:
// key lists are calls of their credential's budget; §4: a 429 pauses
// every call sharing the credential).
func TestVerifyHeedsA429OfItsBudget(t *testing.T) {
	s := vStack(t)
	vCredentials(t, s, "  - name: ops\n    token_file: %s\n    accounts: ["+vAcct+", "+vOther+"]\n    rate: 100\n")
	vRecord(t, s, vAcct, "k1", event.Record{Outcome: event.Revoked, Status: 200})
	vRecord(t, s, vOther, "k2", event.Record{Outcome: event.Revoked, Status: 200})
	s.api.ScriptList(vAcct, http.StatusTooManyRequests) // vAcct's list comes first
	s.run("verify").want(t, exitFailed, vAcct)
	var at []time.Time
	for _, q := range s.api.Requests() {
		if q.Method == http.MethodGet && strings.Contains(q.Path, "/stream/keys") {
			at = append(at, q.At)
		}
	}
	if len(at) != 2 {
		t.Fatalf("%d lists, want 2", len(at))
	}
	// Slowness only widens the gap.
	if gap := at[1].Sub(at[0]); gap < 900*time.Millisecond {
		t.Fatalf("the second list of the budget went out %s after a 429 with Retry-After: 1", gap)
	}
}
