// Package verify proves the audit trail against the API (SPEC §7,
// `verify`): every key that outcome records say is gone (revoked or
// not_found, dead-lettered as not_found included) must be absent from its
// account's key list. Key ids are never
// reused, so a key absent from a list fetched after its record was stored
// is gone for good; one still listed is a record that lies, the worst thing
// the worker can produce.
package verify

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
)

// Lister fetches one account's key list; *cloudflare.Client meets it.
type Lister interface {
	ListSigningKeys(ctx context.Context, accountID string) (*cloudflare.KeyList, error)
}

var _ Lister = (*cloudflare.Client)(nil)

// Config is what a check reads and calls.
type Config struct {
	JS     jetstream.JetStream
	Stream string // the outcome stream (REVOKER_OUTCOME_STREAM)
	Prefix string // the outcome subject prefix (REVOKER_OUTCOME_SUBJECT)
	API    Lister
	// Acquire, when set, is called before each key list and the release
	// it returns after it, with the list's answer (nil: none): the worker
	// charges lists to its rate budget, which heeds the holds they ask for.
	Acquire func(ctx context.Context, account string) (release func(answer *cloudflare.Response), err error)
}

// Claim is a key the trail says is gone, and the record that says so.
type Claim struct {
	AccountID string        `json:"account_id"`
	KeyID     string        `json:"key_id"`
	Outcome   event.Outcome `json:"outcome"`
	// Reason is the dead letter's reason: not_found, when a proven
	// absence was dead-lettered (REVOKER_NOT_FOUND=dead-letter).
	Reason      event.Reason `json:"reason,omitempty"`
	CompletedAt string       `json:"completed_at"`
	CFRay       string       `json:"cf_ray"`
	EventID     string       `json:"event_id"`
}

// Says is what the claim's record says: its outcome, and a dead letter's
// reason after a slash (dead_lettered/not_found).
func (c Claim) Says() string {
	if c.Reason != "" {
		return string(c.Outcome) + "/" + string(c.Reason)
	}
	return string(c.Outcome)
}

// Failure is an account whose key list proved nothing.
type Failure struct {
	AccountID string
	Why       string // one line, safe to log
}

// Report is the result of one check.
type Report struct {
	// Checked counts the keys judged by a list, listed or not.
	Checked int
	// StillListed are the keys the trail says are gone that their
	// account's list still names.
	StillListed []Claim
	// Failed are the accounts whose list could not be fetched; their keys
	// are not judged.
	Failed []Failure
	// Strays are messages on keys' subjects that are not records of
	// those keys: not believed, and reported (SPEC §4, "The proof",
	// point 8).
	Strays []queue.Stray
}

// Proven reports whether every key the trail says is gone was shown gone.
func (r Report) Proven() bool {
	return len(r.StillListed) == 0 && len(r.Failed) == 0
}

// Check reads the outcome records stored from since on, of account (""
// for all), and fetches one key list per account that has keys the trail
// says are gone. The records are read before any list is fetched, so every
// record was stored before its list was asked for, and every key is judged
// by it, whatever the time a record says it completed (the clock of the
// worker that wrote it may be ahead of this one). It returns an error when
// the trail cannot be read (and an empty report), or when ctx ended
// before every account's list (and what was judged, the accounts not
// reached among the failed).
func Check(ctx context.Context, cfg Config, account string, since time.Time) (Report, error) {
	var r Report
	claims, err := Claims(ctx, cfg.JS, cfg.Stream, cfg.Prefix, account, since, func(s queue.Stray) { r.Strays = append(r.Strays, s) })
	if err != nil {
		return Report{}, err
	}
	byAccount := make(map[string][]Claim)
	var accounts []string
	for _, c := range claims {
		if byAccount[c.AccountID] == nil {
			accounts = append(accounts, c.AccountID)
		}
		byAccount[c.AccountID] = append(byAccount[c.AccountID], c)
	}
	for i, acct := range accounts {
		if err := ctx.Err(); err != nil {
			// What was judged stands; the rest is not proven gone.
			for _, rest := range accounts[i:] {
				r.Failed = append(r.Failed, Failure{AccountID: rest, Why: "not reached before the check's time ran out: " + err.Error()})
			}
			return r, err
		}
		list, why := fetch(ctx, cfg, acct)
		if why != "" {
			r.Failed = append(r.Failed, Failure{AccountID: acct, Why: why})
			continue
		}
		for _, c := range byAccount[acct] {
			r.Checked++
			if list.Has(c.KeyID) {
				r.StillListed = append(r.StillListed, c)
			}
		}
	}
	return r, nil
}

// fetch asks for one account's key list and returns it, or why it proves
// nothing.
func fetch(ctx context.Context, cfg Config, account string) (*cloudflare.KeyList, string) {
	release := func(*cloudflare.Response) {}
	if cfg.Acquire != nil {
		r, err := cfg.Acquire(ctx, account)
		if err != nil {
			return nil, "no turn to call: " + err.Error()
		}
		release = r
	}
	list, err := cfg.API.ListSigningKeys(ctx, account)
	if list != nil {
		release(list.Response)
	} else {
		release(nil)
	}
	switch {
	case err != nil:
		return nil, err.Error()
	case !list.Listed:
		return nil, list.Why()
	}
	return list, ""
}

// Claims returns, sorted by account and key, the keys that a record in
// the window says are gone (SPEC §7: every key with a revoked or
// not_found record; a not_found dead-lettered, as REVOKER_NOT_FOUND=
// dead-letter records it, says so as well), whatever the key's later
// records say: a not_found
// followed by a dead letter ("404 on delete, but the key is still
// listed") is exactly the false record the check is there to find. Per
// key, a revoked record is the claim shown, else the latest not_found.
// Records of keys without a valid account or key id (stored under "_")
// name nothing that can be listed.
// Messages there that are not records of their key go to stray (nil:
// skipped).
func Claims(ctx context.Context, js jetstream.JetStream, stream, prefix, account string, since time.Time, stray func(queue.Stray)) ([]Claim, error) {
	if prefix == "" {
		return nil, ErrNoTrail
	}
	acct := "*"
	if account != "" {
		if !cloudflare.ValidIdentifier(account) {
			return nil, fmt.Errorf("%w: the account id is not 1-32 characters of [A-Za-z0-9]", cloudflare.ErrInvalidIdentifier)
		}
		acct = account
	}
	claimed := make(map[[2]string]event.Record)
	// EachOutcome believes a record only on its own key's subject and
	// only if it names that key.
	err := queue.EachOutcome(ctx, js, stream, prefix+"."+acct+".*", since, func(o event.Record) error {
		if !claimsGone(o) || !cloudflare.ValidIdentifier(o.AccountID) || !cloudflare.ValidIdentifier(o.KeyID) {
			return nil
		}
		k := [2]string{o.AccountID, o.KeyID}
		if prev, ok := claimed[k]; !ok || o.Outcome == event.Revoked || prev.Outcome != event.Revoked {
			claimed[k] = o
		}
		return nil
	}, stray)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", stream, err)
	}
	var out []Claim
	for _, o := range claimed {
		out = append(out, Claim{AccountID: o.AccountID, KeyID: o.KeyID, Outcome: o.Outcome, Reason: o.Reason,
			CompletedAt: o.CompletedAt, CFRay: o.CFRay, EventID: o.EventID})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].AccountID != out[j].AccountID {
			return out[i].AccountID < out[j].AccountID
		}
		return out[i].KeyID < out[j].KeyID
	})
	return out, nil
}

// claimsGone reports whether o says its key is gone: revoked, not_found,
// or a not_found dead-lettered.
func claimsGone(o event.Record) bool {
	return o.Outcome.Succeeded() || o.Outcome == event.DeadLettered && o.Reason == event.ReasonNotFound
}

// ErrNoTrail is returned when outcome records are off: there is no trail
// to prove.
var ErrNoTrail = errors.New("outcome records are off (REVOKER_OUTCOME_SUBJECT is empty)")
