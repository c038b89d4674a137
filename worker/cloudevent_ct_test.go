package worker_test

import (
	"testing"
)

// TestCloudEventBadContentTypeParameter: a message labelled
// application/cloudevents+json with a parameter that does not parse is
// read by the worker as a plain event, so fields at the envelope's top
// level (not its data, SPEC §14) choose the key that is revoked.
func TestCloudEventBadContentTypeParameter(t *testing.T) {
	const body = `{"specversion":"1.0","id":"ce-1","source":"/soar","type":"t",` +
		`"account_id":"other","key_id":"smuggled",` +
		`"data":{"account_id":"acct1","key_id":"key1"}}`
	h := newHarness(t, nil, answer(200, revoked, 0))
	h.handle(&fakeDelivery{body: body, header: map[string]string{"Content-Type": "application/cloudevents+json; charset"}})
	for _, k := range h.api.keys {
		if k != "key1" {
			t.Fatalf("DELETE for key %q: the CloudEvent's envelope was read as the event (data names key1)", k)
		}
	}
}
