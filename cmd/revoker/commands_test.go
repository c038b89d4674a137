package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

func TestPublishWaitReportsEachOutcome(t *testing.T) {
	s := hStack(t, nil)
	s.startWorker()

	// revoked, and the outcome record names the call that did it.
	r := s.run("publish", "--account", "acc1", "--key", "key1", "--reason", "leaked", "--requested-by", "oncall", "--wait", "--json")
	r.want(t, exitOK)
	out := hLines(r.stdout)
	if len(out) != 2 {
		t.Fatalf("want a publish line and an outcome line, got:\n%s", r.stdout)
	}
	var pub published
	var o event.Record
	if err := json.Unmarshal([]byte(out[0]), &pub); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(out[1]), &o); err != nil {
		t.Fatal(err)
	}
	if o.Outcome != "revoked" || o.Status != 200 || o.CFRay == "" || o.Attempts != 1 || o.KeyID != "key1" ||
		o.RequestedBy != "oncall" || o.EventID != pub.EventID || o.Subject != "revoke.scheduled" {
		t.Fatalf("outcome %+v, publish %+v", o, pub)
	}
	if !s.api.Deleted("acc1", "key1") {
		t.Fatal("key1 not deleted")
	}

	// The same key again: already gone, which is fine (exit 0).
	s.run("publish", "--account", "acc1", "--key", "key1", "--wait", "--urgent").
		want(t, exitOK, "to revoke.urgent", "not_found account=acc1 key=key1 status=404")

	// A message on the key's subject that is not its record is said on
	// the way, never believed (SPEC §4, "The proof", point 8).
	planted := queue.OutcomeMsg("revoke.outcome", event.Record{EventID: "x", AccountID: "acc1", KeyID: "other", Outcome: event.Revoked})
	planted.Subject = queue.OutcomeSubject("revoke.outcome", "acc1", "key9")
	if _, err := s.js.PublishMsg(context.Background(), planted); err != nil {
		t.Fatal(err)
	}
	s.run("publish", "--account", "acc1", "--key", "key9", "--wait").
		want(t, exitOK, "revoked account=acc1 key=key9", "is not an outcome record of that key: not believed")

	// The API refuses: dead-lettered, exit 1, and the operator is told where to look.
	s.api.Script("key2", 400)
	s.run("publish", "--account", "acc1", "--key", "key2", "--wait").
		want(t, exitFailed, "dead_lettered reason=api_rejected account=acc1 key=key2 status=400", "dlq list --reason api_rejected")

	// A chosen id is the event id; published twice it is dropped as a duplicate and
	// --wait still reports the first copy's outcome.
	s.run("publish", "--account", "acc1", "--key", "key3", "--id", "ticket-42:a", "--wait").
		want(t, exitOK, "published ticket-42:a", "revoked account=acc1 key=key3", "event_id=ticket-42:a")
	s.run("publish", "--account", "acc1", "--key", "key3", "--id", "ticket-42:a", "--wait").
		want(t, exitOK, "not published again", "revoked account=acc1 key=key3")
	if n := s.okDeletes("key3"); n != 1 {
		t.Fatalf("key3 deleted %d times", n)
	}

	// outcomes answers "was key1 revoked, when, by which call, after how many attempts".
	r = s.run("outcomes", "--key", "key1")
	r.want(t, exitOK, "COMPLETED AT", "CF-RAY", o.CFRay, pub.EventID)
	rows := hLines(r.stdout)
	if len(rows) != 3 || !strings.Contains(rows[1], "revoked") || !strings.Contains(rows[2], "not_found") {
		t.Fatalf("outcomes --key key1:\n%s", r.stdout)
	}
	r = s.run("outcomes", "--key", "key1", "--account", "acc1", "--since", "1h", "--json")
	r.want(t, exitOK)
	recs := hLines(r.stdout)
	if len(recs) != 2 {
		t.Fatalf("outcomes --json:\n%s", r.stdout)
	}
	var first event.Record
	if err := json.Unmarshal([]byte(recs[0]), &first); err != nil || first.CFRay != o.CFRay || first.Outcome != "revoked" {
		t.Fatalf("first record %+v (%v)", first, err)
	}
	s.run("outcomes", "--key", "nosuchkey").want(t, exitOK, "no outcome records match")
	s.run("outcomes", "--account", "other").want(t, exitOK, "no outcome records match")
}

func TestPublishWithoutWorker(t *testing.T) {
	s := hStack(t, nil)

	// Nothing exists yet: the commands create nothing and say what is missing.
	s.run("publish", "--account", "a1", "--key", "k1").
		want(t, exitFailed, "work stream REVOCATIONS does not exist")
	s.run("dlq", "list").want(t, exitFailed, "dead-letter stream REVOCATIONS_DLQ does not exist")
	s.run("dlq", "replay", "--all").want(t, exitFailed, "REVOCATIONS_DLQ does not exist")
	s.run("outcomes").want(t, exitFailed, "outcome stream REVOCATION_OUTCOMES does not exist")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for name := range s.js.StreamNames(ctx).Name() {
		t.Fatalf("a command created stream %s", name)
	}

	s.ensure()
	// No worker takes it: --wait gives up with exit 3.
	s.run("publish", "--account", "a1", "--key", "k1", "--wait", "--timeout", "300ms").
		want(t, exitTimeout, "no outcome for event", "within 300ms", "revoker outcomes --key k1")
	if n := s.msgs("REVOCATIONS"); n != 1 {
		t.Fatalf("work stream holds %d events, want 1", n)
	}

	// Bad identifiers never reach the stream.
	for _, args := range [][]string{
		{"--account", "a1", "--key", "../x"},
		{"--account", "a1", "--key", strings.Repeat("k", 33)},
		{"--account", "a/1", "--key", "k1"},
		{"--account", "a1", "--key", "k1", "--id", "../x"},
		{"--account", "a1", "--key", "k1", "--id", strings.Repeat("i", 129)},
		{"--account", "a1", "--key", "k1", "--reason", strings.Repeat("r", 1025)},
	} {
		r := s.run(append([]string{"publish"}, args...)...)
		r.want(t, exitUsage)
		if !strings.Contains(r.stderr, "must be") && !strings.Contains(r.stderr, "more than") && !strings.Contains(r.stderr, "only [A-Za-z0-9._:-]") {
			t.Errorf("publish %v: unclear message %q", args, r.stderr)
		}
	}
	if n := s.msgs("REVOCATIONS"); n != 1 {
		t.Fatalf("work stream holds %d events after refused ones, want 1", n)
	}

	// A batch with a malformed line: reported with its number, the good lines published.
	in := `{"account_id":"a1","key_id":"b1"}

{"account_id":"a1","key_id":"../etc"}
not json
{"account_id":"a1","key_id":"b2","reason":"rotation"}
`
	r := s.runStdin(in, "publish", "--from-file", "-", "--json")
	r.want(t, exitUsage, "line 3: invalid event: key_id must be", "line 4: invalid event: not JSON")
	if strings.Contains(r.stderr, "line 1") || strings.Contains(r.stderr, "line 5") {
		t.Fatalf("good lines reported:\n%s", r.stderr)
	}
	out := hLines(r.stdout)
	if len(out) != 3 || !strings.Contains(out[0], `"line":1`) || !strings.Contains(out[1], `"line":5`) ||
		!strings.Contains(out[2], `"published":2`) || !strings.Contains(out[2], `"invalid":2`) {
		t.Fatalf("batch output:\n%s", r.stdout)
	}
	if n := s.msgs("REVOCATIONS"); n != 3 {
		t.Fatalf("work stream holds %d events, want 3", n)
	}

	// --wait on a batch nobody processes: every event reported as timed out.
	f := filepath.Join(t.TempDir(), "two.jsonl")
	if err := os.WriteFile(f, []byte(`{"account_id":"a1","key_id":"c1"}`+"\n"+`{"account_id":"a1","key_id":"c2"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	r = s.run("publish", "--from-file", f, "--urgent", "--wait", "--timeout", "200ms")
	r.want(t, exitTimeout, "line 1: timeout account=a1 key=c1", "line 2: timeout account=a1 key=c2", "2 timed out")
	if n := len(regexp.MustCompile(`trace_id=[0-9a-f]{32}`).FindAllString(r.stdout, -1)); n != 2 {
		t.Fatalf("%d lines name their trace, want 2 (SPEC §13):\n%s", n, r.stdout)
	}

	// A file as editors leave them (byte-order mark, CRLF, no final line
	// end) with the worker's subtler refusals.
	r = s.run("publish", "--from-file", "testdata/mixed.jsonl")
	if n := len(regexp.MustCompile(`(?m)^line \d+: published \S+ \(sequence \d+, trace [0-9a-f]{32}\)$`).FindAllString(r.stdout, -1)); n != 2 {
		t.Fatalf("%d published lines name their event and trace, want 2 (SPEC §13):\n%s", n, r.stdout)
	}
	r.want(t, exitUsage, "summary: 2 published to revoke.scheduled, 3 invalid lines skipped",
		`line 3: invalid event: field "key_id" appears twice`,
		"line 4: invalid event: requested_at must be an RFC 3339 time",
		"line 5: invalid event: body must be a JSON object")
	if strings.Count(r.stderr, "line ") != 3 {
		t.Fatalf("stderr:\n%s", r.stderr)
	}

	// A line over the event size limit is skipped; reading goes on.
	big := `{"account_id":"a1","key_id":"d1"}` + "\n" + strings.Repeat("x", 70<<10) + "\n" + `{"account_id":"a1","key_id":"d2"}` + "\n"
	s.runStdin(big, "publish", "--from-file", "-").
		want(t, exitUsage, "line 2: invalid event: more than 65536 bytes; skipped", "summary: 2 published")
	if n := s.msgs("REVOCATIONS"); n != 9 {
		t.Fatalf("work stream holds %d events, want 9", n)
	}
}

func TestPublishBatchOfThousandWithWait(t *testing.T) {
	s := hStack(t, map[string]string{"REVOKER_CONCURRENCY": "64"})
	s.startWorker()

	const n = 1000
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `{"account_id":"acct","key_id":"bulk%04d","requested_by":"rotation-job"}`+"\n", i)
	}
	f := filepath.Join(t.TempDir(), "events.jsonl")
	if err := os.WriteFile(f, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r := s.run("publish", "--from-file", f, "--wait", "--timeout", "45s")
	t.Logf("1,000 events published and revoked in %s", time.Since(start))
	r.want(t, exitOK, fmt.Sprintf("summary: %d published to revoke.scheduled, %d revoked, 0 not_found, 0 dead_lettered, 0 timed out", n, n))
	seen := map[string]bool{}
	results := 0
	for _, l := range hLines(r.stdout) {
		if !strings.HasPrefix(l, "line ") {
			continue
		}
		results++
		if !strings.Contains(l, ": revoked ") {
			t.Fatalf("not revoked: %s", l)
		}
		seen[strings.Fields(l)[1]] = true
	}
	if results != n || len(seen) != n {
		t.Fatalf("%d result lines for %d distinct lines, want %d", results, len(seen), n)
	}
	for i := range n {
		if k := fmt.Sprintf("bulk%04d", i); !s.api.Deleted("acct", k) {
			t.Fatalf("%s not deleted", k)
		}
	}
}

// hDeadLetter publishes keys the API refuses once (400, api_rejected) and
// waits until each is dead-lettered.
func hDeadLetter(t *testing.T, s *stack, keys ...string) {
	t.Helper()
	var b strings.Builder
	for _, k := range keys {
		s.api.Script(k, 400)
		fmt.Fprintf(&b, `{"account_id":"acct","key_id":%q}`+"\n", k)
	}
	r := s.runStdin(b.String(), "publish", "--from-file", "-", "--wait", "--timeout", "20s")
	r.want(t, exitFailed, fmt.Sprintf("%d dead_lettered", len(keys)))
	if got := s.msgs("REVOCATIONS_DLQ"); got != uint64(len(keys)) {
		t.Fatalf("dead-letter stream holds %d, want %d", got, len(keys))
	}
}

func TestDLQListAndReplayAfterFaultCleared(t *testing.T) {
	s := hStack(t, nil)
	s.startWorker()
	keys := []string{"dl1", "dl2", "dl3"}
	hDeadLetter(t, s, keys...)

	r := s.run("dlq", "list")
	r.want(t, exitOK, "SEQ", "FAILED AT", "REASON", "SOURCE SUBJECT", "DETAIL")
	rows := hLines(r.stdout)
	if len(rows) != 4 {
		t.Fatalf("dlq list:\n%s", r.stdout)
	}
	seqOf := map[string]string{} // key → dead-letter sequence
	for i, row := range rows[1:] {
		f := strings.Fields(row)
		// SEQ FAILED-AT REASON SOURCE-SUBJECT ACCOUNT KEY STATUS ATTEMPTS DETAIL...
		if f[0] != fmt.Sprint(i+1) || f[2] != "api_rejected" || f[3] != "revoke.scheduled" || f[4] != "acct" || f[6] != "400" || f[7] != "1" {
			t.Fatalf("row %d: %q", i, row)
		}
		seqOf[f[5]] = f[0]
	}
	if len(seqOf) != 3 || seqOf["dl1"] == "" || seqOf["dl2"] == "" || seqOf["dl3"] == "" {
		t.Fatalf("keys listed: %v", seqOf)
	}
	s.run("dlq", "list", "--reason", "retries_exhausted").want(t, exitOK, "no dead letters with reason retries_exhausted")
	r = s.run("dlq", "list", "--limit", "2", "--json")
	r.want(t, exitOK, "showing the first 2")
	var rec deadLetterRow
	if err := json.Unmarshal([]byte(hLines(r.stdout)[0]), &rec); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(rec.Sequence) != "1" || seqOf[rec.KeyID] != "1" || rec.Reason != "api_rejected" || rec.SourceSubject != "revoke.scheduled" ||
		rec.EventID == "" || rec.FailedAt.IsZero() || !strings.Contains(rec.Body, `"`+rec.KeyID+`"`) || !strings.Contains(rec.Detail, "400") {
		t.Fatalf("record %+v", rec)
	}
	if len(hLines(r.stdout)) != 2 {
		t.Fatalf("--limit 2:\n%s", r.stdout)
	}

	// A dry run changes nothing.
	s.run("dlq", "replay", "--reason", "api_rejected", "--dry-run").
		want(t, exitOK, "would replay 1: event", "as replay:1", "would replay 3:")
	if n := s.msgs("REVOCATIONS_DLQ"); n != 3 {
		t.Fatalf("dry run changed the dead-letter stream: %d", n)
	}

	// The fault is cleared (the script is spent): replay revokes them all.
	s.run("dlq", "replay", "--seq", seqOf["dl2"]).want(t, exitOK, "replayed "+seqOf["dl2"]+": event", "key dl2")
	s.run("dlq", "replay", "--reason", "api_rejected").
		want(t, exitOK, "replayed "+seqOf["dl1"]+":", "replayed "+seqOf["dl3"]+":", "key dl1", "key dl3")
	queuetest.Eventually(t, 10*time.Second, "replayed keys revoked", func() bool {
		return s.api.Deleted("acct", "dl1") && s.api.Deleted("acct", "dl2") && s.api.Deleted("acct", "dl3")
	})
	// The worker removes each record as it records its replay, after the
	// call.
	queuetest.Eventually(t, 10*time.Second, "the replayed records removed", func() bool {
		return s.msgs("REVOCATIONS_DLQ") == 0
	})
	s.run("dlq", "list").want(t, exitOK, "no dead letters in REVOCATIONS_DLQ")
	s.run("dlq", "replay", "--all").want(t, exitOK, "no dead letters to replay")
	s.run("dlq", "replay", "--seq", seqOf["dl1"]).want(t, exitFailed, "dead letter "+seqOf["dl1"]+": not in REVOCATIONS_DLQ")

	// The audit trail links the replay to the event it replays.
	queuetest.Eventually(t, 5*time.Second, "outcome of the replay", func() bool { return len(s.outcomes("dl2")) == 2 })
	o := s.outcomes("dl2")
	if o[0].Outcome != "dead_lettered" || o[1].Outcome != "revoked" || o[1].EventID != "replay:"+seqOf["dl2"] {
		t.Fatalf("outcomes of dl2: %+v", o)
	}
}

func TestDLQReplayInterruptedAndRerun(t *testing.T) {
	s := hStack(t, nil)
	s.startWorker()
	keys := []string{"ir1", "ir2", "ir3", "ir4", "ir5", "ir6"}
	hDeadLetter(t, s, keys...)

	// A replay stopped halfway: the first half republished, the rest not.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg := s.cfg()
	recs, err := queue.ListDeadLetters(ctx, s.js, cfg.DLQStream, nil, 0)
	if err != nil || len(recs) != len(keys) {
		t.Fatalf("%d records, %v", len(recs), err)
	}
	rp, err := queue.NewReplayer(ctx, s.js, cfg.Topology())
	if err != nil {
		t.Fatal(err)
	}
	var half []string
	for _, rec := range recs[:3] {
		res, err := rp.Republish(ctx, rec)
		if err != nil || res.Duplicate {
			t.Fatalf("republish %d: %+v %v", rec.Sequence, res, err)
		}
		half = append(half, dlqRow(rec).KeyID)
	}
	queuetest.Eventually(t, 10*time.Second, "republished half revoked", func() bool {
		for _, k := range half {
			if s.okDeletes(k) != 1 {
				return false
			}
		}
		return true
	})
	// The worker took the republished half, and removed their records
	// (the operator's replay removes none).
	queuetest.Eventually(t, 10*time.Second, "the worker removing the half's records", func() bool {
		return s.msgs("REVOCATIONS_DLQ") == uint64(len(keys)-len(half))
	})

	// Run again: the rest is replayed; the half, its records gone, is
	// not replayed twice.
	r := s.run("dlq", "replay", "--all")
	r.want(t, exitOK)
	if got := strings.Count(r.stdout, "replayed "); got != len(keys)-len(half) {
		t.Fatalf("%d records replayed, want %d:\n%s", got, len(keys)-len(half), r.stdout)
	}
	queuetest.Eventually(t, 10*time.Second, "all revoked", func() bool {
		for _, k := range keys {
			if len(s.outcomes(k)) != 2 { // dead_lettered, then revoked
				return false
			}
		}
		return true
	})
	if n := s.msgs("REVOCATIONS_DLQ"); n != 0 {
		t.Fatalf("dead-letter stream still holds %d", n)
	}
	// Nothing lost, nothing revoked twice.
	for _, k := range keys {
		if n := s.okDeletes(k); n != 1 {
			t.Errorf("%s: %d successful deletes, want exactly 1", k, n)
		}
		if o := s.outcomes(k); o[1].Outcome != "revoked" {
			t.Errorf("%s: %+v", k, o)
		}
	}
	if n := s.msgs("REVOCATIONS"); n != 0 {
		t.Fatalf("work stream still holds %d", n)
	}
}

func TestBadInput(t *testing.T) {
	base := hClone(hFastEnv)
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		code int
		want string
	}{
		{"no command", nil, nil, exitUsage, "Usage:"},
		{"publish unknown flag", nil, []string{"publish", "--acount", "a"}, exitUsage, "flag provided but not defined: -acount"},
		{"publish stray argument", nil, []string{"publish", "--account", "a", "--key", "k", "extra"}, exitUsage, `unexpected argument "extra"`},
		{"publish without key", nil, []string{"publish", "--account", "a"}, exitUsage, "--account and --key are required"},
		{"publish path in key", nil, []string{"publish", "--account", "a", "--key", "../x"}, exitUsage, `key_id must be 1-32 characters of [A-Za-z0-9], got "../x"; nothing published`},
		{"publish 33-char key", nil, []string{"publish", "--account", "a", "--key", strings.Repeat("k", 33)}, exitUsage, "key_id must be 1-32 characters"},
		{"publish 33-char account", nil, []string{"publish", "--account", strings.Repeat("a", 33), "--key", "k"}, exitUsage, "account_id must be 1-32 characters"},
		{"publish bad id", nil, []string{"publish", "--account", "a", "--key", "k", "--id", "../x"}, exitUsage, `--id: "../x": only [A-Za-z0-9._:-] are allowed`},
		{"publish empty id", nil, []string{"publish", "--account", "a", "--key", "k", "--id", ""}, exitUsage, "--id: must be 1-128 characters"},
		{"publish urgent and subject", nil, []string{"publish", "--account", "a", "--key", "k", "--urgent", "--subject", "revoke.urgent"}, exitUsage, "--urgent or --subject, not both"},
		{"publish unknown subject", nil, []string{"publish", "--account", "a", "--key", "k", "--subject", "revoke.other"}, exitUsage, `--subject "revoke.other" is not a work subject (revoke.urgent, revoke.scheduled)`},
		{"publish wait without outcomes", map[string]string{"REVOKER_OUTCOME_SUBJECT": ""}, []string{"publish", "--account", "a", "--key", "k", "--wait"}, exitUsage, "--wait needs outcome records, but REVOKER_OUTCOME_SUBJECT is empty"},
		// SPEC §6: the message names the flag when the value came from one.
		{"publish wait without outcomes, by flag", nil, []string{"publish", "--account", "a", "--key", "k", "--wait", "--outcome-subject", ""}, exitUsage, "--wait needs outcome records, but --outcome-subject is empty"},
		{"publish bad timeout", nil, []string{"publish", "--account", "a", "--key", "k", "--wait", "--timeout", "0s"}, exitUsage, "--timeout must be positive"},
		{"publish file and key", nil, []string{"publish", "--from-file", "x.jsonl", "--key", "k"}, exitUsage, "--key cannot be used with --from-file"},
		{"publish missing file", nil, []string{"publish", "--from-file", "/nonexistent/events.jsonl"}, exitUsage, "no such file"},
		{"publish bad config", map[string]string{"REVOKER_NATS_URL": "http://x"}, []string{"publish", "--account", "a", "--key", "k"}, exitUsage, "REVOKER_NATS_URL"},
		{"dlq without command", nil, []string{"dlq"}, exitUsage, "list or replay"},
		// A secret as a flag works, with a warning on any command (SPEC §6).
		{"verify with a token flag", map[string]string{"REVOKER_NATS_URL": "nats://127.0.0.1:1"}, []string{"verify", "--cloudflare-api-token", "s3cr3t"}, exitFailed, "revoker verify: warning: --cloudflare-api-token is readable by anyone"},
		{"outcomes with a password in the URL", nil, []string{"outcomes", "--nats-url", "nats://u:pw@127.0.0.1:1"}, exitFailed, "revoker outcomes: warning: the secret in --nats-url is readable by anyone"},
		{"dlq replay unknown reason", nil, []string{"dlq", "replay", "--reason", "retries-exhausted"}, exitUsage, `--reason "retries-exhausted" is not a dead-letter reason (invalid_event, account_not_allowed, api_rejected, retries_exhausted, unauthorized, not_found)`},
		{"dlq list unknown reason", nil, []string{"dlq", "list", "--reason", "bogus"}, exitUsage, `--reason "bogus" is not a dead-letter reason`},
		{"dlq unknown command", nil, []string{"dlq", "purge"}, exitUsage, `unknown command "purge"`},
		{"dlq list unknown flag", nil, []string{"dlq", "list", "--all"}, exitUsage, "flag provided but not defined: -all"},
		{"dlq list bad limit", nil, []string{"dlq", "list", "--limit", "-1"}, exitUsage, "--limit must be 0 or more"},
		{"dlq replay no selector", nil, []string{"dlq", "replay"}, exitUsage, "say which records to replay: --all, --seq N,... or --reason R"},
		{"dlq replay dry run only", nil, []string{"dlq", "replay", "--dry-run"}, exitUsage, "say which records to replay"},
		{"dlq replay bad seq", nil, []string{"dlq", "replay", "--seq", "1,x"}, exitUsage, `--seq: "x" is not a sequence number`},
		{"dlq replay seq 0", nil, []string{"dlq", "replay", "--seq", "0"}, exitUsage, `--seq: "0" is not a sequence number`},
		{"dlq replay all and seq", nil, []string{"dlq", "replay", "--all", "--seq", "1"}, exitUsage, "--all or --seq, not both"},
		{"dlq replay empty reason", nil, []string{"dlq", "replay", "--reason", ""}, exitUsage, "--reason needs a reason"},
		{"outcomes unknown flag", nil, []string{"outcomes", "--ky", "k"}, exitUsage, "flag provided but not defined: -ky"},
		{"outcomes bad since", nil, []string{"outcomes", "--since", "yesterday"}, exitUsage, `invalid value "yesterday" for flag -since`},
		{"outcomes negative since", nil, []string{"outcomes", "--since", "-1h"}, exitUsage, "--since must be positive"},
		{"outcomes stray argument", nil, []string{"outcomes", "k1"}, exitUsage, `unexpected argument "k1"`},
		// A selector is a token of the subject read: a space would find
		// none of a revoked key's records, a wildcard other keys'.
		{"outcomes key with a space", nil, []string{"outcomes", "--key", "k1 "}, exitUsage, `--key must be 1-32 characters of [A-Za-z0-9] (or _), got "k1 "`},
		{"outcomes wildcard key", nil, []string{"outcomes", "--key", ">"}, exitUsage, "--key must be 1-32 characters"},
		{"outcomes wildcard key of an account", nil, []string{"outcomes", "--account", "acc1", "--key", "*"}, exitUsage, "--key must be 1-32 characters"},
		{"outcomes bad account", nil, []string{"outcomes", "--account", "acc-1"}, exitUsage, "--account must be 1-32 characters"},
		{"outcomes without outcomes", map[string]string{"REVOKER_OUTCOME_SUBJECT": ""}, []string{"outcomes", "--key", "k1"}, exitUsage, "REVOKER_OUTCOME_SUBJECT is empty: outcome records are off"},
		{"outcomes without outcomes, by flag", nil, []string{"outcomes", "--outcome-subject", ""}, exitUsage, "--outcome-subject is empty"},
		{"dlq replay all and reason", nil, []string{"dlq", "replay", "--all", "--reason", "api_rejected"}, exitUsage, "give --reason alone, not with --all or --seq"},
		{"dlq replay seq and reason", nil, []string{"dlq", "replay", "--seq", "1", "--reason", "api_rejected"}, exitUsage, "give --reason alone"},
		{"version stray argument", nil, []string{"version", "extra"}, exitUsage, `unexpected argument "extra"`},
		{"demo bad timeout", nil, []string{"demo", "--timeout", "-1s"}, exitUsage, "--timeout must be positive"},
		{"demo keep and serve", nil, []string{"demo", "--keep", "--serve"}, exitUsage, "--keep is for the table"},
		{"demo table with a NATS URL", nil, []string{"demo", "--nats-url", "nats://127.0.0.1:4222"}, exitUsage, "--nats-url: not used here"},
		// Its help lists only what it may read: a flag of serve's is unknown.
		{"demo with an ingress address", nil, []string{"demo", "--ingress-addr", "127.0.0.1:0"}, exitUsage, "flag provided but not defined: -ingress-addr"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := hClone(base)
			env["REVOKER_NATS_URL"] = "nats://127.0.0.1:1" // never dialled: usage is checked first
			for k, v := range tc.env {
				env[k] = v
			}
			hRun(t, env, "", tc.args...).want(t, tc.code, tc.want)
		})
	}

	// An unreachable server fails at once (exit 1), naming it without its credentials.
	for _, args := range [][]string{
		{"publish", "--account", "a", "--key", "k"},
		{"publish", "--account", "a", "--key", "k", "--wait"},
		{"publish", "--from-file", "-"},
		{"dlq", "list"},
		{"dlq", "replay", "--all"},
		{"outcomes", "--key", "k"},
		{"outcomes", "--account", "_"}, // invalid events' records are filed under _
	} {
		t.Run("unreachable "+strings.Join(args, " "), func(t *testing.T) {
			env := hClone(base)
			env["REVOKER_NATS_URL"] = "nats://operator:s3cret@127.0.0.1:1"
			start := time.Now()
			r := hRun(t, env, "", args...)
			r.want(t, exitFailed, "cannot connect to NATS at nats://[redacted]@127.0.0.1:1")
			if strings.Contains(r.stdout+r.stderr, "s3cret") {
				t.Fatalf("password shown: %s", r.stderr)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Fatalf("took %s to give up", d)
			}
		})
	}
}
