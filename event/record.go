package event

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Record is the outcome record of SPEC §5a: the audit trail's entry for one
// event's final outcome.
type Record struct {
	EventID     string  `json:"event_id"`
	AccountID   string  `json:"account_id"`
	KeyID       string  `json:"key_id"`
	Outcome     Outcome `json:"outcome"`
	Reason      Reason  `json:"reason,omitempty"`
	Status      int     `json:"status"`
	CFRay       string  `json:"cf_ray"`
	Attempts    int     `json:"attempts"`
	Subject     string  `json:"subject"`
	Sequence    uint64  `json:"sequence"`
	RequestedAt string  `json:"requested_at,omitempty"`
	PublishedAt string  `json:"published_at"`
	CompletedAt string  `json:"completed_at"`
	RequestedBy string  `json:"requested_by,omitempty"`
	Worker      string  `json:"worker"`
	// Stream is the work stream the event came from; with Sequence it
	// names the event beyond doubt (an event id alone proves nothing).
	Stream string `json:"stream,omitempty"`
	// ReplayOf is the original event's id when this one is a replay of a
	// dead letter, so the audit trail links the two.
	ReplayOf string `json:"replay_of,omitempty"`
	// UnansweredCalls counts calls made for the event whose answer was
	// never heard (a crash, a cut connection): the key may have been
	// revoked by one of them.
	UnansweredCalls int `json:"unanswered_calls,omitempty"`
	// AbsenceCheckedAt is when a key list proved a not_found (SPEC §4, "The
	// proof"); Status and CFRay stay those of the DELETE that answered 404.
	AbsenceCheckedAt string `json:"absence_checked_at,omitempty"`
	// Supersedes, on a revoked record only, is the outcome-stream sequence
	// of the not_found record of the same event that it corrects.
	Supersedes uint64 `json:"supersedes,omitempty"`
	// TraceID is the event's trace id (32 hex), when it carried one.
	TraceID string `json:"trace_id,omitempty"`
	// Credential names the credential used, never the secret.
	Credential string `json:"credential,omitempty"`
}

// SameFacts reports whether r and o say the same thing about the same
// event: everything but when and by which replica it was written. A record
// found under our own record's id is ours only if it does.
func (r Record) SameFacts(o Record) bool {
	r.CompletedAt, o.CompletedAt = "", ""
	r.Worker, o.Worker = "", ""
	return r == o
}

// DeadLetter is what a dead-letter record (SPEC §5) says of an event.
type DeadLetter struct {
	Reason   Reason
	Detail   string
	Status   int  // last HTTP status, 0 if the last call got none
	Called   bool // whether any call was made; Revoker-Status is absent if not
	Attempts int
	EventID  string
	Stream   string
	Subject  string
	Sequence uint64
	FailedAt time.Time
	TraceID  string // the event's trace id (SPEC §13), "" when none
	// ContentType is the original message's Content-Type, and TraceParent
	// the dead-lettering delivery's W3C trace context (the event's trace):
	// a replay republishes them with the body, so a CloudEvent is read as
	// one again and the replay's spans join the event's trace.
	ContentType string
	TraceParent string
	TraceState  string
}

// NoKey stands for an account or key id in an outcome subject when the
// event has no valid one.
const NoKey = "_"

// AppendJSON appends r encoded exactly as encoding/json encodes it, without
// its reflection: every event's record is encoded on the way to its ack.
func (r *Record) AppendJSON(b []byte) []byte {
	b = appendField(b, '{', "event_id", r.EventID)
	b = appendField(b, ',', "account_id", r.AccountID)
	b = appendField(b, ',', "key_id", r.KeyID)
	b = appendField(b, ',', "outcome", string(r.Outcome))
	if r.Reason != "" {
		b = appendField(b, ',', "reason", string(r.Reason))
	}
	b = strconv.AppendInt(append(b, `,"status":`...), int64(r.Status), 10)
	b = appendField(b, ',', "cf_ray", r.CFRay)
	b = strconv.AppendInt(append(b, `,"attempts":`...), int64(r.Attempts), 10)
	b = appendField(b, ',', "subject", r.Subject)
	b = strconv.AppendUint(append(b, `,"sequence":`...), r.Sequence, 10)
	if r.RequestedAt != "" {
		b = appendField(b, ',', "requested_at", r.RequestedAt)
	}
	b = appendField(b, ',', "published_at", r.PublishedAt)
	b = appendField(b, ',', "completed_at", r.CompletedAt)
	if r.RequestedBy != "" {
		b = appendField(b, ',', "requested_by", r.RequestedBy)
	}
	b = appendField(b, ',', "worker", r.Worker)
	if r.Stream != "" {
		b = appendField(b, ',', "stream", r.Stream)
	}
	if r.ReplayOf != "" {
		b = appendField(b, ',', "replay_of", r.ReplayOf)
	}
	if r.UnansweredCalls != 0 {
		b = strconv.AppendInt(append(b, `,"unanswered_calls":`...), int64(r.UnansweredCalls), 10)
	}
	if r.AbsenceCheckedAt != "" {
		b = appendField(b, ',', "absence_checked_at", r.AbsenceCheckedAt)
	}
	if r.Supersedes != 0 {
		b = strconv.AppendUint(append(b, `,"supersedes":`...), r.Supersedes, 10)
	}
	if r.TraceID != "" {
		b = appendField(b, ',', "trace_id", r.TraceID)
	}
	if r.Credential != "" {
		b = appendField(b, ',', "credential", r.Credential)
	}
	return append(b, '}')
}

// appendField appends sep, then "name":value with value as AppendJSONString
// writes it.
func appendField(b []byte, sep byte, name, value string) []byte {
	return AppendJSONString(append(append(append(b, sep, '"'), name...), '"', ':'), value)
}

// AppendJSONString appends s as a JSON string exactly as encoding/json
// writes it: as it is when it needs no escape, which is what ids, times and
// names in records are, else by encoding/json itself.
func AppendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c > '~' || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	return append(append(append(b, '"'), s...), '"')
}

// ValidCredential reports whether name is a credential's name as records
// carry it (SPEC §6): 1-32 characters of a-z, 0-9 and '-'.
func ValidCredential(name string) bool {
	if len(name) == 0 || len(name) > 32 {
		return false
	}
	for i := range len(name) {
		if c := name[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// DecodeRecord reads an outcome record as a reader may believe it (SPEC
// §4, "The proof", point 8): one JSON object with a final outcome, no name
// repeated, and no name that differs from a record field's only in letter
// case. encoding/json takes the last of repeated names and matches names
// whatever their case, so such a body says one thing to it and another to
// a reader that is exact; no worker writes one.
func DecodeRecord(b []byte) (Record, error) {
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return Record{}, err
	}
	if !r.Outcome.Final() {
		return Record{}, fmt.Errorf("outcome %q is not a final one", r.Outcome)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if _, err := dec.Token(); err != nil { // the object's '{': Unmarshal said so
		return Record{}, err
	}
	fields := recordFields()
	seen := make(map[string]bool, len(fields))
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return Record{}, err
		}
		name, _ := t.(string)
		if seen[name] {
			return Record{}, fmt.Errorf("field %q repeated", name)
		}
		seen[name] = true
		for _, exact := range fields {
			// EqualFold folds as encoding/json does (ſ is s, K is k).
			if name != exact && strings.EqualFold(name, exact) {
				return Record{}, fmt.Errorf("field %q is %q in another letter case", name, exact)
			}
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return Record{}, err
		}
	}
	return r, nil
}

// recordFields is the JSON name of each record field.
var recordFields = sync.OnceValue(func() []string {
	t := reflect.TypeFor[Record]()
	var names []string
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); name != "" && name != "-" {
			names = append(names, name)
		}
	}
	return names
})
