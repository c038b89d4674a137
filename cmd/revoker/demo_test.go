package main

import (
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/tracing"
	"github.com/revoker/revoker/tracing/tracingtest"
)

func TestDemoAccountsForEveryEvent(t *testing.T) {
	if testing.Short() {
		t.Skip("the demo takes several seconds")
	}
	code, out, stderr := runCmd(context.Background(), nil, "demo")
	if code != exitOK {
		t.Fatalf("demo exited %d: %s\n%s", code, stderr, out)
	}
	for _, want := range []string{"all 13 events accounted for", "leak01", "retries_exhausted", "api_rejected", "invalid_event", "not_found"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
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
	if len(publishes) != 13 || process < 13 || deletes < 11 {
		t.Errorf("%d publish spans (want 13), %d process spans (want 13 or more), %d DELETE spans (want 11 or more) among %d",
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
