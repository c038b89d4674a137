package service_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/service"
)

// TestStatusReplyEscapesUnsafeCharacters: a record holds an event's free
// text as it came (requested_by here); revoker.status answers it with C1
// and bidirectional controls escaped, as `outcomes --json` prints them,
// never raw to the terminal of a `nats req` (SPEC §10).
func TestStatusReplyEscapesUnsafeCharacters(t *testing.T) {
	s := newStack(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	at := time.Now().UTC().Format(time.RFC3339Nano)
	storeRecord(ctx, t, s, event.Record{EventID: "ev-bidi", AccountID: "acct1", KeyID: "bidikey", Outcome: event.Revoked, Status: 200,
		Stream: s.cfg.Stream, Subject: s.cfg.Subjects[0], Sequence: 7, Attempts: 1, PublishedAt: at, CompletedAt: at,
		RequestedBy: "ops \u202egnp.exe\u0085"})
	reply := s.request(service.StatusSubject, `{"account_id":"acct1","key_id":"bidikey"}`)
	if code := serviceError(reply); code != "" {
		t.Fatalf("status: error %s", code)
	}
	if i := strings.IndexAny(string(reply.Data), "\u202e\u0085"); i >= 0 {
		t.Fatalf("status answered an unsafe character raw: %q", reply.Data)
	}
	if !strings.Contains(string(reply.Data), `\u202e`) {
		t.Fatalf("status answered %s; want requested_by with its characters escaped", reply.Data)
	}
}
