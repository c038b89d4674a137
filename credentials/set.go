// Package credentials reads REVOKER_CREDENTIALS_FILE (SPEC §6, "Several
// Cloudflare accounts"): which credential calls the API for which account,
// and which rate budget each is charged to. A Set is one reading of the
// file; Watch re-reads it; Router picks an account's credential for each
// call. Secrets live only in the files the credentials file names, and
// never appear in errors.
package credentials

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/revoker/revoker/cloudflare"
)

// DefaultSecretCheck is how often, at most, a credential's secret file is
// re-read when Options.SecretCheck is 0 (SPEC §6: at least every 5 s).
const DefaultSecretCheck = 2 * time.Second

// maxFile bounds what is read of a credentials file: a thousand credentials
// fit in far less.
const maxFile = 1 << 20

// Options is what Load needs besides the file.
type Options struct {
	// DefaultRate is the rate of a credential that gives none
	// (REVOKER_RATE_LIMIT), calls per second; 0 means no limit.
	DefaultRate float64
	// BaseURL, Timeout, UserAgent and Transport configure each
	// credential's client, as in cloudflare.Config. A nil Transport gives
	// every client of one Set one default transport; give one to share
	// connections across reloads too.
	BaseURL   string
	Timeout   time.Duration
	UserAgent string
	Transport http.RoundTripper
	// SecretCheck is how often, at most, a secret file is re-read (on a
	// call, or Set.Refresh); 0 means DefaultSecretCheck.
	SecretCheck time.Duration
	// OnSecretChange, when set, is called with a credential's name after
	// its secret file gave a new secret (so it can be verified again). It
	// must not block.
	OnSecretChange func(name string)
	// OnSecretError, when set, is called with a credential's name when its
	// secret file cannot be used and fails differently from the check
	// before (the previous secret is kept), and with nil once it can be
	// used again. The error names the file, never its content. It must
	// not block.
	OnSecretError func(name string, err error)
}

// Credential is one entry of the file, loaded.
type Credential struct {
	Name   string  // [a-z0-9-]{1,32}: for records, logs and metric labels
	Budget string  // the rate budget it is charged to
	Rate   float64 // calls per second of Budget; 0 means no limit of its own
	// Accounts are the account ids it is for, in lower case as in the
	// file, Wildcard ("*") included when given.
	Accounts []string
	// Auth is its secret: a *cloudflare.TokenFile (a token file, or the
	// legacy pair's key file), re-read when its file changes.
	Auth cloudflare.Credential
	// Client calls the API with Auth.
	Client *cloudflare.Client
	// Line is the line of its entry in the file.
	Line int
}

// Verify checks that the API accepts the credential
// (cloudflare.(*Client).VerifyToken): the user's token check, and for an
// account token its first account's. Each check is an API call: charge it
// to the credential's budget.
func (c *Credential) Verify(ctx context.Context) (*cloudflare.Verification, error) {
	return c.Client.VerifyToken(ctx, c.VerifyAccount())
}

// VerifyAccount is the account whose token check Verify asks when the
// user's refuses: the first account named, "" when there is only "*".
func (c *Credential) VerifyAccount() string {
	for _, a := range c.Accounts {
		if a != Wildcard {
			return a
		}
	}
	return ""
}

// Set is the credentials of one reading of the file. It is immutable and
// safe for concurrent use.
type Set struct {
	path      string
	opts      Options
	digest    [sha256.Size]byte
	creds     []*Credential
	byName    map[string]*Credential
	byAccount map[string]*Credential
	fallback  *Credential
}

// Load reads, checks and loads the credentials file at path: every rule of
// SPEC §6, and every secret file readable and not empty (a relative path is
// taken from the credentials file's directory). Its errors are *Error
// (line and reason) for what the file says, and name files, never secrets.
func Load(path string, opts Options) (*Set, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	return load(path, data, opts)
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("credentials file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFile+1))
	if err != nil {
		return nil, fmt.Errorf("credentials file %q: %w", path, err)
	}
	if len(data) > maxFile {
		return nil, &Error{Path: path, Reason: fmt.Sprintf("larger than %d bytes", maxFile)}
	}
	return data, nil
}

func load(path string, data []byte, opts Options) (*Set, error) {
	entries, err := parse(data, opts.DefaultRate)
	if err != nil {
		var le *lineError
		if errors.As(err, &le) {
			return nil, &Error{Path: path, Line: le.line, Reason: le.reason}
		}
		return nil, err
	}
	if opts.Transport == nil {
		opts.Transport = cloudflare.DefaultTransport()
	}
	every := opts.SecretCheck
	if every == 0 {
		every = DefaultSecretCheck
	}
	s := &Set{
		path:      path,
		opts:      opts,
		digest:    sha256.Sum256(data),
		byName:    make(map[string]*Credential, len(entries)),
		byAccount: make(map[string]*Credential),
	}
	dir := filepath.Dir(path)
	bySecret := make(map[string]*Credential, len(entries))
	for _, e := range entries {
		var auth *cloudflare.TokenFile
		var err error
		field, given := fieldTokenFile, e.tokenFile
		if e.tokenFile != "" {
			auth, err = cloudflare.NewTokenFile(resolve(dir, e.tokenFile), every)
		} else {
			field, given = fieldKeyFile, e.keyFile
			auth, err = cloudflare.NewLegacyKeyFile(e.email, resolve(dir, e.keyFile), every)
		}
		if err != nil {
			why := strings.TrimPrefix(err.Error(), "cloudflare: ")
			if !strings.ContainsAny(given, `/.\`) {
				// Maybe a secret pasted where its path belongs: the path
				// made of it, joined to the file's folder, is not shown.
				why = strings.ReplaceAll(why, strconv.Quote(resolve(dir, given)),
					fmt.Sprintf("(a value of %d characters, not shown: it has no '/' or '.' and may be a pasted secret)", len(given)))
			}
			return nil, &Error{Path: path, Line: e.secretLine, Reason: fmt.Sprintf("credential %q: %s: %s", e.name, field, why)}
		}
		name := e.name
		if fn := opts.OnSecretChange; fn != nil {
			auth.SetOnChange(func(string, string) { fn(name) })
		}
		if fn := opts.OnSecretError; fn != nil {
			auth.SetOnError(func(err error) { fn(name, err) })
		}
		client, err := cloudflare.New(cloudflare.Config{
			BaseURL: opts.BaseURL, Credential: auth, Timeout: opts.Timeout,
			UserAgent: opts.UserAgent, Transport: opts.Transport,
		})
		if err != nil {
			return nil, fmt.Errorf("credential %q: %w", e.name, err)
		}
		c := &Credential{Name: e.name, Budget: e.budget, Rate: e.rate, Accounts: e.accounts, Auth: auth, Client: client, Line: e.line}
		// One secret is one principal of the API, with one budget (SPEC
		// §1): charged to two budgets, it would be called at both rates
		// together and refused with 429s. Told apart by fingerprint.
		if prev, ok := bySecret[auth.ID()]; ok && prev.Budget != c.Budget {
			return nil, &Error{Path: path, Line: e.secretLine, Reason: fmt.Sprintf(
				"credential %q: %s holds the same secret as credential %q's, charged to budget %q, not %q: one secret is one budget of the API; give both the same budget",
				e.name, field, prev.Name, prev.Budget, c.Budget)}
		} else if !ok {
			bySecret[auth.ID()] = c
		}
		s.creds = append(s.creds, c)
		s.byName[c.Name] = c
		for _, a := range e.accounts {
			if a == Wildcard {
				s.fallback = c
			} else {
				s.byAccount[a] = c
			}
		}
	}
	return s, nil
}

func resolve(dir, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// Path is the file the set was read from.
func (s *Set) Path() string { return s.path }

// For returns the credential that calls the API for account: the one that
// names it (in any case), else the one with "*"; false when there is none,
// and the account is not allowed.
func (s *Set) For(account string) (*Credential, bool) {
	if c, ok := s.byAccount[strings.ToLower(account)]; ok {
		return c, true
	}
	return s.fallback, s.fallback != nil
}

// Credentials returns every credential, in the file's order.
func (s *Set) Credentials() []*Credential { return append([]*Credential(nil), s.creds...) }

// Credential returns the credential named name.
func (s *Set) Credential(name string) (*Credential, bool) {
	c, ok := s.byName[name]
	return c, ok
}

// Budgets maps each budget to its rate (calls per second, 0: no limit of
// its own).
func (s *Set) Budgets() map[string]float64 {
	out := make(map[string]float64)
	for _, c := range s.creds {
		out[c.Budget] = c.Rate
	}
	return out
}

// Refresh re-reads every secret file that is due for a check, as a call
// would: run it on a timer so an idle credential's rotation and trouble
// are noticed (Watch does).
func (s *Set) Refresh() {
	for _, c := range s.creds {
		if tf, ok := c.Auth.(*cloudflare.TokenFile); ok {
			tf.Refresh()
		}
	}
}
