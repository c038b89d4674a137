package event_test

import (
	"testing"

	"github.com/revoker/revoker/event"
)

func TestDecodeRecordStrict(t *testing.T) {
	const good = `{"event_id":"e","account_id":"a1","key_id":"k1","outcome":"revoked","status":200,"cf_ray":"r","attempts":1,"subject":"revoke.urgent","sequence":4,"published_at":"2026-01-02T03:04:05Z","completed_at":"2026-01-02T03:04:06Z","worker":"w"}`
	for _, tc := range []struct {
		name, body string
		ok         bool
	}{
		{"as a worker writes it", good, true},
		{"an unknown field", `{"outcome":"revoked","key_id":"k1","extra":{"a":[1,2]}}`, true},
		{"a field repeated", `{"outcome":"dead_lettered","key_id":"k1","outcome":"revoked"}`, false},
		{"a field repeated through an escape", `{"outcome":"dead_lettered","key_id":"k1","\u006futcome":"revoked"}`, false},
		{"a field in capitals", `{"outcome":"revoked","key_id":"k1","KEY_ID":"k2"}`, false},
		{"a field in capitals alone", `{"outcome":"revoked","Key_Id":"k1"}`, false},
		{"a long s for s", `{"outcome":"revoked","key_id":"k1","ſubject":"x"}`, false},
		{"a Kelvin sign for k", `{"outcome":"revoked","\u212aey_id":"k2"}`, false},
		{"not final", `{"outcome":"requeued","key_id":"k1"}`, false},
		{"no outcome", `{"key_id":"k1"}`, false},
		{"not an object", `["outcome","revoked"]`, false},
		{"two objects", good + good, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := event.DecodeRecord([]byte(tc.body))
			if (err == nil) != tc.ok {
				t.Fatalf("DecodeRecord(%s) = %v, want ok %v", tc.body, err, tc.ok)
			}
		})
	}
}

// FuzzDecodeRecord: whatever it is given, DecodeRecord does not panic, and
// a record it accepts says the same once written again as a worker writes
// it.
func FuzzDecodeRecord(f *testing.F) {
	f.Add([]byte(`{"event_id":"e","account_id":"a1","key_id":"k1","outcome":"revoked","status":200,"sequence":4}`))
	f.Add([]byte(`{"outcome":"not_found","KEY_ID":"x","key_id":"y"}`))
	f.Add([]byte(`{"outcome":"dead_lettered","reason":"invalid_event","a":{"b":{"c":[{}]}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := event.DecodeRecord(b)
		if err != nil {
			return
		}
		again, err := event.DecodeRecord(r.AppendJSON(nil))
		if err != nil {
			t.Fatalf("a record accepted (%q) is refused once written again: %v", b, err)
		}
		if again != r {
			t.Fatalf("a record accepted (%q) says %+v, written again %+v", b, r, again)
		}
	})
}
