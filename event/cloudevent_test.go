package event_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/revoker/revoker/event"
)

const ceOK = `{"specversion":"1.0","id":"ce-1","source":"/soar/playbook","type":"com.example.revoke",
 "datacontenttype":"application/json","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
 "data":{"account_id":"acct1","key_id":"key1","reason":"leaked"}}`

func TestDecodeCloudEvent(t *testing.T) {
	ev, ce, err := event.DecodeCloudEvent([]byte(ceOK))
	if err != nil {
		t.Fatal(err)
	}
	if ev.AccountID != "acct1" || ev.KeyID != "key1" || ev.Reason != "leaked" {
		t.Fatalf("event %+v", ev)
	}
	if ce.ID != "ce-1" || ce.Source != "/soar/playbook" || ce.Type != "com.example.revoke" ||
		ce.TraceParent != "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" {
		t.Fatalf("envelope %+v", ce)
	}
}

func TestDecodeCloudEventRefuses(t *testing.T) {
	data := `"data":{"account_id":"acct1","key_id":"key1"}`
	for _, tc := range []struct{ name, body, want string }{
		{"no specversion", `{"id":"1","source":"s","type":"t",` + data + `}`, "specversion"},
		{"specversion 0.3", `{"specversion":"0.3","id":"1","source":"s","type":"t",` + data + `}`, "specversion"},
		{"specversion a number", `{"specversion":1.0,"id":"1","source":"s","type":"t",` + data + `}`, "specversion must be a string"},
		{"no id", `{"specversion":"1.0","source":"s","type":"t",` + data + `}`, "id is missing"},
		{"empty id", `{"specversion":"1.0","id":"","source":"s","type":"t",` + data + `}`, "id is missing"},
		{"no source", `{"specversion":"1.0","id":"1","type":"t",` + data + `}`, "source"},
		{"no type", `{"specversion":"1.0","id":"1","source":"s",` + data + `}`, "type"},
		{"no data", `{"specversion":"1.0","id":"1","source":"s","type":"t"}`, "data is missing"},
		{"data a string", `{"specversion":"1.0","id":"1","source":"s","type":"t","data":"{}"}`, "data must be a JSON object, got a string"},
		{"data an array", `{"specversion":"1.0","id":"1","source":"s","type":"t","data":[]}`, "data must be a JSON object, got an array"},
		{"data_base64", `{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"e30="}`, "data_base64"},
		{"xml data", `{"specversion":"1.0","id":"1","source":"s","type":"t","datacontenttype":"application/xml",` + data + `}`, "datacontenttype"},
		{"repeated attribute", `{"specversion":"1.0","id":"1","id":"2","source":"s","type":"t",` + data + `}`, "appears twice"},
		{"repeated field in data", `{"specversion":"1.0","id":"1","source":"s","type":"t","data":{"account_id":"a","account_id":"b","key_id":"k"}}`, "appears twice"},
		{"bad key in data", `{"specversion":"1.0","id":"1","source":"s","type":"t","data":{"account_id":"a","key_id":"../x"}}`, "key_id must be"},
		{"two objects", `{"specversion":"1.0"} {}`, "not JSON"},
		{"too deep", `{"specversion":"1.0","id":"1","source":"s","type":"t","x":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `,` + data + `}`, "nested deeper"},
		{"data nested 33 levels", ceWith(`{"account_id":"a","key_id":"k","d":` + nested(32) + `}`), "nested deeper"},
		{"data over 64 KiB", ceWith(`{"account_id":"a","key_id":"k","x":"` + strings.Repeat("x", event.MaxBytes) + `"}`), "data is"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev, _, err := event.DecodeCloudEvent([]byte(tc.body))
			if !errors.Is(err, event.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
			// Filed under the ids its data names where it names them and
			// is sound (SPEC §5a), as a plain event's record is.
			if strings.HasSuffix(tc.body, data+`}`) && !strings.Contains(tc.name, "repeated") && tc.want != "nested deeper" && (ev.AccountID != "acct1" || ev.KeyID != "key1") {
				t.Errorf("refused with ids %q/%q, want those of its data, acct1/key1", ev.AccountID, ev.KeyID)
			}
		})
	}
}

// TestDecodeCloudEventJSONDataTypes: every datacontenttype the CloudEvents
// JSON format reads as JSON carries the event.
func TestDecodeCloudEventJSONDataTypes(t *testing.T) {
	for _, ct := range []string{"application/json", "application/json; charset=utf-8", "text/json",
		"application/vnd.example.revoke+json", "Application/JSON"} {
		body := `{"specversion":"1.0","id":"1","source":"s","type":"t","datacontenttype":"` + ct + `",` +
			`"data":{"account_id":"acct1","key_id":"key1"}}`
		if ev, _, err := event.DecodeCloudEvent([]byte(body)); err != nil || ev.KeyID != "key1" {
			t.Errorf("datacontenttype %q: %+v, %v", ct, ev, err)
		}
	}
}

// TestDecodeCloudEventRefusedKeepsItsEnvelope: a CloudEvent refused for
// its data or its envelope's rules still names its id and trace context,
// for its dead letter and record. (A body that is not sound JSON names
// nothing: nothing read from it can be trusted.)
func TestDecodeCloudEventRefusedKeepsItsEnvelope(t *testing.T) {
	for _, data := range []string{`{"account_id":"acct1","key_id":"../x"}`, `"x"`, `{"account_id":"acct1","key_id":"k"},"data_base64":"e30="`} {
		body := `{"specversion":"1.0","id":"ce-9","source":"s","type":"t","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","data":` + data + `}`
		_, ce, err := event.DecodeCloudEvent([]byte(body))
		if !errors.Is(err, event.ErrInvalid) || ce.ID != "ce-9" || ce.TraceParent == "" {
			t.Errorf("data %s: envelope %+v, error %v; want an invalid event keeping id ce-9 and its traceparent", data, ce, err)
		}
	}
}

func TestIsCloudEvent(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/cloudevents+json":                true,
		"application/cloudevents+json; charset=utf-8": true,
		"Application/CloudEvents+JSON":                true,
		"application/json":                            false,
		"":                                            false,
		"application/cloudevents-batch+json":          false,
	} {
		if got := event.IsCloudEvent(ct); got != want {
			t.Errorf("IsCloudEvent(%q) = %v", ct, got)
		}
	}
}

// FuzzDecodeCloudEvent: whatever the body, the decoder neither panics nor
// accepts an event that breaks a rule of SPEC §2.
func FuzzDecodeCloudEvent(f *testing.F) {
	f.Add([]byte(ceOK))
	f.Add([]byte(`{"specversion":"1.0","id":"1","source":"s","type":"t","data":{"account_id":"a","key_id":"k"}}`))
	f.Add([]byte(`{"specversion":"1.0","data":[]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, ce, err := event.DecodeCloudEvent(body)
		if err != nil {
			if !errors.Is(err, event.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if ev.Validate() != nil || ce.ID == "" || ce.Source == "" || ce.Type == "" {
			t.Fatalf("accepted %+v %+v", ev, ce)
		}
	})
}

// ceWith is a CloudEvent around data.
func ceWith(data string) string {
	return `{"specversion":"1.0","id":"1","source":"s","type":"t","data":` + data + `}`
}

// nested is n levels of objects.
func nested(n int) string { return strings.Repeat(`{"a":`, n) + "1" + strings.Repeat("}", n) }

// Every rule of §2 applies to data, counted from data (SPEC §14): data
// nested exactly 32 levels deep is taken, and so is data just under 64 KiB
// in an envelope that takes the body past it.
func TestDecodeCloudEventHoldsDataToTheEventsBounds(t *testing.T) {
	deep := `{"account_id":"a","key_id":"k","d":` + nested(31) + `}` // 32 levels
	if _, err := event.Decode([]byte(deep)); err != nil {
		t.Fatalf("as an event: %v", err)
	}
	if _, _, err := event.DecodeCloudEvent([]byte(ceWith(deep))); err != nil {
		t.Fatalf("32 levels of data refused: %v", err)
	}
	big := `{"account_id":"a","key_id":"k","x":"` + strings.Repeat("x", event.MaxBytes-64) + `"}`
	if _, err := event.Decode([]byte(big)); err != nil {
		t.Fatalf("as an event: %v", err)
	}
	body := `{"specversion":"1.0","id":"1","source":"s","type":"t","ext":"` + strings.Repeat("e", 1024) + `","data":` + big + `}`
	if _, _, err := event.DecodeCloudEvent([]byte(body)); err != nil || len(body) <= event.MaxBytes {
		t.Fatalf("data of %d bytes in a body of %d refused: %v", len(big), len(body), err)
	}
}

// TestRefusedCloudEventKeepsItsID: an envelope refused because another
// attribute is not a string still carries the id read from it, so the
// event's dead letter and record name it (SPEC §14), not
// <stream>:<sequence>.
func TestRefusedCloudEventKeepsItsID(t *testing.T) {
	for _, body := range []string{
		`{"specversion":"1.0","id":"ce-9","source":"s","type":"t","tracestate":false,"data":{"account_id":"acct1","key_id":"key1"}}`,
		`{"specversion":"1.0","id":"ce-9","source":"s","type":"t","traceparent":5,"data":{"account_id":"acct1","key_id":"key1"}}`,
		`{"specversion":"1.0","id":"ce-9","source":"s","type":"t","datacontenttype":[],"data":{"account_id":"acct1","key_id":"key1"}}`,
	} {
		_, ce, err := event.DecodeCloudEvent([]byte(body))
		if !errors.Is(err, event.ErrInvalid) {
			t.Fatalf("%s: error %v, want invalid", body, err)
		}
		if ce.ID != "ce-9" {
			t.Errorf("%s: refused (%v) with envelope %+v: the id ce-9 it holds is lost", body, err, ce)
		}
	}
}
