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
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/untrusted"
)

// TestNothingRawReachesTheTerminal: records are data anyone able to write
// their subjects controls. C0, C1 and bidirectional controls in them never
// reach an operator's terminal raw, in tables or in --json.
func TestNothingRawReachesTheTerminal(t *testing.T) {
	s := hStack(t, nil)
	s.ensure()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	evil := "x\u202egnp.exe\u0085\u2066\x1b[31m"

	dl := nats.NewMsg("revoke.dlq")
	dl.Data = []byte(`{"account_id":"acc1","key_id":"k1","reason":"` + "\u202e" + `"}`)
	for _, h := range []string{queue.HeaderReason, queue.HeaderDetail, queue.HeaderEventID, queue.HeaderSourceSubject} {
		dl.Header.Set(h, evil)
	}
	if _, err := s.js.PublishMsg(ctx, dl, jetstream.WithExpectStream("REVOCATIONS_DLQ")); err != nil {
		t.Fatal(err)
	}
	out := nats.NewMsg("revoke.outcome.acc1.k1")
	body, err := json.Marshal(event.Record{EventID: evil, AccountID: "acc1", KeyID: "k1", Outcome: event.Revoked,
		CFRay: evil, CompletedAt: evil, Stream: "REVOCATIONS", Sequence: 1})
	if err != nil {
		t.Fatal(err)
	}
	out.Data = body
	if _, err := s.js.PublishMsg(ctx, out, jetstream.WithExpectStream("REVOCATION_OUTCOMES")); err != nil {
		t.Fatal(err)
	}

	for _, args := range [][]string{
		{"dlq", "list"}, {"dlq", "list", "--json"},
		{"outcomes", "--key", "k1"}, {"outcomes", "--account", "acc1", "--json"},
		{"dlq", "replay", "--all", "--dry-run"},
	} {
		r := s.run(args...)
		all := r.stdout + r.stderr
		if !strings.Contains(all, "acc1") {
			t.Errorf("%v printed nothing of the records:\n%s", args, all)
		}
		if i := strings.IndexFunc(all, func(r rune) bool { return r != '\n' && untrusted.Unsafe(r) }); i >= 0 {
			t.Errorf("%v printed a raw control or bidirectional character at %d:\n%q", args, i, all)
		}
	}
}
