package event_test

import (
	"errors"
	"testing"

	"github.com/revoker/revoker/event"
)

// TestCloudEventContentTypeBadParameter: a message whose Content-Type
// names application/cloudevents+json, but whose parameters do not parse,
// is still labelled a CloudEvent. DecodeMessage must not read its envelope
// as a plain event: the envelope's own top-level fields would then pick
// the key, not its data (SPEC §14: "its data is the event of §2").
func TestCloudEventContentTypeBadParameter(t *testing.T) {
	const body = `{"specversion":"1.0","id":"ce-1","source":"/soar","type":"t",` +
		`"account_id":"other","key_id":"smuggled",` +
		`"data":{"account_id":"acct1","key_id":"key1"}}`
	for _, ct := range []string{
		"application/cloudevents+json; charset",
		"application/cloudevents+json;;",
		`application/cloudevents+json; charset="utf-8`,
		"application/cloudevents+json; charset=utf-8, application/json",
	} {
		t.Run(ct, func(t *testing.T) {
			ev, err := event.DecodeMessage(ct, []byte(body))
			if err == nil && ev.KeyID != "key1" {
				t.Fatalf("Content-Type %q: decoded as a plain event, key %s/%s taken from the envelope, not from data", ct, ev.AccountID, ev.KeyID)
			}
			// A well-formed envelope under such a type is read as the
			// CloudEvent it is, not refused as a plain event without ids.
			const clean = `{"specversion":"1.0","id":"ce-1","source":"/soar","type":"t","data":{"account_id":"acct1","key_id":"key1"}}`
			if ev, err := event.DecodeMessage(ct, []byte(clean)); err != nil || ev.KeyID != "key1" {
				t.Fatalf("Content-Type %q: a well-formed CloudEvent decoded as %s/%s, %v; want acct1/key1", ct, ev.AccountID, ev.KeyID, err)
			}
		})
	}
}

// TestCloudEventAttributeTypes: CloudEvents v1.0 fixes the type of
// each context attribute (subject String, time Timestamp per RFC 3339,
// dataschema URI) and the JSON format writes them as JSON strings; an
// attribute name is lower-case ASCII letters and digits only. A CloudEvent
// that breaks these rules is an invalid event (SPEC §14).
func TestCloudEventAttributeTypes(t *testing.T) {
	const data = `"data":{"account_id":"acct1","key_id":"key1"}}`
	const head = `{"specversion":"1.0","id":"ce-1","source":"/soar","type":"t",`
	for name, body := range map[string]string{
		"time number":       head + `"time":5,` + data,
		"time not RFC 3339": head + `"time":"yesterday",` + data,
		"subject number":    head + `"subject":5,` + data,
		"subject object":    head + `"subject":{"a":1},` + data,
		"dataschema number": head + `"dataschema":5,` + data,
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := event.DecodeCloudEvent([]byte(body))
			if !errors.Is(err, event.ErrInvalid) {
				t.Fatalf("%s: accepted (err=%v); a CloudEvent breaking its attribute types is an invalid event", name, err)
			}
		})
	}
}

// TestCloudEventExtensionRules: CloudEvents v1.0 §3.1.1 allows
// attribute names of lower-case ASCII letters and digits only, and an
// extension's value is one of the type system's scalar types (never a
// JSON object or array). "Data" beside "data", or "account_id" at the
// envelope's top level, is no CloudEvent attribute at all.
func TestCloudEventExtensionRules(t *testing.T) {
	const data = `"data":{"account_id":"acct1","key_id":"key1"}}`
	const head = `{"specversion":"1.0","id":"ce-1","source":"/soar","type":"t",`
	for name, body := range map[string]string{
		"upper-case name":  head + `"Data":{"account_id":"other","key_id":"k2"},` + data,
		"underscore name":  head + `"key_id":"k2",` + data,
		"object extension": head + `"myext":{"a":1},` + data,
		"array extension":  head + `"myext":[1,2],` + data,
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := event.DecodeCloudEvent([]byte(body))
			if !errors.Is(err, event.ErrInvalid) {
				t.Fatalf("%s: accepted (err=%v); it breaks the CloudEvents attribute rules", name, err)
			}
		})
	}
}
