package worker_test

import (
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/event"
)

// TestInvalidEventOutcomeLineNamesAccountAndKey: every outcome has one log
// line with event id, account, key, outcome, attempts, status and CF-Ray.
// An event dead-lettered as invalid_event whose account_id and key_id pass
// their rules (only its reason is too long) is filed under them in its
// record, and its line names them too.
func TestInvalidEventOutcomeLineNamesAccountAndKey(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	h := newHarnessLog(t, nil, zap.New(core))
	body := `{"account_id":"acct1","key_id":"key1","reason":"` + strings.Repeat("r", 1025) + `"}`
	h.handle(&fakeDelivery{body: body})
	o := onlyRecord(t, h)
	if o.Reason != event.InvalidEvent || o.AccountID != "acct1" || o.KeyID != "key1" {
		t.Fatalf("record %+v; want invalid_event filed under acct1/key1", o)
	}
	lines := logs.FilterField(zap.String("outcome", string(event.DeadLettered))).All()
	if len(lines) != 1 {
		t.Fatalf("%d outcome lines, want 1: %v", len(lines), logs.All())
	}
	m := lines[0].ContextMap()
	for _, k := range []string{"event_id", "account", "key", "outcome", "attempts", "status", "cf_ray"} {
		if _, ok := m[k]; !ok {
			t.Errorf("outcome line %q has no %q field (record says account %q, key %q): %v", lines[0].Message, k, o.AccountID, o.KeyID, m)
		}
	}
	if m["account"] != o.AccountID || m["key"] != o.KeyID {
		t.Errorf("outcome line names %v/%v, the record %s/%s", m["account"], m["key"], o.AccountID, o.KeyID)
	}
}
