package cloudflare

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
)

// Endpoints VerifyToken may report in Verification.Endpoint.
const (
	VerifyUser    = "user"    // GET /user/tokens/verify: a user's API token
	VerifyAccount = "account" // GET /accounts/{account_id}/tokens/verify: an account API token
	VerifyLegacy  = "legacy"  // GET /user: the legacy pair, which has no token to verify
)

// TokenActive is the result.status of a token that may be used.
const TokenActive = "active"

// Verification is what a token check learned.
type Verification struct {
	// Response is the answer of the last call made (the account endpoint's
	// when the user endpoint refused); never nil. Its Policy tells the
	// credential's real quota when the API sent Ratelimit-Policy.
	*Response
	// Endpoint is the endpoint that gave Response (VerifyUser,
	// VerifyAccount or VerifyLegacy).
	Endpoint string
	// Active reports that the credential may be used: a 2xx answer whose
	// envelope says success true and, for a token, whose result.status is
	// "active". Message codes are never looked at: Cloudflare sends 10000
	// with "This API Token is valid and active" too.
	Active bool
	// TokenStatus is result.status on one safe line ("active", "disabled",
	// "expired"); "" when the answer had none.
	TokenStatus string
}

// VerifyToken checks the client's credential, as SPEC §1 and §6 say:
// GET {base}/user/tokens/verify first (a user's token), and when that is
// refused with a 4xx other than 429 and accountID is given, GET
// {base}/accounts/{accountID}/tokens/verify (an account API token, which
// only that endpoint knows). A legacy pair (LegacyKey, NewLegacyKeyFile) has
// no token: GET {base}/user is asked instead and success decides.
//
// The returned *Verification and its Response are never nil. err is as for
// DeleteSigningKey (no answer: connection error, timeout, a bad accountID);
// a refusal is an answer: (v, nil) with v.Active false and v.Status telling
// 401, 403 or 429. Each request is one API call, charged to the
// credential's rate budget by the real API.
func (c *Client) VerifyToken(ctx context.Context, accountID string) (*Verification, error) {
	return c.VerifyTokenEach(ctx, accountID, nil)
}

// VerifyTokenEach is VerifyToken with each request made only after before
// (when not nil) gives leave, and its release called with the request's
// answer (empty when there was none) before any next request: a rate
// budget charged per call, whether one call or two are made, and holding
// what each answer asks before the next. An error from before ends the
// check with that error.
func (c *Client) VerifyTokenEach(ctx context.Context, accountID string, before func(context.Context) (release func(*Response), err error)) (*Verification, error) {
	if accountID != "" && !ValidIdentifier(accountID) {
		return &Verification{Response: &Response{}}, fmt.Errorf("%w: the account id is not 1-32 characters of [A-Za-z0-9]", ErrInvalidIdentifier)
	}
	call := func(endpoint string, path ...string) (*Verification, error) {
		if before == nil {
			return c.verify(ctx, endpoint, path...)
		}
		release, err := before(ctx)
		if err != nil {
			return &Verification{Response: &Response{}, Endpoint: endpoint}, err
		}
		v, err := c.verify(ctx, endpoint, path...)
		release(v.Response)
		return v, err
	}
	if isLegacy(c.cred) {
		return call(VerifyLegacy, "user")
	}
	v, err := call(VerifyUser, "user", "tokens", "verify")
	if err != nil || v.Active || accountID == "" || !refused(v.Status) {
		return v, err
	}
	return call(VerifyAccount, "accounts", accountID, "tokens", "verify")
}

// refused reports a 4xx that says "not this token here", as opposed to a
// 429, which says nothing about the token.
func refused(status int) bool {
	return status >= 400 && status <= 499 && status != http.StatusTooManyRequests
}

func (c *Client) verify(ctx context.Context, endpoint string, path ...string) (*Verification, error) {
	resp, _, err := c.call(ctx, http.MethodGet, maxBody, path...)
	v := &Verification{Response: resp, Endpoint: endpoint}
	if err != nil {
		return v, err
	}
	env := resp.Envelope
	status := resultStatus(env)
	v.TokenStatus = oneLine(status, 64)
	ok := resp.Status >= 200 && resp.Status <= 299 && env != nil && env.Success
	// The status as sent, byte for byte: "active" with a NUL or a line
	// end is not the word.
	v.Active = ok && (endpoint == VerifyLegacy || status == TokenActive)
	return v, nil
}

// resultStatus is result.status when the result is an object holding it,
// under that name exactly and once, as a string; "" otherwise. (A struct
// would match "Status" or "STATUS" too, and take the last of several.)
func resultStatus(env *Envelope) string {
	if env == nil || len(bytes.TrimSpace(env.Result)) == 0 || bytes.TrimSpace(env.Result)[0] != '{' || !json.Valid(env.Result) {
		return ""
	}
	dec := json.NewDecoder(bytes.NewReader(env.Result))
	if _, err := dec.Token(); err != nil { // the object's '{'
		return ""
	}
	var status string
	seen := false
	for dec.More() {
		name, err := dec.Token()
		if err != nil {
			return ""
		}
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return ""
		}
		if name != "status" {
			continue
		}
		if seen || len(value) == 0 || value[0] != '"' || json.Unmarshal(value, &status) != nil {
			return "" // twice, or not a string: no status to believe
		}
		seen = true
	}
	return status
}

// isLegacy reports whether cred sends the legacy pair.
func isLegacy(cred Credential) bool {
	switch c := cred.(type) {
	case *legacyCred:
		return true
	case *TokenFile:
		return c.Legacy()
	}
	return false
}
