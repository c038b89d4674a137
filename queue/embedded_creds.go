package queue

import (
	"encoding/base64"
	"os"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/revoker/revoker/config"
)

// credsAuth admits the one identity of a .creds file to the embedded
// server: a client that signs the server's nonce with the key of the
// file's user, which only the holder of the file's seed can. (A server not
// run by an operator drops the JWT a client sends before any check sees
// it; the JWT is public, the seed is the secret.) A standalone server would
// need the operator's and the account's JWTs to believe the file, which the
// file does not hold; the embedded server needs neither, as it serves only
// the identity the worker was given. The JWT's expiry and its permissions
// hold as an operator's server would hold them.
type credsAuth struct {
	user   nkeys.KeyPair // public key only
	claims *jwt.UserClaims
}

// embeddedCredsAuth reads the .creds file at path for the embedded server.
// A file that cannot be read, holds no user JWT and seed that belong
// together, or whose JWT has expired is a *config.Error naming the
// variable; no error holds any part of the file.
func embeddedCredsAuth(path string) (*credsAuth, error) {
	bad := func(problem string) error {
		return &config.Error{Name: embeddedCreds, Problem: problem + " (--embedded-nats)"}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, bad("cannot be read")
	}
	claims, problem := config.UserOfCreds(b)
	if problem != "" {
		return nil, bad(problem)
	}
	pub := claims.Subject
	// Limits an operator's server would hold and this one could not are
	// refused rather than dropped: the file would give more than it says.
	switch {
	case !claims.Limits.IsUnlimited():
		return nil, bad("holds a user JWT with limits (source networks, times, subscriptions, data or payload) the embedded server does not enforce")
	case claims.ProxyRequired:
		return nil, bad("holds a user JWT that requires a proxy, which the embedded server does not have")
	case len(claims.AllowedConnectionTypes) > 0 && !claims.AllowedConnectionTypes.Contains(jwt.ConnectionTypeStandard):
		return nil, bad("holds a user JWT that does not allow standard client connections, the embedded server's only kind")
	}
	user, err := nkeys.FromPublicKey(pub)
	if err != nil {
		return nil, bad("holds a user JWT with an invalid subject")
	}
	return &credsAuth{user: user, claims: claims}, nil
}

// Check admits a client whose signature of the nonce is by the file's
// user's key; it is server.Authentication.
func (a *credsAuth) Check(c server.ClientAuthentication) bool {
	opts := c.GetOpts()
	if opts == nil || opts.Sig == "" {
		return false
	}
	now := time.Now()
	if a.claims.Expires != 0 && !now.Before(time.Unix(a.claims.Expires, 0)) ||
		a.claims.NotBefore != 0 && now.Before(time.Unix(a.claims.NotBefore, 0)) {
		return false
	}
	sig, err := base64.RawURLEncoding.DecodeString(opts.Sig)
	if err != nil {
		// As the server itself accepts: some clients send standard base64.
		if sig, err = base64.StdEncoding.DecodeString(opts.Sig); err != nil {
			return false
		}
	}
	nonce := c.GetNonce()
	if len(nonce) == 0 || a.user.Verify(nonce, sig) != nil {
		return false
	}
	u := &server.User{Username: a.claims.Subject, Permissions: permissionsOf(a.claims.Permissions)}
	if a.claims.Expires != 0 {
		u.ConnectionDeadline = time.Unix(a.claims.Expires, 0) // closed at expiry, as an operator's server does
	}
	c.RegisterUser(u)
	return true
}

// permissionsOf is the server's form of a user JWT's permissions, built
// as the server builds them for a JWT it believes (its
// buildPermissionsFromJwt and validateResponsePermissions, which the path
// of a registered user skips): nil (everything allowed) when the JWT sets
// none; with a response permission, publishing only where allowed (none
// but replies when no list is given), and its defaults of one reply
// within two minutes.
func permissionsOf(jp jwt.Permissions) *server.Permissions {
	var p *server.Permissions
	if len(jp.Pub.Allow) > 0 || len(jp.Pub.Deny) > 0 {
		p = &server.Permissions{Publish: &server.SubjectPermission{Allow: jp.Pub.Allow, Deny: jp.Pub.Deny}}
	}
	if len(jp.Sub.Allow) > 0 || len(jp.Sub.Deny) > 0 {
		if p == nil {
			p = &server.Permissions{}
		}
		p.Subscribe = &server.SubjectPermission{Allow: jp.Sub.Allow, Deny: jp.Sub.Deny}
	}
	if jp.Resp != nil {
		if p == nil {
			p = &server.Permissions{}
		}
		p.Response = &server.ResponsePermission{MaxMsgs: jp.Resp.MaxMsgs, Expires: jp.Resp.Expires}
		if p.Publish == nil {
			p.Publish = &server.SubjectPermission{}
		}
		if p.Publish.Allow == nil {
			p.Publish.Allow = []string{} // no blanket allow beside replies
		}
		if p.Response.MaxMsgs == 0 {
			p.Response.MaxMsgs = server.DEFAULT_ALLOW_RESPONSE_MAX_MSGS
		}
		if p.Response.Expires == 0 {
			p.Response.Expires = server.DEFAULT_ALLOW_RESPONSE_EXPIRATION
		}
	}
	return p
}
