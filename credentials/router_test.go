package credentials_test

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/credentials"
	"github.com/revoker/revoker/worker"
)

var _ worker.API = (*credentials.Router)(nil)

// standIn knows tok-a as account A's token, tok-b as account B's, and the
// user's key for every account, each with its own budget.
func standIn(t *testing.T) *cloudflaretest.Server {
	t.Helper()
	s := cloudflaretest.NewServer(
		cloudflaretest.WithAccountToken("a", tokA, "", accA),
		cloudflaretest.WithAccountToken("b", tokB, "", accB),
		cloudflaretest.WithUserKey("ops", email, apiKey, "ops-user", "*"),
	)
	t.Cleanup(s.Close)
	return s
}

func routerFor(t *testing.T, s *cloudflaretest.Server, content string) *credentials.Router {
	t.Helper()
	d := dir(t)
	path := filepath.Join(d, "credentials.yaml")
	write(t, path, content)
	set, err := credentials.Load(path, opts(s.URL))
	if err != nil {
		t.Fatal(err)
	}
	return credentials.NewRouter(set)
}

const routed = `credentials:
  - {name: media-a, token_file: tok-a, accounts: [` + accA + `]}
  - {name: media-b, token_file: tok-b, accounts: [` + accB + `]}
  - {name: legacy-ops, email: ops@example.com, api_key_file: key, accounts: ["*"], budget: ops-user}
`

// Each account's calls carry its own credential: the stand-in accepts a
// token only for its own account, so a 200 proves the right one was used.
func TestRouterUsesTheAccountsCredential(t *testing.T) {
	s := standIn(t)
	r := routerFor(t, s, routed)
	for _, tc := range []struct{ acc, standIn, name, budget string }{
		{accA, "a", "media-a", "media-a"},
		{accB, "b", "media-b", "media-b"},
		{accC, "ops", "legacy-ops", "ops-user"},
	} {
		n := s.Count()
		resp, err := r.DeleteSigningKey(t.Context(), tc.acc, "k1")
		if err != nil || resp.Status != 200 {
			t.Fatalf("delete in %s: %v, %+v", tc.acc, err, resp)
		}
		list, err := r.ListSigningKeys(t.Context(), tc.acc)
		if err != nil || !list.Listed || list.Has("k1") {
			t.Fatalf("list of %s: %v, %+v", tc.acc, err, list)
		}
		for _, req := range s.Requests()[n:] {
			if req.Credential != tc.standIn || !req.TokenOK {
				t.Errorf("%s: request made with %q (ok %v)", tc.acc, req.Credential, req.TokenOK)
			}
		}
		if name, budget, ok := r.CredentialOf(tc.acc); !ok || name != tc.name || budget != tc.budget {
			t.Errorf("CredentialOf(%s) = %s, %s, %v", tc.acc, name, budget, ok)
		}
	}
}

// An account no credential names, without "*", gets the sentinel error and
// no call.
func TestRouterAccountNotAllowed(t *testing.T) {
	s := standIn(t)
	r := routerFor(t, s, "credentials:\n  - {name: media-a, token_file: tok-a, accounts: ["+accA+"]}\n")
	resp, err := r.DeleteSigningKey(t.Context(), accB, "k1")
	if !errors.Is(err, credentials.ErrAccountNotAllowed) || resp == nil || resp.Status != 0 {
		t.Errorf("delete: %v, %+v", err, resp)
	}
	list, err := r.ListSigningKeys(t.Context(), accB)
	if !errors.Is(err, credentials.ErrAccountNotAllowed) || list == nil || list.Response == nil || list.Listed || list.Why() == "" {
		t.Errorf("list: %v, %+v", err, list)
	}
	if name, budget, ok := r.CredentialOf(accB); ok || name != "" || budget != "" {
		t.Errorf("CredentialOf = %q, %q, %v", name, budget, ok)
	}
	if s.Count() != 0 {
		t.Errorf("%d requests made", s.Count())
	}
}

// Store swaps the set for the calls that follow.
func TestRouterStore(t *testing.T) {
	s := standIn(t)
	r := routerFor(t, s, "credentials:\n  - {name: media-a, token_file: tok-a, accounts: ["+accA+"]}\n")
	d := dir(t)
	path := filepath.Join(d, "credentials.yaml")
	write(t, path, routed)
	next, err := credentials.Load(path, opts(s.URL))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.DeleteSigningKey(t.Context(), accB, "k1"); !errors.Is(err, credentials.ErrAccountNotAllowed) {
		t.Fatalf("before: %v", err)
	}
	r.Store(next)
	if resp, err := r.DeleteSigningKey(t.Context(), accB, "k1"); err != nil || resp.Status != 200 {
		t.Errorf("after: %v, %+v", err, resp)
	}
	if r.Set() != next {
		t.Error("Set is not the stored one")
	}
}

// Each credential verifies where the API knows it: the account tokens on
// their account's endpoint, the legacy pair through /user.
func TestCredentialVerify(t *testing.T) {
	s := standIn(t)
	r := routerFor(t, s, routed)
	for _, c := range r.Set().Credentials() {
		v, err := c.Verify(t.Context())
		if err != nil || !v.Active {
			t.Errorf("%s: %v, %+v", c.Name, err, v)
		}
	}
	s.SetTokenStatus("b", "expired")
	c, _ := r.Set().Credential("media-b")
	if v, err := c.Verify(t.Context()); err != nil || v.Active || v.TokenStatus != "expired" {
		t.Errorf("expired: %v, %+v", err, v)
	}
}
