package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/demo"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/tracing"
	"github.com/revoker/revoker/tracing/tracingtest"
)

func TestDemoAccountsForEveryEvent(t *testing.T) {
	if testing.Short() {
		t.Skip("the demo takes several seconds")
	}
	// A shell set up for a real fleet: the table's run reads none of it
	// (SPEC §6: only the value actually used is checked).
	fleet := map[string]string{
		"REVOKER_NATS_URL":          "nats://nats.internal:4222,bad",
		"REVOKER_NATS_CREDS":        "/run/secrets/not-here.creds",
		"REVOKER_INGRESS_ADDR":      "0.0.0.0:8443",
		"REVOKER_DEBUG_ADDR":        "0.0.0.0:6060",
		"REVOKER_HTTP_ADDR":         "not an address",
		"CLOUDFLARE_API_TOKEN_FILE": "/run/secrets/not-here",
	}
	code, out, stderr := runCmd(context.Background(), fleet, "demo")
	if code != exitOK {
		t.Fatalf("demo exited %d: %s\n%s", code, stderr, out)
	}
	for _, want := range []string{"all 14 events accounted for", "leak01", "retries_exhausted", "api_rejected", "invalid_event",
		"not_found", "account_not_allowed", "CREDENTIAL", "all with token media", "all with token news"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}

// TestDemoRecordsNameTheirCredential runs the demo's samples through the
// real worker, as `revoker demo` does, with the credentials file the demo
// writes: every record of an event of a served account names that
// account's credential, and the table shows it; the event of the account
// no credential serves is dead-lettered as account_not_allowed with no
// call; every call the stand-in saw was made with the token of its
// account and charged to that token's own budget; and no token reaches
// the log.
func TestDemoRecordsNameTheirCredential(t *testing.T) {
	if testing.Short() {
		t.Skip("the demo takes several seconds")
	}
	core, logs := observer.New(zapcore.DebugLevel)
	log := zap.New(core)
	ctx := context.Background()
	st, err := demo.Start(ctx, demo.Config{Log: log, Serve: func(ctx context.Context, cfg config.Config, ready func(string)) error {
		return serve(ctx, cfg, serveOptions{log: log, ready: ready})
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// The tokens, to look for in the log: every file beside the
	// credentials file is a token file.
	var tokens []string
	if credFile := st.WorkerConfig().CredentialsFile; credFile == "" {
		t.Error("the worker runs without a credentials file")
	} else {
		ents, err := os.ReadDir(filepath.Dir(credFile))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if p := filepath.Join(filepath.Dir(credFile), e.Name()); p != credFile {
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				tokens = append(tokens, strings.TrimSpace(string(b)))
			}
		}
		if len(tokens) != len(demo.Accounts()) {
			t.Errorf("%d token files beside the credentials file, want %d", len(tokens), len(demo.Accounts()))
		}
	}

	samples := demo.Samples()
	rep, err := st.Run(ctx, samples, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != len(samples) {
		t.Fatalf("%d results, want %d", len(rep.Results), len(samples))
	}
	reqs := st.APIRequests()
	unserved := 0
	for _, r := range rep.Results {
		o := r.Record
		want := demo.CredentialOf(r.Account)
		if o.Reason == event.InvalidEvent {
			want = "" // never routed: its account is not believed
		}
		if o.Credential != want {
			t.Errorf("%s (account %q, %s %s): record names credential %q, want %q", r.ID, r.Account, o.Outcome, o.Reason, o.Credential, want)
		}
		if r.Account != demo.Unserved {
			continue
		}
		unserved++
		if o.Outcome != event.DeadLettered || o.Reason != event.AccountNotAllowed || o.Attempts != 0 || o.Status != 0 {
			t.Errorf("%s: %s %s, %d attempts, status %d; want dead-lettered account_not_allowed, no call", r.ID, o.Outcome, o.Reason, o.Attempts, o.Status)
		}
	}
	if unserved != 1 {
		t.Errorf("%d samples for account %s, want 1", unserved, demo.Unserved)
	}

	// Every call with its account's token, charged to that token's budget.
	calls := map[string]int{}
	for _, q := range reqs {
		if q.AccountID == demo.Unserved {
			t.Errorf("%s %s: a call for the account no credential serves", q.Method, q.Path)
		}
		if q.Credential == "" || q.Budget != q.Credential || q.AccountID != "" && q.Credential != demo.CredentialOf(q.AccountID) {
			t.Errorf("%s %s: credential %q, budget %q; want the account's credential and its own budget", q.Method, q.Path, q.Credential, q.Budget)
		}
		calls[q.Budget]++
	}
	sum := 0
	for _, b := range rep.Budgets {
		sum += b.Calls
		if len(b.Credentials) != 1 || b.Credentials[0] != b.Budget || b.Calls != calls[b.Budget] || b.Deletes == 0 || b.Checks == 0 {
			t.Errorf("budget %+v: want calls of its own token only (%d in the log), deletes and token checks among them", b, calls[b.Budget])
		}
	}
	if len(rep.Budgets) != len(demo.Accounts()) || sum != rep.APICalls || sum != len(reqs) {
		t.Errorf("%d budgets with %d calls, report says %d, the log %d; want %d budgets, every call counted once",
			len(rep.Budgets), sum, rep.APICalls, len(reqs), len(demo.Accounts()))
	}

	// The table's CREDENTIAL column is the record's.
	var out strings.Builder
	printDemoReport(&out, rep)
	lines := strings.Split(out.String(), "\n")
	for i, r := range rep.Results {
		f := strings.Fields(lines[1+i])
		if len(f) < 4 || f[1] != r.ID || f[3] != cell(r.Record.Credential) {
			t.Errorf("row %d %q: want event %s, credential %q", i+1, lines[1+i], r.ID, cell(r.Record.Credential))
		}
	}
	for _, b := range rep.Budgets {
		if !strings.Contains(out.String(), "all with token "+b.Budget) {
			t.Errorf("the summary names no calls of budget %s:\n%s", b.Budget, out.String())
		}
	}

	st.Close()
	for _, e := range logs.All() {
		line := e.Message
		for k, v := range e.ContextMap() {
			line += fmt.Sprintf(" %s=%v", k, v)
		}
		for _, tok := range tokens {
			if strings.Contains(line, tok) {
				t.Errorf("a token in the log: %q", e.Message)
			}
		}
	}
}

// TestDemoLogIsPrivate: the demo's log is a new file of its own, readable
// by its user only, never a fixed name in the shared temporary directory
// that someone else could have planted as a link.
func TestDemoLogIsPrivate(t *testing.T) {
	if testing.Short() {
		t.Skip("the demo takes several seconds")
	}
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("untouched\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(tmp, "revoker-demo.log")); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := runCmd(context.Background(), nil, "demo")
	if code != exitOK {
		t.Fatalf("demo exited %d: %s\n%s", code, stderr, out)
	}
	if b, _ := os.ReadFile(victim); string(b) != "untouched\n" {
		t.Errorf("the demo wrote through a planted link (%d bytes)", len(b))
	}
	i := strings.LastIndex(out, "log: ")
	if i < 0 {
		t.Fatalf("the demo names no log:\n%s", out)
	}
	path := strings.TrimSpace(out[i+len("log: "):])
	if filepath.Dir(path) != tmp || filepath.Base(path) == "revoker-demo.log" {
		t.Errorf("log %s: want a new file in %s", path, tmp)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Errorf("log %s: mode %v, want a regular file, 0600", path, fi.Mode())
	}
	if fi.Size() == 0 {
		t.Errorf("log %s is empty", path)
	}
}

// otlpCollector starts an OTLP/HTTP receiver and points the standard
// variables at it, as an operator would for serve.
func otlpCollector(t *testing.T) *tracingtest.Receiver {
	t.Helper()
	rc := tracingtest.NewReceiver(t)
	rc.Export(t)
	t.Cleanup(func() { tracing.SetTracerProvider(nil) })
	return rc
}

// TestDemoExportsSpans: with the OTEL variables set, the demo exports what
// serve does (a consumer span per delivery, a client span per API call) and
// each sample's publish span, parent of its deliveries; all of it flushed
// before the command returns.
func TestDemoExportsSpans(t *testing.T) {
	if testing.Short() {
		t.Skip("the demo takes several seconds")
	}
	rc := otlpCollector(t)
	code, out, stderr := runCmd(context.Background(), nil, "demo")
	if code != exitOK {
		t.Fatalf("demo exited %d: %s\n%s", code, stderr, out)
	}
	spans := rc.Spans()
	publishes := map[string]tracingtest.Span{} // by span id
	var process, deletes int
	for _, sp := range spans {
		switch {
		case sp.GetKind() == tracepb.Span_SPAN_KIND_PRODUCER && strings.HasPrefix(sp.GetName(), "publish "):
			publishes[hex.EncodeToString(sp.GetSpanId())] = sp
		case sp.GetKind() == tracepb.Span_SPAN_KIND_CLIENT && sp.GetName() == "DELETE /accounts/{account_id}/stream/keys/{identifier}":
			deletes++
		}
	}
	for _, sp := range spans {
		if sp.GetKind() != tracepb.Span_SPAN_KIND_CONSUMER {
			continue
		}
		process++
		if _, ok := publishes[sp.ParentID()]; !ok {
			t.Errorf("consumer span %q is not a child of a sample's publish span", sp.GetName())
		}
	}
	if len(publishes) != 14 || process < 14 || deletes < 11 {
		t.Errorf("%d publish spans (want 14), %d process spans (want 14 or more), %d DELETE spans (want 11 or more) among %d",
			len(publishes), process, deletes, len(spans))
	}
}

// TestVerifyExportsSpans: with the OTEL variables set, verify's key lists
// are client spans, flushed before the command returns.
func TestVerifyExportsSpans(t *testing.T) {
	s := vStack(t)
	vRecord(t, s, vAcct, "gone1", event.Record{Outcome: event.Revoked, Status: 200})
	rc := otlpCollector(t)
	s.run("verify").want(t, exitOK)
	lists := 0
	for _, sp := range rc.Spans() {
		if sp.GetKind() == tracepb.Span_SPAN_KIND_CLIENT && sp.GetName() == "GET /accounts/{account_id}/stream/keys" {
			lists++
		}
	}
	if lists != 1 {
		t.Errorf("%d key-list spans exported, want 1", lists)
	}
}
