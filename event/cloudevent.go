package event

import (
	"bytes"
	"encoding/json"
	"mime"
	"net/url"
	"strings"
	"unicode/utf8"
)

// CloudEventsContentType marks a message whose body is a CloudEvent in
// structured mode (SPEC §14), as Dapr, Knative and Argo Events publish.
const CloudEventsContentType = "application/cloudevents+json"

// CloudEvent is what revoker takes from a CloudEvent's envelope: its data
// is the event of SPEC §2.
type CloudEvent struct {
	ID     string
	Source string
	Type   string
	// TraceParent and TraceState are the distributed-tracing extension,
	// "" when absent.
	TraceParent string
	TraceState  string
}

// cloudEventFields are the envelope attributes read; every other one is
// skipped like an unknown event field.
var cloudEventFields = [...]string{"specversion", "id", "source", "type", "data", "datacontenttype", "data_base64", "traceparent", "tracestate", "subject", "time", "dataschema"}

// IsCloudEvent reports whether a message's Content-Type header says its
// body is a structured-mode CloudEvent (parameters such as charset aside).
func IsCloudEvent(contentType string) bool {
	if contentType == "" {
		return false
	}
	// The type before any parameter decides, whatever the parameters say
	// (mime refuses a repeated one outright): read as a plain event, the
	// envelope's own fields would pick the key.
	mt, _, _ := strings.Cut(contentType, ";")
	return strings.EqualFold(strings.TrimSpace(mt), CloudEventsContentType)
}

// DecodeMessage decodes a message's body as the worker reads it: as a
// structured-mode CloudEvent's data when contentType says it is one
// (IsCloudEvent), else as the event itself.
func DecodeMessage(contentType string, body []byte) (Event, error) {
	if IsCloudEvent(contentType) {
		ev, _, err := DecodeCloudEvent(body)
		return ev, err
	}
	return Decode(body)
}

// MaxCloudEventBytes bounds a CloudEvent's whole body: its data is held to
// MaxBytes as an event is, and the envelope around it may take as much
// again (the work stream's message limit).
const MaxCloudEventBytes = 2 * MaxBytes

// DecodeCloudEvent parses and validates a structured-mode CloudEvent whose
// data is the event. The envelope it returns holds what could be read of
// it even with an error, so a refused event still carries its id and trace. Every rule of Decode holds for data as the event (SPEC
// §14), its size and nesting counted from data itself; the whole body is
// one object of valid UTF-8 with no repeated names, nested one level more
// than data may be, and at most MaxCloudEventBytes. An envelope that
// breaks the CloudEvents rules (specversion other than "1.0", no id,
// source or type, data that is not a JSON object) is an invalid event too.
func DecodeCloudEvent(body []byte) (Event, CloudEvent, error) {
	var ce CloudEvent
	if len(body) > MaxCloudEventBytes {
		return Event{}, ce, invalid("body is %d bytes, more than %d", len(body), MaxCloudEventBytes)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return Event{}, ce, invalid("body is empty")
	}
	if !utf8.Valid(body) {
		return Event{}, ce, invalid("body is not valid UTF-8")
	}
	raw, err := scanObject(body, cloudEventFields[:], MaxDepth+1)
	if err != nil {
		return Event{}, ce, err
	}
	attr := make(map[string]string, len(cloudEventFields))
	var wrongType error // the first attribute that is not a string
	for i, name := range cloudEventFields {
		v := raw[i]
		// A null attribute is one unset (the CloudEvents JSON format):
		// an optional one is absent, a required one missing.
		if v == nil || name == "data" || string(v) == "null" {
			continue
		}
		var s string
		if v[0] != '"' || json.Unmarshal(v, &s) != nil {
			if wrongType == nil {
				wrongType = invalid("CloudEvent attribute %s must be a string, got %s", name, jsonKind(v))
			}
			continue
		}
		attr[name] = s
	}
	// The envelope's id and trace context name the event even when the
	// rest is refused: its dead letter and record carry them (SPEC §14).
	ce = CloudEvent{ID: attr["id"], Source: attr["source"], Type: attr["type"],
		TraceParent: attr["traceparent"], TraceState: attr["tracestate"]}
	// So do the ids its data names, as a plain event's (SPEC §5a): a
	// lookup of the key finds the record of an envelope refused.
	ids := func() Event {
		data := raw[4]
		if data == nil || data[0] != '{' || len(data) > MaxBytes {
			return Event{}
		}
		fields, err := scanObject(data, knownFields[:], MaxDepth)
		if err != nil {
			return Event{}
		}
		return Event{AccountID: validID(fields[0]), KeyID: validID(fields[1])}
	}
	switch {
	case wrongType != nil:
		return ids(), ce, wrongType
	case attr["specversion"] != "1.0":
		return ids(), ce, invalid("CloudEvent specversion must be \"1.0\", got %s", quote(attr["specversion"]))
	case attr["id"] == "":
		return ids(), ce, invalid("CloudEvent id is missing or empty")
	case attr["source"] == "":
		return ids(), ce, invalid("CloudEvent source is missing or empty")
	case attr["type"] == "":
		return ids(), ce, invalid("CloudEvent type is missing or empty")
	case raw[6] != nil && string(raw[6]) != "null":
		return ids(), ce, invalid("CloudEvent data_base64 is not taken: send the event as JSON in data")
	}
	if t, ok := attr["time"]; ok {
		if _, err := parseRFC3339(t); err != nil {
			return ids(), ce, invalid("CloudEvent time must be an RFC 3339 time, got %s", quote(t))
		}
	}
	if s, ok := attr["dataschema"]; ok {
		if u, err := url.Parse(s); err != nil || !u.IsAbs() {
			return ids(), ce, invalid("CloudEvent dataschema must be an absolute URI, got %s", quote(s))
		}
	}
	if err := extensionsValid(body); err != nil {
		return ids(), ce, err
	}
	if ct := attr["datacontenttype"]; ct != "" && !jsonMediaType(ct) {
		return ids(), ce, invalid("CloudEvent datacontenttype must be JSON (application/json, text/json or a +json type), got %s", quote(ct))
	}
	data := raw[4]
	if data == nil {
		return ids(), ce, invalid("CloudEvent data is missing")
	}
	if data[0] != '{' {
		return ids(), ce, invalid("CloudEvent data must be a JSON object, got %s", jsonKind(data))
	}
	if len(data) > MaxBytes {
		return ids(), ce, invalid("CloudEvent data is %d bytes, more than %d", len(data), MaxBytes)
	}
	// data passed the structural rules with the body; its depth is checked
	// from itself, and its fields are read as an event's.
	fields, err := scanObject(data, knownFields[:], MaxDepth)
	if err != nil {
		return ids(), ce, err
	}
	ev, err := decodeFields(fields)
	return ev, ce, err
}

// jsonMediaType reports whether a datacontenttype says data is JSON, as
// the CloudEvents JSON format reads it: application/json, text/json, or
// any type with the structured suffix +json (parameters aside).
func jsonMediaType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && (mt == "application/json" || mt == "text/json" || strings.HasSuffix(mt, "+json"))
}

// extensionsValid holds the envelope's other members to the CloudEvents
// rules for attributes: a name of lower-case ASCII letters and digits, a
// value that is no object or array. A "key_id" beside data is then no
// member a reader could take for the event's own.
func extensionsValid(body []byte) error {
	var members map[string]json.RawMessage // names are unique: scanObject said so
	if err := json.Unmarshal(body, &members); err != nil {
		return invalid("not JSON: %v", err)
	}
	for name, v := range members {
		if name == "data" || name == "data_base64" {
			continue // members of the JSON format, not attributes
		}
		if !attributeName(name) {
			return invalid("CloudEvent attribute name %s is not lower-case letters and digits", quote(name))
		}
		if len(v) > 0 && (v[0] == '{' || v[0] == '[') {
			return invalid("CloudEvent attribute %s must be a string, number or boolean, got %s", name, jsonKind(v))
		}
	}
	return nil
}

// attributeName reports whether name is lower-case ASCII letters and
// digits, as CloudEvents 1.0 names its attributes.
func attributeName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}
