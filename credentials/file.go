package credentials

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
	"github.com/goccy/go-yaml/token"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/throttle"
)

// Error is what is wrong with a credentials file: where, and why. It never
// holds a secret: values are quoted only where they are names, account ids
// or paths.
type Error struct {
	Path   string // the credentials file
	Line   int    // 1-based; 0 when the problem has no line (the file as a whole)
	Reason string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("credentials file %q: line %d: %s", e.Path, e.Line, e.Reason)
	}
	return fmt.Sprintf("credentials file %q: %s", e.Path, e.Reason)
}

// entry is one credential as the file gives it, checked but not loaded.
type entry struct {
	line       int
	name       string
	tokenFile  string
	email      string
	keyFile    string
	secretLine int // the line of token_file or api_key_file
	accounts   []string
	budget     string
	rate       float64
	rateLine   int
}

// Fields of an entry.
const (
	fieldName      = "name"
	fieldTokenFile = "token_file"
	fieldEmail     = "email"
	fieldKeyFile   = "api_key_file"
	fieldAccounts  = "accounts"
	fieldBudget    = "budget"
	fieldRate      = "rate"
)

// inlineSecrets are fields someone may write a secret into directly; they
// get their own message, never echoing the value.
var inlineSecrets = map[string]string{
	"token":     fieldTokenFile,
	"api_token": fieldTokenFile,
	"api_key":   fieldKeyFile,
	"key":       fieldKeyFile,
}

// Wildcard in accounts names every account no other credential names.
const Wildcard = "*"

// safeKey is how much of an unknown field's name is shown: a pasted token
// used as a key must not end up in an error.
var safeKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]{0,23}$`)

// lineError is an Error without its path, filled in by parse's caller.
type lineError struct {
	line   int
	reason string
}

func (e *lineError) Error() string { return fmt.Sprintf("line %d: %s", e.line, e.reason) }

func at(n ast.Node, format string, args ...any) error {
	return &lineError{line: lineOf(n), reason: fmt.Sprintf(format, args...)}
}

func lineOf(n ast.Node) int {
	if n == nil {
		return 0
	}
	if tk := n.GetToken(); tk != nil && tk.Position != nil {
		return tk.Position.Line
	}
	return 0
}

// parse reads the file's text into checked entries; defaultRate is the rate
// of an entry without one.
func parse(data []byte, defaultRate float64) ([]entry, error) {
	f, err := parser.ParseBytes(data, 0)
	if err != nil {
		return nil, syntaxError(err)
	}
	var body ast.Node
	for _, d := range f.Docs {
		if d == nil || d.Body == nil {
			continue
		}
		if body != nil {
			return nil, at(d.Body, "more than one YAML document")
		}
		body = d.Body
	}
	if body == nil {
		return nil, &lineError{reason: "empty: it must hold a list under \"credentials\""}
	}
	top, err := mapping(body, "the file")
	if err != nil {
		return nil, err
	}
	var list ast.Node
	for _, kv := range top {
		switch k := keyOf(kv); k {
		case "credentials":
			list = kv.Value
		default:
			return nil, unknownField(kv, k, "at the top (only \"credentials\" is)")
		}
	}
	if list == nil {
		return nil, at(body, "no \"credentials\" list")
	}
	seq, ok := list.(*ast.SequenceNode)
	if !ok {
		return nil, at(list, "\"credentials\" must be a list")
	}
	if len(seq.Values) == 0 {
		return nil, at(list, "\"credentials\" is empty: name at least one credential")
	}
	entries := make([]entry, 0, len(seq.Values))
	for _, item := range seq.Values {
		e, err := parseEntry(item, defaultRate)
		if err != nil {
			return nil, err
		}
		entries = append(entries, e)
	}
	return entries, check(entries)
}

// syntaxError keeps the parser's position and message but not its source
// excerpt, which could show a secret written into the file.
func syntaxError(err error) error {
	var ye yaml.Error
	if errors.As(err, &ye) {
		line := 0
		if tk := ye.GetToken(); tk != nil && tk.Position != nil {
			line = tk.Position.Line
		}
		msg := ye.GetMessage()
		// The parser reports a repeated key as a syntax error.
		if strings.Contains(msg, "already defined") {
			return &lineError{line: line, reason: "a field is given twice in one mapping"}
		}
		return &lineError{line: line, reason: "not valid YAML or JSON: " + unquote(msg)}
	}
	return &lineError{reason: "not valid YAML or JSON"}
}

// unquote drops quoted text from a parser message: it may quote a value.
// The parser quotes with %q, so a '"' inside the value is escaped: each
// quoted string is found whole (strconv.QuotedPrefix), and from a '"' that
// does not start one, nothing more is shown.
func unquote(s string) string {
	var b strings.Builder
	for {
		i := strings.IndexByte(s, '"')
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i])
		b.WriteString(`"…"`)
		q, err := strconv.QuotedPrefix(s[i:])
		if err != nil {
			return b.String()
		}
		s = s[i+len(q):]
	}
}

// mapping returns the key-value pairs of a mapping node.
func mapping(n ast.Node, what string) ([]*ast.MappingValueNode, error) {
	switch m := n.(type) {
	case *ast.MappingNode:
		return m.Values, nil
	case *ast.MappingValueNode:
		return []*ast.MappingValueNode{m}, nil
	case *ast.AnchorNode, *ast.AliasNode, *ast.TagNode:
		return nil, at(n, "anchors, aliases and tags are not allowed")
	}
	return nil, at(n, "%s must be a mapping of fields", what)
}

// keyOf is a field's name ("" when the key is not a plain scalar).
func keyOf(kv *ast.MappingValueNode) string {
	switch k := kv.Key.(type) {
	case *ast.StringNode:
		return k.Value
	case *ast.MappingKeyNode, nil:
		return ""
	}
	return kv.Key.GetToken().Value
}

func unknownField(kv *ast.MappingValueNode, k, where string) error {
	if safeKey.MatchString(k) {
		return at(kv.Key, "unknown field %q %s", k, where)
	}
	return at(kv.Key, "unknown field %s", where)
}

// scalar is the text of a scalar value; ok false for null, a list, a
// mapping, an anchor, an alias or a tag.
func scalar(n ast.Node) (string, bool) {
	switch v := n.(type) {
	case *ast.StringNode:
		return v.Value, true
	case *ast.IntegerNode, *ast.FloatNode, *ast.BoolNode:
		return v.GetToken().Value, true
	}
	return "", false
}

func parseEntry(item ast.Node, defaultRate float64) (entry, error) {
	e := entry{line: lineOf(item), rate: defaultRate}
	fields, err := mapping(item, "a credential")
	if err != nil {
		return e, err
	}
	if len(fields) > 0 {
		e.line = lineOf(fields[0].Key)
	}
	seen := map[string]bool{}
	for _, kv := range fields {
		k := keyOf(kv)
		if seen[k] {
			return e, at(kv.Key, "%q given twice", k)
		}
		seen[k] = true
		if file, ok := inlineSecrets[k]; ok {
			return e, at(kv.Key, "%q: secrets are not allowed in this file; put it in a file of its own and name that file with %q", k, file)
		}
		v := kv.Value
		switch k {
		case fieldName, fieldTokenFile, fieldEmail, fieldKeyFile, fieldBudget:
			s, ok := scalar(v)
			if !ok || s == "" {
				return e, at(kv.Key, "%s: a non-empty string is required", k)
			}
			switch k {
			case fieldName:
				if !event.ValidCredential(s) {
					return e, at(v, "name: must be 1-32 characters of a-z, 0-9 and '-'")
				}
				e.name = s
			case fieldBudget:
				if !event.ValidCredential(s) { // a budget is named as a credential is
					return e, at(v, "budget: must be 1-32 characters of a-z, 0-9 and '-'")
				}
				e.budget = s
			case fieldTokenFile:
				e.tokenFile, e.secretLine = s, lineOf(kv.Key)
			case fieldKeyFile:
				e.keyFile, e.secretLine = s, lineOf(kv.Key)
			case fieldEmail:
				// The address is not echoed: it is half of a credential.
				if !cloudflare.ValidSecret(s) || !strings.Contains(s, "@") {
					return e, at(v, "email: not an e-mail address (one word with an '@')")
				}
				e.email = s
			}
		case fieldAccounts:
			accs, err := parseAccounts(kv)
			if err != nil {
				return e, err
			}
			e.accounts = accs
		case fieldRate:
			r, err := parseRate(kv)
			if err != nil {
				return e, err
			}
			e.rate, e.rateLine = r, lineOf(kv.Key)
		default:
			return e, unknownField(kv, k, "in a credential")
		}
	}
	switch {
	case e.name == "":
		return e, at(item, "a credential without a name")
	case e.tokenFile != "" && (e.email != "" || e.keyFile != ""):
		return e, at(item, "credential %q: give either token_file, or email and api_key_file, not both", e.name)
	case e.tokenFile == "" && e.email == "" && e.keyFile == "":
		return e, at(item, "credential %q: no secret: give token_file, or email and api_key_file", e.name)
	case e.tokenFile == "" && e.email == "":
		return e, at(item, "credential %q: api_key_file needs email", e.name)
	case e.tokenFile == "" && e.keyFile == "":
		return e, at(item, "credential %q: email needs api_key_file", e.name)
	case e.accounts == nil:
		return e, at(item, "credential %q: no accounts (list account ids, or \"*\" for every account no other credential names)", e.name)
	}
	if e.budget == "" {
		e.budget = e.name
	}
	if e.rateLine == 0 {
		e.rateLine = e.line
	}
	return e, nil
}

func parseAccounts(kv *ast.MappingValueNode) ([]string, error) {
	seq, ok := kv.Value.(*ast.SequenceNode)
	if !ok {
		return nil, at(kv.Key, "accounts: must be a list of account ids or \"*\"")
	}
	if len(seq.Values) == 0 {
		return nil, at(kv.Key, "accounts: empty (list account ids, or \"*\")")
	}
	out := make([]string, 0, len(seq.Values))
	seen := map[string]bool{}
	for _, v := range seq.Values {
		s, ok := scalar(v)
		switch {
		case !ok:
			return nil, at(v, "accounts: each entry must be an account id or \"*\"")
		case s != Wildcard && !cloudflare.ValidIdentifier(s):
			// Not echoed: a wrong value here may be anything, a token too.
			return nil, at(v, "accounts: not an account id (1-32 characters of A-Z, a-z, 0-9) nor \"*\"")
		}
		s = strings.ToLower(s)
		if seen[s] {
			return nil, at(v, "accounts: %q listed twice", s)
		}
		seen[s] = true
		out = append(out, s)
	}
	return out, nil
}

func parseRate(kv *ast.MappingValueNode) (float64, error) {
	var r float64
	switch v := kv.Value.(type) {
	case *ast.IntegerNode, *ast.FloatNode:
		f, err := strconv.ParseFloat(strings.ReplaceAll(v.GetToken().Value, "_", ""), 64)
		if err != nil {
			return 0, at(v, "rate: not a number")
		}
		r = f
	case *ast.InfinityNode, *ast.NanNode:
		return 0, at(v, "rate: must be a finite number of calls per second")
	case *ast.StringNode:
		// YAML reads a JSON number with an exponent (1e1) as a string; the
		// file may be JSON (SPEC §6). A quoted string is still refused.
		f, err := strconv.ParseFloat(v.Value, 64)
		if err != nil || v.GetToken().Type != token.StringType || !jsonExponent(v.Value) {
			return 0, at(kv.Key, "rate: must be a number of calls per second (0: no limit of its own)")
		}
		r = f
	default:
		return 0, at(kv.Key, "rate: must be a number of calls per second (0: no limit of its own)")
	}
	if math.IsNaN(r) || math.IsInf(r, 0) || r < 0 {
		return 0, at(kv.Value, "rate: must be 0 or more calls per second")
	}
	if r > 0 && r < throttle.MinRate {
		return 0, at(kv.Value, "rate: must be 0 (no limit of its own) or at least one call an hour (0.000278)")
	}
	return r, nil
}

// jsonExponent reports whether s is a JSON number with an exponent
// (RFC 8259 §6), as YAML leaves 1e1 unread.
func jsonExponent(s string) bool {
	mant, exp, ok := strings.Cut(strings.ToLower(s), "e")
	if !ok || mant == "" || exp == "" {
		return false
	}
	exp = strings.TrimLeft(exp, "+-")
	digits := func(d string) bool {
		return d != "" && strings.Trim(d, "0123456789") == ""
	}
	whole, frac, dotted := strings.Cut(strings.TrimPrefix(mant, "-"), ".")
	return digits(whole) && (!dotted || digits(frac)) && digits(exp)
}

// check applies the rules between entries: unique names, each account with
// one credential, at most one "*", one rate per budget.
func check(entries []entry) error {
	names := map[string]int{}
	accounts := map[string]string{}
	wildcard := ""
	type rate struct {
		rate float64
		name string
	}
	budgets := map[string]rate{}
	for _, e := range entries {
		if prev, ok := names[e.name]; ok {
			return &lineError{line: e.line, reason: fmt.Sprintf("name %q is already used by the credential on line %d", e.name, prev)}
		}
		names[e.name] = e.line
		for _, a := range e.accounts {
			if a == Wildcard {
				if wildcard != "" {
					return &lineError{line: e.line, reason: fmt.Sprintf("credential %q: \"*\" is already given to credential %q; only one credential may have it", e.name, wildcard)}
				}
				wildcard = e.name
				continue
			}
			if other, ok := accounts[a]; ok {
				return &lineError{line: e.line, reason: fmt.Sprintf("credential %q: account %s is already named by credential %q", e.name, a, other)}
			}
			accounts[a] = e.name
		}
		if prev, ok := budgets[e.budget]; ok && prev.rate != e.rate {
			return &lineError{line: e.rateLine, reason: fmt.Sprintf("credential %q: budget %q has rate %s here but %s for credential %q; credentials sharing a budget must agree",
				e.name, e.budget, fmtRate(e.rate), fmtRate(prev.rate), prev.name)}
		}
		if _, ok := budgets[e.budget]; !ok {
			budgets[e.budget] = rate{e.rate, e.name}
		}
	}
	return nil
}

func fmtRate(r float64) string { return strconv.FormatFloat(r, 'g', -1, 64) }
