package ingress

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/untrusted"
)

// DefaultRate is a caller's requests per second when its entry names none.
const DefaultRate = 10

// Limits of the callers file: it is read whole, and a webhook secret is a
// few dozen bytes.
const (
	maxCallersFile = 1 << 20
	maxSecretFile  = 64 << 10
	// whsecPrefix marks a Standard Webhooks secret: base64 after it.
	whsecPrefix = "whsec_"
)

// Caller is one configured client of the ingress (SPEC §11). Its secret
// (a token's hash or a webhook secret) is never printed: String shows the
// name only.
type Caller struct {
	Name string
	// tokenHash is the SHA-256 of its bearer token; nil for a webhook caller.
	tokenHash []byte
	// secret is the HMAC key of its signatures; nil for a bearer caller.
	secret []byte
	// Urgent: it may publish urgent revocations.
	Urgent bool
	// Accounts it may revoke in; AnyAccount when "*" was listed.
	Accounts   map[string]bool
	AnyAccount bool
	// Rate is its requests per second; 0 means no limit.
	Rate float64
}

// String names the caller, never its secret.
func (c *Caller) String() string { return "caller " + c.Name }

// GoString is String, so %#v cannot print the secret either.
func (c *Caller) GoString() string { return c.String() }

// Webhook reports whether the caller authenticates by signatures.
func (c *Caller) Webhook() bool { return c.secret != nil }

// MayRevokeIn reports whether the caller may revoke keys of account.
func (c *Caller) MayRevokeIn(account string) bool { return c.AnyAccount || c.Accounts[account] }

// Callers is the loaded callers file.
type Callers struct {
	List []*Caller
}

// Names are the callers' names, in file order.
func (cs *Callers) Names() []string {
	out := make([]string, len(cs.List))
	for i, c := range cs.List {
		out[i] = c.Name
	}
	return out
}

// callerEntry is one entry as written in the file.
type callerEntry struct {
	Name              string   `yaml:"name"`
	TokenSHA256       string   `yaml:"token_sha256"`
	WebhookSecretFile string   `yaml:"webhook_secret_file"`
	Urgent            bool     `yaml:"urgent"`
	Accounts          []string `yaml:"accounts"`
	Rate              *float64 `yaml:"rate"`
}

type callersDoc struct {
	Callers []callerEntry `yaml:"callers"`
}

var callerName = regexp.MustCompile(`^[a-z0-9-]{1,32}$`)

// LoadCallers reads the callers file at path (YAML, or JSON, which is YAML
// too). An error names the file, the line and the reason, and never holds
// a secret or a secret file's content.
func LoadCallers(path string) (*Callers, error) {
	// The path quoted: one holding a line break is still one line.
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", path, unwrapPath(err))
	}
	defer f.Close()
	data, err := readLimited(f, maxCallersFile)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", path, err)
	}
	cs, err := parseCallers(data, readSecretFile)
	if err != nil {
		return nil, fmt.Errorf("%q:%w", path, err)
	}
	return cs, nil
}

// lineError is a reason at a line of the file; its text is ":<line>: <reason>"
// so that LoadCallers can put the path in front.
type lineError struct {
	line   int
	reason string
}

func (e *lineError) Error() string {
	if e.line <= 0 {
		return " " + e.reason
	}
	return fmt.Sprintf("%d: %s", e.line, e.reason)
}

// parseCallers checks the file's content; readSecret reads a webhook
// secret file (a parameter so tests need no files).
func parseCallers(data []byte, readSecret func(string) ([]byte, error)) (*Callers, error) {
	file, err := parser.ParseBytes(data, 0)
	if err != nil {
		return nil, yamlError(err)
	}
	var doc callersDoc
	if len(file.Docs) != 1 || file.Docs[0].Body == nil {
		return nil, &lineError{1, "the file must hold one document with a callers list"}
	}
	if err := yaml.NodeToValue(file.Docs[0].Body, &doc, yaml.Strict()); err != nil {
		return nil, yamlError(err)
	}
	lineOf := func(i int, field string) int {
		p := fmt.Sprintf("$.callers[%d]", i)
		if field != "" {
			p += "." + field
		}
		return nodeLine(file, p)
	}
	if len(doc.Callers) == 0 {
		return nil, &lineError{nodeLine(file, "$.callers"), "no callers: the list is empty or missing"}
	}
	cs := &Callers{}
	seen := map[string]int{}
	// A credential names one caller: a second caller with it could never
	// be told apart, its name and rights never applied.
	credential := map[string]int{}
	once := func(kind string, v []byte, i int) error {
		k := kind + ":" + string(v)
		if first, dup := credential[k]; dup {
			return fmt.Errorf("the same %s as caller %d: every caller needs one of its own", kind, first)
		}
		credential[k] = i + 1
		return nil
	}
	for i, e := range doc.Callers {
		fail := func(field, format string, args ...any) error {
			return &lineError{lineOf(i, field), fmt.Sprintf("caller %d: ", i+1) + fmt.Sprintf(format, args...)}
		}
		if !callerName.MatchString(e.Name) {
			return nil, fail("name", "name %q must be 1-32 characters of [a-z0-9-]", untrusted.Line(e.Name, 40))
		}
		if first, dup := seen[e.Name]; dup {
			return nil, fail("name", "name %s is used twice (first by caller %d)", e.Name, first)
		}
		seen[e.Name] = i + 1
		c := &Caller{Name: e.Name, Urgent: e.Urgent, Accounts: map[string]bool{}, Rate: DefaultRate}
		switch {
		case e.TokenSHA256 != "" && e.WebhookSecretFile != "":
			return nil, fail("", "%s: give token_sha256 or webhook_secret_file, not both", e.Name)
		case e.TokenSHA256 != "":
			h, err := hex.DecodeString(e.TokenSHA256)
			if err != nil || len(h) != 32 {
				// The value is a hash, but it is not quoted either: a
				// token pasted there by mistake must not reach a log.
				return nil, fail("token_sha256", "%s: token_sha256 must be 64 hex digits (the SHA-256 of the token, never the token itself)", e.Name)
			}
			if err := once("token_sha256", h, i); err != nil {
				return nil, fail("token_sha256", "%s: %v", e.Name, err)
			}
			c.tokenHash = h
		case e.WebhookSecretFile != "":
			secret, err := readSecret(e.WebhookSecretFile)
			if err != nil {
				return nil, fail("webhook_secret_file", "%s: webhook_secret_file: %v", e.Name, err)
			}
			if err := once("webhook secret", secret, i); err != nil {
				return nil, fail("webhook_secret_file", "%s: %v", e.Name, err)
			}
			c.secret = secret
		default:
			return nil, fail("", "%s: give token_sha256 or webhook_secret_file", e.Name)
		}
		if len(e.Accounts) == 0 {
			return nil, fail("", "%s: accounts is empty or missing: list account ids, or \"*\" for all", e.Name)
		}
		for j, a := range e.Accounts {
			switch {
			case a == "*":
				c.AnyAccount = true
			case cloudflare.ValidIdentifier(a):
				c.Accounts[a] = true
			default:
				return nil, &lineError{nodeLine(file, fmt.Sprintf("$.callers[%d].accounts[%d]", i, j)),
					fmt.Sprintf("caller %d: %s: account %q must be 1-32 characters of [A-Za-z0-9], or \"*\"", i+1, e.Name, untrusted.Line(a, 40))}
			}
		}
		if e.Rate != nil {
			if r := *e.Rate; r < 0 || math.IsNaN(r) || math.IsInf(r, 0) {
				return nil, fail("rate", "%s: rate must be a number of requests per second, at least 0", e.Name)
			}
			c.Rate = *e.Rate
		}
		cs.List = append(cs.List, c)
	}
	return cs, nil
}

// readSecretFile reads a webhook secret: the Standard Webhooks form
// whsec_<base64> is decoded, anything else (PagerDuty's) is the secret as
// it is; surrounding white space is trimmed. Errors never quote content.
func readSecretFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, unwrapPath(err)
	}
	defer f.Close()
	raw, err := readLimited(f, maxSecretFile)
	if err != nil {
		return nil, err
	}
	return parseSecret(raw)
}

// parseSecret is the secret a file's content holds.
func parseSecret(raw []byte) ([]byte, error) {
	s := bytes.TrimSpace(raw)
	if len(s) == 0 {
		return nil, errors.New("the file is empty")
	}
	if rest, ok := bytes.CutPrefix(s, []byte(whsecPrefix)); ok {
		dec := make([]byte, base64.StdEncoding.DecodedLen(len(rest)))
		n, err := base64.StdEncoding.Decode(dec, rest)
		if err != nil || n == 0 {
			return nil, errors.New("it starts with whsec_ but the rest is not base64")
		}
		return dec[:n], nil
	}
	return s, nil
}

// readLimited reads r whole, refusing more than limit bytes.
func readLimited(r io.Reader, limit int) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return nil, err
	}
	if len(b) > limit {
		return nil, fmt.Errorf("larger than %d bytes", limit)
	}
	return b, nil
}

// unwrapPath drops the path an *os.PathError repeats (the caller names it).
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// yamlError is a parse or decode error as a lineError: goccy's own text
// quotes the source around the error, which may hold anything; only its
// message and line are kept.
func yamlError(err error) error {
	var ye yaml.Error
	if errors.As(err, &ye) {
		line := 0
		if tk := ye.GetToken(); tk != nil && tk.Position != nil {
			line = tk.Position.Line
		}
		return &lineError{line, untrusted.Line(strings.TrimSpace(ye.GetMessage()), 200)}
	}
	return &lineError{0, untrusted.Line(err.Error(), 200)}
}

// nodeLine is the line of the node at path p in file, 0 when not found.
func nodeLine(file *ast.File, p string) int {
	path, err := yaml.PathString(p)
	if err != nil {
		return 0
	}
	n, err := path.FilterFile(file)
	if err != nil || n == nil || n.GetToken() == nil || n.GetToken().Position == nil {
		return 0
	}
	return n.GetToken().Position.Line
}
