package credentials

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/revoker/revoker/cloudflare"
)

// ErrAccountNotAllowed is wrapped by the error of a call for an account no
// credential names (and no "*"): no call is made, and the event is
// dead-lettered as account_not_allowed (SPEC §6).
var ErrAccountNotAllowed = errors.New("credentials: no credential for the account")

// Router calls the API for each account with that account's credential from
// the set in use. It has the method set of worker.API. It is safe for
// concurrent use; Store swaps the set while calls are made.
type Router struct {
	set atomic.Pointer[Set]

	mu      sync.Mutex
	changed chan struct{} // closed by the next Store
}

// NewRouter returns a Router using set.
func NewRouter(set *Set) *Router {
	r := &Router{changed: make(chan struct{})}
	r.set.Store(set)
	return r
}

// Store makes set the one used by the calls that start from now on (pass
// it as Watch's onChange, or call it from there).
func (r *Router) Store(set *Set) {
	r.set.Store(set)
	r.mu.Lock()
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// Changed is closed once the set in use is replaced: an event waiting for
// its credential's budget then looks its credential up again (a reload may
// have moved its account to another).
func (r *Router) Changed() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

// Set is the set in use.
func (r *Router) Set() *Set { return r.set.Load() }

// For is Set().For(account).
func (r *Router) For(account string) (*Credential, bool) { return r.set.Load().For(account) }

// CredentialOf names the credential and budget that calls for account, for
// records, logs and metric labels; ok false when the account is not
// allowed.
func (r *Router) CredentialOf(account string) (name, budget string, ok bool) {
	c, ok := r.For(account)
	if !ok {
		return "", "", false
	}
	return c.Name, c.Budget, true
}

func notAllowed() error {
	return fmt.Errorf("%w (not named in the credentials file, and no credential has \"*\")", ErrAccountNotAllowed)
}

// DeleteSigningKey is cloudflare.(*Client).DeleteSigningKey with the
// account's credential. An account with none gives an error wrapping
// ErrAccountNotAllowed, a non-nil empty Response, and no call.
func (r *Router) DeleteSigningKey(ctx context.Context, accountID, keyID string) (*cloudflare.Response, error) {
	c, ok := r.For(accountID)
	if !ok {
		return &cloudflare.Response{}, notAllowed()
	}
	return c.Client.DeleteSigningKey(ctx, accountID, keyID)
}

// ListSigningKeys is cloudflare.(*Client).ListSigningKeys with the
// account's credential, the one its deletes use (SPEC §4: the same
// credential proves a 404). An account with none gives an error wrapping
// ErrAccountNotAllowed, a non-nil list that proves nothing, and no call.
func (r *Router) ListSigningKeys(ctx context.Context, accountID string) (*cloudflare.KeyList, error) {
	c, ok := r.For(accountID)
	if !ok {
		return cloudflare.Unanswered(), notAllowed()
	}
	return c.Client.ListSigningKeys(ctx, accountID)
}
