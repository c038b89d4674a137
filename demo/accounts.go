package demo

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
)

// Account is a Cloudflare account the demo's stand-in serves, and the
// credential that calls for it.
type Account struct {
	// ID is the account id events name.
	ID string
	// Credential names its account API token in the credentials file; it
	// is also the name of the token's rate budget, one per token as
	// Cloudflare counts them (SPEC §1, §6).
	Credential string
}

// Unserved is an account that no credential of the demo names: its events
// are dead-lettered as account_not_allowed, with no call.
const Unserved = "otheracct"

// Rate is the calls per second of each budget: what the stand-in allows
// each token and what the credentials file gives the worker, Cloudflare's
// 1,200 per 5 minutes.
const Rate = 4

// Lockout is how long the stand-in refuses every call of a budget once one
// of its calls went over the rate, as Cloudflare does past its limit (for up
// to five minutes there; a few seconds here, so a demo that trips it still
// ends). The worker keeps under the rate, so it should never show.
const Lockout = 3 * time.Second

// Accounts are the demo's accounts, each with its own account token and so
// its own budget. The first is the one the deploy stack's instructions
// publish to.
func Accounts() []Account {
	return []Account{
		{ID: "demoacct", Credential: "media"},
		{ID: "newsacct", Credential: "news"},
	}
}

// CredentialOf names the credential that serves account; "" for an account
// no credential names.
func CredentialOf(account string) string {
	for _, a := range Accounts() {
		if a.ID == account {
			return a.Credential
		}
	}
	return ""
}

// credentialsFileName is the credentials file in the demo's private
// directory.
const credentialsFileName = "credentials.yaml"

// writeCredentials writes, in dir (private to this user), one token file
// per account and the credentials file naming them, and returns the
// stand-in's options that accept exactly those tokens, each for its own
// account and budget, limited to Rate with Lockout. The tokens are new on
// every run and live only in those files and in this process.
func writeCredentials(dir string) (path string, opts []cloudflaretest.Option, err error) {
	var file strings.Builder
	file.WriteString("# Written by `revoker demo` for this run only; removed when it ends.\ncredentials:\n")
	for _, a := range Accounts() {
		tok, err := newToken()
		if err != nil {
			return "", nil, err
		}
		name := a.Credential + ".token"
		if err := writePrivate(filepath.Join(dir, name), tok+"\n"); err != nil {
			return "", nil, err
		}
		// Relative token files are read from the credentials file's
		// directory.
		fmt.Fprintf(&file, "  - name: %s\n    token_file: %s\n    accounts: [%s]\n    budget: %s\n    rate: %d\n",
			a.Credential, name, a.ID, a.Credential, Rate)
		opts = append(opts,
			cloudflaretest.WithAccountToken(a.Credential, tok, a.Credential, a.ID),
			cloudflaretest.WithBudgetRate(a.Credential, Rate))
	}
	opts = append(opts, cloudflaretest.WithLockout(Lockout))
	path = filepath.Join(dir, credentialsFileName)
	if err := writePrivate(path, file.String()); err != nil {
		return "", nil, err
	}
	return path, opts, nil
}

// newToken is a random account API token in the form of Cloudflare's new
// ones.
func newToken() (string, error) {
	b := make([]byte, 20)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("demo token: %w", err)
	}
	return "cfat_" + hex.EncodeToString(b), nil
}

// writePrivate creates path, readable by this user only; an existing file
// (or a link planted there) is an error, never written through.
func writePrivate(path, content string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
