package worker

import (
	"errors"
	"fmt"
	"time"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/event"
)

// Kind is what one API answer means for the event.
type Kind int

// The kinds of answer, SPEC §4.
const (
	// Revoked: 2xx with success true.
	Revoked Kind = iota
	// NotFound: 404, the key is already gone.
	NotFound
	// Retry: worth calling again (408, 409, 429, 5xx, no answer, x-should-retry: true).
	Retry
	// Unauthorized: 401, 403, or 400 with code 6003; most often our
	// credential, not the event, so it is retried slowly before giving up.
	Unauthorized
	// Rejected: the API refused this event; calling again will not help.
	Rejected
	// NoAPI: a 404 without the API's envelope (an HTML page, a proxy's
	// answer), or a key list refused as not there: the base URL or the way
	// to the API is wrong. Retried like Unauthorized.
	NoAPI
	// StillListed: the key answered 404 but is still in the account's key
	// list; the delete may still be spreading. Retried.
	StillListed
	// Unrecorded: the call could not be stored ahead, so it was not made.
	Unrecorded
)

var kindNames = [...]string{"revoked", "not_found", "retry", "unauthorized", "api_rejected", "no_api", "still_listed", "unrecorded"}

// exhaustedReason is the dead-letter reason of an event whose last
// delivery spent its retries on an answer of kind k.
func (k Kind) exhaustedReason() event.Reason {
	switch k {
	case Unauthorized:
		return event.Unauthorized
	case NoAPI, StillListed:
		return event.APIRejected
	}
	return event.RetriesExhausted
}

func (k Kind) String() string { return kindNames[k] }

// codeBadAuthHeader is the API's code for a malformed auth header.
const codeBadAuthHeader = 6003

// Decision is the classification of one API call.
type Decision struct {
	Kind Kind
	// Detail is one line a person can act on.
	Detail string
	// RetryAfter is the wait the API asked for, 0 if none.
	RetryAfter time.Duration
	// Pause means every call must wait: a 429, or any answer to be retried
	// that asks for a wait (SPEC §4: any hold the API asks for holds every
	// call, capped at 5 minutes).
	Pause bool
	// RateLimited marks a 429's hold, the one hold SPEC §4 keeps off the
	// event's retry budget; another answer's wait is the event's too.
	RateLimited bool
	// Status is the HTTP status of the answer decided on (a key list's,
	// for ClassifyList), 0 for none: a hold names the answer that asked.
	Status int
}

// Classify decides what an API answer means. It is a pure function of the
// response and the transport error so that every row of SPEC §4 can be
// checked by a table test.
func Classify(resp *cloudflare.Response, err error) Decision {
	d := classify(resp, err)
	// Any wait an answer asks for holds every call (SPEC §4), whatever it
	// means for the event.
	d.Pause = d.Pause || d.RetryAfter > 0
	return d
}

func classify(resp *cloudflare.Response, err error) Decision {
	if err != nil || resp == nil || resp.Status == 0 {
		if err == nil {
			err = errors.New("no response")
		}
		return Decision{Kind: Retry, Detail: "no response: " + err.Error()}
	}
	d := Decision{Status: resp.Status}
	if resp.HasRetryAfter {
		d.RetryAfter = resp.RetryAfter
	}
	st := resp.Status
	env := resp.Envelope
	ok2xx := st >= 200 && st < 300
	// success decides; Retry-After and x-should-retry cannot undo a
	// confirmed revocation.
	if ok2xx && env != nil && env.Success {
		d.Kind, d.Detail = Revoked, fmt.Sprintf("HTTP %d: revoked", st)
		return d
	}
	// x-should-retry: true makes a refusal retryable. A refused credential
	// or an answer that is not the API's is retried anyway, and keeps its
	// own kind, so the worker still turns not-ready for it.
	if sr := resp.ShouldRetry; sr != nil && *sr && !refusedOrNoAPI(st, env) {
		d.Kind, d.Detail = Retry, fmt.Sprintf("HTTP %d with x-should-retry: true%s", st, summary(resp))
		d.Pause, d.RateLimited = st == 429 || d.RetryAfter > 0, st == 429
		return d
	}
	if sr := resp.ShouldRetry; sr != nil && !*sr {
		d.Kind, d.Detail = Rejected, fmt.Sprintf("HTTP %d with x-should-retry: false%s", st, summary(resp))
		// The event is refused for good, but the hold asked for is every
		// call's (SPEC §4).
		d.Pause, d.RateLimited = st == 429 || d.RetryAfter > 0, st == 429
		return d
	}
	switch {
	case ok2xx && env == nil:
		d.Kind, d.Detail = Rejected, fmt.Sprintf("HTTP %d: body is not the API envelope (%s)", st, resp.BodyError)
	case ok2xx:
		d.Kind, d.Detail = Rejected, fmt.Sprintf("HTTP %d with success false%s", st, summary(resp))
	case st == 404 && env != nil && !env.Success:
		// To be proven by a key list before it counts (SPEC §4, "The proof").
		d.Kind, d.Detail = NotFound, "HTTP 404: key not found"+summary(resp)
	case st == 404 && env != nil:
		// Not the API's answer to an unknown key (success false): what
		// answers so is not the API either.
		d.Kind, d.Detail = NoAPI, "HTTP 404 with an envelope saying success true: the API is not where it should be"
	case st == 404:
		d.Kind, d.Detail = NoAPI, fmt.Sprintf("HTTP 404 without the API's envelope (%s): the API is not where it should be", resp.BodyError)
	case st >= 300 && st < 400:
		// Never followed (it would carry the credential elsewhere), and
		// never the API's answer to a DELETE: the base URL is wrong.
		d.Kind, d.Detail = NoAPI, fmt.Sprintf("HTTP %d redirect, not followed: the API is not where it should be (check CLOUDFLARE_BASE_URL)", st)
	case st == 408 || st == 409 || st == 429 || st >= 500:
		d.Kind, d.Detail = Retry, fmt.Sprintf("HTTP %d%s", st, summary(resp))
		d.Pause, d.RateLimited = st == 429 || d.RetryAfter > 0, st == 429
	case credentialRefused(st, env):
		d.Kind, d.Detail = Unauthorized, fmt.Sprintf("HTTP %d: credential refused%s", st, summary(resp))
	default:
		d.Kind, d.Detail = Rejected, fmt.Sprintf("HTTP %d%s", st, summary(resp))
	}
	return d
}

// refusedOrNoAPI tells the answers classified Unauthorized or NoAPI: a
// credential refused, or an answer from something other than the API (a
// 404 that is not the API's "not found", a redirect).
func refusedOrNoAPI(st int, env *cloudflare.Envelope) bool {
	switch {
	case credentialRefused(st, env):
		return true
	case st == 404:
		return env == nil || env.Success
	}
	return st >= 300 && st < 400
}

// credentialRefused tells the answers that refuse the credential: 401, 403,
// or 400 with the auth-header code 6003 (SPEC §4).
func credentialRefused(st int, env *cloudflare.Envelope) bool {
	return st == 401 || st == 403 || (st == 400 && env != nil && env.HasCode(codeBadAuthHeader))
}

// summary is what an answer's body says, for a detail line: the API's
// errors and messages, or why there is no envelope to read them from (a
// body too large, say), so that a person can act on it.
func summary(resp *cloudflare.Response) string {
	if resp.Envelope == nil {
		if resp.BodyError != "" {
			return " (" + resp.BodyError + ")"
		}
		return ""
	}
	if s := resp.Envelope.Summary(); s != "" {
		return ": " + s
	}
	return ""
}

// ClassifyList decides what a key list, fetched after a 404 for key, says
// of the event. Only a list the API vouches for proves anything: without
// the key it makes the 404 a not_found; with it, the event is retried
// (dead-lettered as api_rejected in the end). Any other answer proves
// nothing and is retried as its status says; a 404 or other 4xx on the
// list means the API is not where it should be.
func ClassifyList(list *cloudflare.KeyList, err error, key string) Decision {
	var resp *cloudflare.Response
	if list != nil {
		resp = list.Response
	}
	if err != nil || resp == nil || resp.Status == 0 {
		d := Classify(resp, err)
		d.Detail = "HTTP 404 on delete; the key list got " + d.Detail
		return d
	}
	st := resp.Status
	switch {
	case list.Listed && list.Has(key):
		return Decision{Kind: StillListed, Detail: "404 on delete, but the key is still listed"}
	case list.Listed:
		return Decision{Kind: NotFound, Detail: "HTTP 404 on delete, and the key list does not hold the key"}
	}
	d := Decision{Status: st}
	if resp.HasRetryAfter {
		d.RetryAfter = resp.RetryAfter
		d.Pause = d.RetryAfter > 0 // any wait an answer asks for holds every call (SPEC §4)
	}
	switch {
	case st >= 200 && st < 300:
		d.Kind, d.Detail = Retry, fmt.Sprintf("HTTP 404 on delete; the key list answered HTTP %d without a list%s", st, summary(resp))
	case st == 408 || st == 409 || st == 429 || st >= 500:
		d.Kind, d.Detail = Retry, fmt.Sprintf("HTTP 404 on delete; the key list answered HTTP %d%s", st, summary(resp))
		d.Pause, d.RateLimited = st == 429 || d.RetryAfter > 0, st == 429
	default:
		// Any 4xx, a 401 or 403 too (SPEC §4, "The proof", point 1): a
		// credential that may delete but not list cannot prove a 404,
		// and heed marks it refused all the same.
		d.Kind, d.Detail = NoAPI, fmt.Sprintf("HTTP 404 on delete; the key list answered HTTP %d%s: the API is not where it should be", st, summary(resp))
	}
	return d
}
