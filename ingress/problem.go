package ingress

import (
	"fmt"
	"net/http"
)

// ProblemBase is the prefix of every problem type URI. The types are part
// of the contract (docs/openapi.json lists them); a client branches on the
// type, never on the title or detail.
const ProblemBase = "https://revoker.dev/problems/"

// ProblemContentType is the media type of an error answer (RFC 9457).
const ProblemContentType = "application/problem+json"

// Kind is one kind of refusal: its type URI's last segment, its title and
// its status.
type Kind struct {
	Slug   string
	Title  string
	Status int
}

// The kinds of refusal. A 5xx only where retrying can help (SPEC §11:
// paging tools retry 5xx and 429 and drop other 4xx).
var (
	KindInvalidEvent      = Kind{"invalid-event", "The event is invalid", http.StatusBadRequest}
	KindInvalidRequest    = Kind{"invalid-request", "The request is invalid", http.StatusBadRequest}
	KindUnauthorized      = Kind{"unauthorized", "No valid credential", http.StatusUnauthorized}
	KindUrgentNotAllowed  = Kind{"urgent-not-allowed", "This caller may not publish urgent revocations", http.StatusForbidden}
	KindAccountNotAllowed = Kind{"account-not-allowed", "This caller may not revoke keys of this account", http.StatusForbidden}
	KindNotFound          = Kind{"not-found", "Not found", http.StatusNotFound}
	KindMethodNotAllowed  = Kind{"method-not-allowed", "Method not allowed", http.StatusMethodNotAllowed}
	KindInProgress        = Kind{"in-progress", "A request with this idempotency key is still being stored", http.StatusConflict}
	KindIDTaken           = Kind{"id-taken", "The event id names another event", http.StatusConflict}
	KindTooLarge          = Kind{"too-large", "The body is over 64 KiB", http.StatusRequestEntityTooLarge}
	KindUnsupportedMedia  = Kind{"unsupported-media-type", "The body must be application/json", http.StatusUnsupportedMediaType}
	KindKeyReused         = Kind{"idempotency-key-reused", "The idempotency key was used with another body", http.StatusUnprocessableEntity}
	KindRateLimited       = Kind{"rate-limited", "Too many requests from this caller", http.StatusTooManyRequests}
	KindUnavailable       = Kind{"unavailable", "NATS is unreachable or the work stream refused the event: this request stored nothing", http.StatusServiceUnavailable}
	KindStoreUnknown      = Kind{"store-unknown", "The work stream's answer was lost: the event may have been stored; repeat the request with the same idempotency key", http.StatusGatewayTimeout}
	KindTooManyWaiting    = Kind{"too-many-waiting", "Too many requests are waiting for outcomes: nothing was stored", http.StatusServiceUnavailable}
	KindTrailUnavailable  = Kind{"trail-unavailable", "The audit trail cannot be read now", http.StatusServiceUnavailable}
	KindOutcomeRecordsOff = Kind{"outcome-records-off", "Outcome records are off: no record can be read", http.StatusNotFound}
	KindInternal          = Kind{"internal", "Internal error", http.StatusInternalServerError}
	// allKinds lists every kind, for the check that each is documented.
	allKinds = []Kind{KindInvalidEvent, KindInvalidRequest, KindUnauthorized, KindUrgentNotAllowed, KindAccountNotAllowed, KindNotFound, KindMethodNotAllowed, KindInProgress, KindIDTaken, KindTooLarge, KindUnsupportedMedia, KindKeyReused, KindRateLimited, KindUnavailable, KindStoreUnknown, KindTooManyWaiting, KindTrailUnavailable, KindOutcomeRecordsOff, KindInternal}
)

// Type is the kind's type URI.
func (k Kind) Type() string { return ProblemBase + k.Slug }

// Problem is an RFC 9457 problem details object.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`

	// retryAfter, in seconds, is sent as Retry-After when above 0.
	retryAfter int
}

// problem makes a problem of kind k.
func problem(k Kind, format string, args ...any) *Problem {
	return &Problem{Type: k.Type(), Title: k.Title, Status: k.Status, Detail: fmt.Sprintf(format, args...)}
}

// retry sets the problem's Retry-After.
func (p *Problem) retry(seconds int) *Problem {
	p.retryAfter = seconds
	return p
}

func (p *Problem) Error() string { return p.Title + ": " + p.Detail }
