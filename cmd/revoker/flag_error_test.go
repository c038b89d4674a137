package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/untrusted"
)

// TestBadFlagOneLine (SPEC §6, §7): a bad or unknown flag stops the
// command with exit 2 and one line on stderr naming it, not the error
// followed by every flag's help; -h prints that help, on stdout, exit 0.
func TestBadFlagOneLine(t *testing.T) {
	env := map[string]string{"REVOKER_NATS_URL": "nats://127.0.0.1:1"} // never dialled
	for _, tc := range []struct {
		args []string
		flag string
	}{
		{[]string{"outcomes", "--no-such-flag"}, "-no-such-flag"},
		{[]string{"publish", "--account", "a", "--key", "k", "--timeout", "soon"}, "-timeout"},
		{[]string{"dlq", "list", "--limit", "many"}, "-limit"},
		{[]string{"dlq", "list", "--limit", "99999999999999999999"}, "-limit"},
		{[]string{"serve", "--concurrency", "x"}, "-concurrency"},
		{[]string{"verify", "--since", "yesterday"}, "-since"},
	} {
		code, stdout, stderr := runCmd(context.Background(), env, tc.args...)
		lines := hLines(stderr)
		if code != exitUsage || len(lines) != 1 || !strings.Contains(stderr, tc.flag) || stdout != "" {
			t.Errorf("%v: exit %d, %d lines on stderr (want 2, one line naming %s):\n%s\nstdout: %q", tc.args, code, len(lines), tc.flag, stderr, stdout)
		}
	}
	code, stdout, stderr := runCmd(context.Background(), env, "outcomes", "-h")
	if code != exitOK || !strings.Contains(stdout, "-account") || stderr != "" {
		t.Errorf("outcomes -h: exit %d, stdout %q, stderr %q; want 0 and the flags on stdout", code, stdout, stderr)
	}
}

// TestDuplicateTraceFromRecordNotPrintedRaw (SPEC §10, §13): a duplicate
// publish of an event already done prints the trace id its outcome record
// names. A record's field reaches the terminal only as a trace id, or not
// at all: one holding control or bidi characters is not printed raw.
func TestDuplicateTraceFromRecordNotPrintedRaw(t *testing.T) {
	s := hStack(t, nil)
	s.ensure()
	cfg := s.cfg()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m := nats.NewMsg("revoke.scheduled")
	m.Data = []byte(`{"account_id":"acct1","key_id":"key1"}`)
	m.Header.Set(jetstream.MsgIDHeader, "dup-1")
	ack, err := s.js.PublishMsg(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	st, err := s.js.Stream(ctx, cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	// Done: the event has left the work stream.
	if err := st.DeleteMsg(ctx, ack.Sequence); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Format(time.RFC3339Nano)
	rec := event.Record{EventID: "dup-1", AccountID: "acct1", KeyID: "key1", Outcome: event.Revoked, Status: 200,
		Subject: "revoke.scheduled", Sequence: ack.Sequence, Stream: cfg.Stream, PublishedAt: now, CompletedAt: now,
		TraceID: "0af7\u202e\u009b31m\x1b[2J"}
	b, _ := json.Marshal(rec)
	if _, err := s.js.Publish(ctx, cfg.OutcomeSubject+".acct1.key1", b); err != nil {
		t.Fatal(err)
	}
	r := s.run("publish", "--account", "acct1", "--key", "key1", "--id", "dup-1")
	unsafe := func(r rune) bool { return r != '\n' && untrusted.Unsafe(r) }
	if strings.IndexFunc(r.stdout+r.stderr, unsafe) >= 0 {
		t.Fatalf("exit %d; raw control or bidi character in output:\nstdout: %q\nstderr: %q", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "trace none") {
		t.Errorf("stdout %q: want the record's trace id, which is none, as none", r.stdout)
	}
}
