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
	token, err := jwt.ParseDecoratedJWT(b)
	var claims *jwt.UserClaims
	if err == nil {
		claims, err = jwt.DecodeUserClaims(token)
	}
	if err != nil {
		return nil, bad("holds no valid user JWT")
	}
	seed, err := jwt.ParseDecoratedUserNKey(b)
	if err != nil {
		return nil, bad("holds no user seed")
	}
	pub, err := seed.PublicKey()
	seed.Wipe()
	if err != nil || pub != claims.Subject {
		return nil, bad("holds a seed that is not the key of its user JWT")
	}
	if claims.Expires != 0 && time.Unix(claims.Expires, 0).Before(time.Now()) {
		return nil, bad("holds a user JWT that has expired")
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
	if a.claims.Expires != 0 && time.Unix(a.claims.Expires, 0).Before(time.Now()) {
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
	c.RegisterUser(&server.User{Username: a.claims.Subject, Permissions: permissionsOf(a.claims.Permissions)})
	return true
}

// permissionsOf is the server's form of a user JWT's permissions; nil
// (everything allowed) when the JWT sets none.
func permissionsOf(p jwt.Permissions) *server.Permissions {
	subject := func(sp jwt.Permission) *server.SubjectPermission {
		if len(sp.Allow) == 0 && len(sp.Deny) == 0 {
			return nil
		}
		return &server.SubjectPermission{Allow: sp.Allow, Deny: sp.Deny}
	}
	out := &server.Permissions{Publish: subject(p.Pub), Subscribe: subject(p.Sub)}
	if p.Resp != nil {
		out.Response = &server.ResponsePermission{MaxMsgs: p.Resp.MaxMsgs, Expires: p.Resp.Expires}
	}
	if out.Publish == nil && out.Subscribe == nil && out.Response == nil {
		return nil
	}
	return out
}
