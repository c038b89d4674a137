package event

// Outcome is what became of one delivery of an event (SPEC §8's outcome
// label, §5a's record).
type Outcome string

// The outcomes. The first three are final and get an outcome record;
// Requeued means the event was given back for a later delivery.
const (
	Revoked      Outcome = "revoked"
	NotFound     Outcome = "not_found"
	DeadLettered Outcome = "dead_lettered"
	Requeued     Outcome = "requeued"
)

// Outcomes lists every outcome, in the order metrics create their series.
var Outcomes = []Outcome{Revoked, NotFound, DeadLettered, Requeued}

// Final reports whether o ends the event's life: it is recorded and the
// message is acked or terminated.
func (o Outcome) Final() bool { return o == Revoked || o == NotFound || o == DeadLettered }

// Succeeded reports whether o means the key is gone: a publisher waiting
// for the outcome exits 0 on these.
func (o Outcome) Succeeded() bool { return o == Revoked || o == NotFound }

// Reason is why an event was dead-lettered (SPEC §5's Revoker-Reason).
type Reason string

// The dead-letter reasons.
const (
	InvalidEvent      Reason = "invalid_event"
	AccountNotAllowed Reason = "account_not_allowed"
	APIRejected       Reason = "api_rejected"
	RetriesExhausted  Reason = "retries_exhausted"
	Unauthorized      Reason = "unauthorized"
	ReasonNotFound    Reason = "not_found"
)

// Reasons lists every dead-letter reason.
var Reasons = []Reason{InvalidEvent, AccountNotAllowed, APIRejected, RetriesExhausted, Unauthorized, ReasonNotFound}

// Names turns typed names into the strings label sets and flags want.
func Names[T ~string](vs []T) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = string(v)
	}
	return out
}
