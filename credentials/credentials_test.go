package credentials_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/credentials"
)

const (
	accA   = "023e105f4ecef8ad9ca31a8372d0c353"
	accB   = "9a7806061c88ada191ed06f989cc3dac"
	accC   = "cccccccccccccccccccccccccccccccc"
	tokA   = "SECRETtokenA0123456789abcdefXYZ"
	tokB   = "SECRETtokenB0123456789abcdefXYZ"
	apiKey = "SECRETglobalKey0123456789abcdef"
	email  = "ops@example.com"
)

// dir makes a directory holding the secret files the test files name.
func dir(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	for name, content := range map[string]string{"tok-a": tokA + "\n", "tok-a-copy": tokA, "tok-b": tokB, "key": apiKey, "key-copy": apiKey + "\n", "empty": ""} {
		if err := os.WriteFile(filepath.Join(d, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func opts(base string) credentials.Options {
	return credentials.Options{DefaultRate: 4, BaseURL: base, Timeout: 5 * time.Second, SecretCheck: time.Millisecond}
}

const goodYAML = `# two credentials and a fallback
credentials:
  - name: media-eu                 # an account token
    token_file: tok-a
    accounts: [023e105f4ecef8ad9ca31a8372d0c353, 9A7806061C88ADA191ED06F989CC3DAC]
    budget: media-eu
    rate: 2.5
  - name: legacy-ops
    email: ops@example.com
    api_key_file: key
    accounts: ["*"]
    budget: ops-user
  - name: media-us
    token_file: tok-b
    accounts:
      - cccccccccccccccccccccccccccccccc
    budget: ops-user
    rate: 4
`

const goodJSON = `{"credentials": [
  {"name": "media-eu", "token_file": "tok-a", "accounts": ["023e105f4ecef8ad9ca31a8372d0c353", "9A7806061C88ADA191ED06F989CC3DAC"], "budget": "media-eu", "rate": 2.5},
  {"name": "legacy-ops", "email": "ops@example.com", "api_key_file": "key", "accounts": ["*"], "budget": "ops-user"},
  {"name": "media-us", "token_file": "tok-b", "accounts": ["cccccccccccccccccccccccccccccccc"], "budget": "ops-user", "rate": 4}
]}`

func TestLoad(t *testing.T) {
	for _, tc := range []struct{ name, file, content string }{
		{"yaml", "credentials.yaml", goodYAML},
		{"json", "credentials.json", goodJSON},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := dir(t)
			path := filepath.Join(d, tc.file)
			write(t, path, tc.content)
			set, err := credentials.Load(path, opts("https://api.cloudflare.com/client/v4"))
			if err != nil {
				t.Fatal(err)
			}
			creds := set.Credentials()
			if len(creds) != 3 || set.Path() != path {
				t.Fatalf("%d credentials", len(creds))
			}
			eu, ops, us := creds[0], creds[1], creds[2]
			if eu.Name != "media-eu" || eu.Budget != "media-eu" || eu.Rate != 2.5 || !slices.Equal(eu.Accounts, []string{accA, accB}) {
				t.Errorf("media-eu: %+v", eu)
			}
			if ops.Name != "legacy-ops" || ops.Budget != "ops-user" || ops.Rate != 4 || !slices.Equal(ops.Accounts, []string{"*"}) {
				t.Errorf("legacy-ops: %+v", ops)
			}
			if us.Budget != "ops-user" || us.Rate != 4 {
				t.Errorf("media-us: %+v", us)
			}
			if !strings.HasPrefix(eu.Auth.ID(), "file:") || !strings.HasPrefix(ops.Auth.ID(), "keyfile:") || eu.Client == nil {
				t.Errorf("auth: %s, %s", eu.Auth.ID(), ops.Auth.ID())
			}
			if tf, ok := ops.Auth.(*cloudflare.TokenFile); !ok || !tf.Legacy() {
				t.Errorf("legacy-ops auth is %T", ops.Auth)
			}
			for acc, want := range map[string]string{
				accA: "media-eu", strings.ToUpper(accA): "media-eu", accB: "media-eu", accC: "media-us",
				"00000000000000000000000000000000": "legacy-ops",
			} {
				if c, ok := set.For(acc); !ok || c.Name != want {
					t.Errorf("For(%s) = %v, %v; want %s", acc, c, ok, want)
				}
			}
			if b := set.Budgets(); len(b) != 2 || b["media-eu"] != 2.5 || b["ops-user"] != 4 {
				t.Errorf("Budgets = %v", b)
			}
			if c, ok := set.Credential("media-us"); !ok || c != us {
				t.Error("Credential(media-us)")
			}
			if eu.VerifyAccount() != accA || ops.VerifyAccount() != "" {
				t.Errorf("VerifyAccount: %q, %q", eu.VerifyAccount(), ops.VerifyAccount())
			}
		})
	}
}

// Without "*", an account no credential names has none.
func TestForNotAllowed(t *testing.T) {
	d := dir(t)
	path := filepath.Join(d, "c.yaml")
	write(t, path, "credentials:\n  - name: a\n    token_file: tok-a\n    accounts: ["+accA+"]\n")
	set, err := credentials.Load(path, opts("https://api.cloudflare.com/client/v4"))
	if err != nil {
		t.Fatal(err)
	}
	if c, ok := set.For(accB); ok || c != nil {
		t.Errorf("For(unnamed) = %v, %v", c, ok)
	}
	if c, ok := set.For(accA); !ok || c.Name != "a" || c.Budget != "a" || c.Rate != 4 {
		t.Errorf("For(named) = %+v, %v", c, ok)
	}
}

func TestLoadErrors(t *testing.T) {
	entry := func(extra string) string {
		return "credentials:\n  - name: a\n    token_file: tok-a\n    accounts: [" + accA + "]\n" + extra
	}
	for _, tc := range []struct {
		name    string
		content string
		line    int
		reason  string
	}{
		{"empty", "", 0, "empty"},
		{"comment only", "# nothing\n", 0, "empty"},
		{"syntax", "credentials:\n  - name: a\n   token_file: [x\n", 3, "not valid YAML or JSON"},
		{"json syntax", `{"credentials": [{"name": "a",}`, 1, "not valid YAML or JSON"},
		{"two documents", entry("") + "---\ncredentials: []\n", 6, "more than one YAML document"},
		{"top not a mapping", "- a\n- b\n", 1, "must be a mapping"},
		{"unknown top field", entry("rate: 3\n"), 5, `unknown field "rate" at the top`},
		{"no list", "other: 1\n", 1, `unknown field "other"`},
		{"list not a list", "credentials: 3\n", 1, `"credentials" must be a list`},
		{"empty list", "credentials: []\n", 1, "empty"},
		{"entry not a mapping", "credentials:\n  - a\n", 2, "a credential must be a mapping"},
		{"unknown field", entry("    colour: red\n"), 5, `unknown field "colour" in a credential`},
		{"unknown field shaped like a token", entry("    " + tokB + ": x\n"), 5, "unknown field in a credential"},
		{"inline token", entry("    token: " + tokB + "\n"), 5, `"token": secrets are not allowed in this file`},
		{"inline api_key", "credentials:\n  - name: a\n    email: ops@example.com\n    api_key: " + apiKey + "\n    accounts: [\"*\"]\n", 4, `"api_key": secrets are not allowed`},
		{"field twice", entry("    name: b\n"), 5, "a field is given twice"},
		{"bad name", "credentials:\n  - name: Media_EU\n    token_file: tok-a\n    accounts: [\"*\"]\n", 2, "name: must be 1-32 characters"},
		{"long name", "credentials:\n  - name: " + strings.Repeat("a", 33) + "\n    token_file: tok-a\n    accounts: [\"*\"]\n", 2, "name: must be 1-32"},
		{"no name", "credentials:\n  - token_file: tok-a\n    accounts: [\"*\"]\n", 2, "without a name"},
		{"name not a string", "credentials:\n  - name: [a]\n    token_file: tok-a\n    accounts: [\"*\"]\n", 2, "name: a non-empty string is required"},
		{"duplicate name", entry("  - name: a\n    token_file: tok-b\n    accounts: [" + accB + "]\n"), 5, `name "a" is already used by the credential on line 2`},
		{"token and key", entry("    email: ops@example.com\n    api_key_file: key\n"), 2, "either token_file, or email and api_key_file"},
		{"no secret", "credentials:\n  - name: a\n    accounts: [\"*\"]\n", 2, "no secret"},
		{"key without email", "credentials:\n  - name: a\n    api_key_file: key\n    accounts: [\"*\"]\n", 2, "api_key_file needs email"},
		{"email without key", "credentials:\n  - name: a\n    email: ops@example.com\n    accounts: [\"*\"]\n", 2, "email needs api_key_file"},
		{"bad email", "credentials:\n  - name: a\n    email: ops example\n    api_key_file: key\n    accounts: [\"*\"]\n", 3, "email: not an e-mail address"},
		{"no accounts", "credentials:\n  - name: a\n    token_file: tok-a\n", 2, "no accounts"},
		{"accounts empty", "credentials:\n  - name: a\n    token_file: tok-a\n    accounts: []\n", 4, "accounts: empty"},
		{"accounts not a list", "credentials:\n  - name: a\n    token_file: tok-a\n    accounts: " + accA + "\n", 4, "accounts: must be a list"},
		{"bad account", "credentials:\n  - name: a\n    token_file: tok-a\n    accounts:\n      - " + accA + "\n      - " + tokB + "-x\n", 6, "accounts: not an account id"},
		{"account twice", "credentials:\n  - name: a\n    token_file: tok-a\n    accounts: [" + accA + ", " + strings.ToUpper(accA) + "]\n", 4, "listed twice"},
		{"account of two credentials", entry("  - name: b\n    token_file: tok-b\n    accounts: [" + accB + ", " + accA + "]\n"), 5, `account ` + accA + ` is already named by credential "a"`},
		{"two wildcards", "credentials:\n  - name: a\n    token_file: tok-a\n    accounts: [\"*\"]\n  - name: b\n    token_file: tok-b\n    accounts: [\"*\"]\n", 5, `"*" is already given to credential "a"`},
		{"bad budget", entry("    budget: Ops User\n"), 5, "budget: must be 1-32"},
		{"negative rate", entry("    rate: -1\n"), 5, "rate: must be 0 or more"},
		{"rate a string", entry("    rate: fast\n"), 5, "rate: must be a number"},
		{"rate infinite", entry("    rate: .inf\n"), 5, "rate: must be a finite number"},
		{"budgets disagree", entry("    budget: shared\n    rate: 2\n  - name: b\n    token_file: tok-b\n    accounts: [" + accB + "]\n    budget: shared\n"), 7, `budget "shared" has rate 4 here but 2 for credential "a"`},
		{"one token file in two budgets", entry("  - name: b\n    token_file: tok-a\n    accounts: [" + accB + "]\n"), 6, `credential "b": token_file holds the same secret as credential "a"'s, charged to budget "a", not "b"`},
		{"one token in two files and budgets", entry("  - name: b\n    token_file: tok-a-copy\n    accounts: [" + accB + "]\n    budget: other\n"), 6, `charged to budget "a", not "other"`},
		{"one key in two budgets", "credentials:\n  - name: a\n    email: ops@example.com\n    api_key_file: key\n    accounts: [\"*\"]\n  - name: b\n    email: ops@example.com\n    api_key_file: key-copy\n    accounts: [" + accB + "]\n", 8, `credential "b": api_key_file holds the same secret as credential "a"'s`},
		{"token file missing", "credentials:\n  - name: a\n    token_file: ./nope\n    accounts: [\"*\"]\n", 3, `credential "a": token_file: token file`},
		{"a token where its file belongs", "credentials:\n  - name: a\n    token_file: " + tokB + "\n    accounts: [\"*\"]\n", 3, `token_file: token file (a value of 31 characters, not shown`},
		{"token file empty", "credentials:\n  - name: a\n    token_file: empty\n    accounts: [\"*\"]\n", 3, "empty"},
		{"key file missing", "credentials:\n  - name: a\n    email: ops@example.com\n    api_key_file: keys/nope\n    accounts: [\"*\"]\n", 4, `api_key_file: API key file`},
		{"a key where its file belongs", "credentials:\n  - name: a\n    email: ops@example.com\n    api_key_file: " + apiKey + "\n    accounts: [\"*\"]\n", 4, `api_key_file: API key file (a value of 31 characters, not shown`},
		{"anchor", "credentials:\n  - &x\n    name: a\n    token_file: tok-a\n    accounts: [\"*\"]\n  - *x\n", 2, "anchors, aliases and tags are not allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := dir(t)
			path := filepath.Join(d, "credentials.yaml")
			write(t, path, tc.content)
			_, err := credentials.Load(path, opts("https://api.cloudflare.com/client/v4"))
			var ce *credentials.Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %v (%T), want *credentials.Error", err, err)
			}
			if ce.Line != tc.line || !strings.Contains(ce.Reason, tc.reason) || ce.Path != path {
				t.Errorf("got line %d %q, want line %d with %q", ce.Line, ce.Reason, tc.line, tc.reason)
			}
			msg := err.Error()
			for _, s := range []string{tokA, tokB, apiKey, email} {
				if strings.Contains(msg, s) {
					t.Errorf("the error holds a secret: %s", msg)
				}
			}
			t.Log(msg)
			if tc.line > 0 && !strings.Contains(msg, "line ") {
				t.Errorf("the message names no line: %s", msg)
			}
		})
	}
}

// A missing credentials file is an error naming it.
func TestLoadMissing(t *testing.T) {
	_, err := credentials.Load(filepath.Join(t.TempDir(), "none.yaml"), opts("https://x.example"))
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "none.yaml") {
		t.Errorf("err = %v", err)
	}
}

// One secret given to two credentials of one budget is one principal
// charged once: allowed.
func TestLoadOneTokenOneBudget(t *testing.T) {
	d := dir(t)
	path := filepath.Join(d, "credentials.yaml")
	write(t, path, "credentials:\n  - name: a\n    token_file: tok-a\n    accounts: ["+accA+"]\n    budget: user\n"+
		"  - name: b\n    token_file: tok-a-copy\n    accounts: ["+accB+"]\n    budget: user\n")
	s, err := credentials.Load(path, opts("https://api.cloudflare.com/client/v4"))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Budgets(); len(got) != 1 || got["user"] != 4 {
		t.Errorf("budgets %v, want only user at 4/s", got)
	}
}
