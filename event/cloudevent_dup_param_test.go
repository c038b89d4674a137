package event_test

import (
	"testing"

	"github.com/revoker/revoker/event"
)

// TestCloudEventWithDuplicateParameter (98b8973): "a CloudEvent is one
// whatever its parameters". A Content-Type naming the CloudEvents type
// with a parameter given twice ("charset=utf-8; charset=latin1") makes
// mime.ParseMediaType fail with "duplicate parameter name", which is not
// ErrInvalidMediaParameter, and returns no media type: IsCloudEvent says
// no, and the body is read as a plain event, its envelope's own
// account_id/key_id picking the key instead of data's.
func TestCloudEventWithDuplicateParameter(t *testing.T) {
	const ct = "application/cloudevents+json; charset=utf-8; charset=latin1"
	if !event.IsCloudEvent(ct) {
		t.Errorf("IsCloudEvent(%q) = false", ct)
	}
	body := []byte(`{"specversion":"1.0","id":"e1","source":"s","type":"t","account_id":"acct1","key_id":"keyEnvelope",` +
		`"data":{"account_id":"acct1","key_id":"keyData"}}`)
	if ev, err := event.DecodeMessage(ct, body); err == nil && ev.KeyID == "keyEnvelope" {
		t.Errorf("DecodeMessage(%q) took the envelope's key_id %q, not data's", ct, ev.KeyID)
	}
}
