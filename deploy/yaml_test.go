package deploy_test

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

// The manifests are read with the small YAML reader below: the module has
// no YAML library, and the manifests use only block mappings and
// sequences, plain and quoted scalars, flow sequences, literal block
// scalars (| and |-, a file inside a Secret's stringData) and comments.
// Anything else (anchors, folded scalars, flow mappings with content, tabs)
// is an error, so a manifest the reader does not understand fails the test
// instead of being misread.

// yamlLine is one meaningful line: its indentation and its text without
// the comment.
type yamlLine struct {
	indent int
	text   string
	no     int // 1-based, for messages
}

// readManifests parses every document of a YAML file.
func readManifests(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	docs, err := parseYAML(string(b))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return docs
}

func parseYAML(src string) ([]map[string]any, error) {
	var docs []map[string]any
	var cur []yamlLine
	flush := func() error {
		if len(cur) == 0 {
			return nil
		}
		p := &yamlParser{lines: cur}
		v, err := p.block(cur[0].indent)
		if err != nil {
			return err
		}
		if p.i != len(p.lines) {
			return fmt.Errorf("line %d: unexpected indentation", p.lines[p.i].no)
		}
		m, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("a document that is not a mapping")
		}
		docs = append(docs, m)
		cur = nil
		return nil
	}
	raws := strings.Split(src, "\n")
	for n := 0; n < len(raws); n++ {
		raw := raws[n]
		if strings.Contains(raw, "\t") {
			return nil, fmt.Errorf("line %d: a tab", n+1)
		}
		if strings.TrimRight(raw, " ") == "---" {
			if err := flush(); err != nil {
				return nil, err
			}
			continue
		}
		text := stripComment(raw)
		if strings.TrimSpace(text) == "" {
			continue
		}
		indent := len(text) - len(strings.TrimLeft(text, " "))
		line := yamlLine{indent: indent, text: strings.TrimSpace(text), no: n + 1}
		if head, keep, ok := blockHeader(line.text); ok {
			// The block's lines are taken as written (a '#' in them is
			// text): every following line indented deeper, or blank.
			// The block is indented deeper than its key, which follows
			// any "- " of the line.
			key := line.text
			for strings.HasPrefix(key, "- ") {
				key = strings.TrimLeft(key[2:], " ")
			}
			content, used, err := blockScalar(raws[n+1:], indent+len(line.text)-len(key), keep, n+2)
			if err != nil {
				return nil, err
			}
			line.text = head + " " + strconv.Quote(content)
			n += used
		}
		cur = append(cur, line)
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return docs, nil
}

// blockHeader reports whether text is "key: |" or "key: |-" (or the same
// after "- "), and returns it without the indicator, and whether the final
// line break is kept.
func blockHeader(text string) (head string, keep, ok bool) {
	for _, ind := range []string{": |-", ": |"} {
		if h, found := strings.CutSuffix(text, ind); found && isMappingEntry(h+":") {
			return h + ":", ind == ": |", true
		}
	}
	return "", false, false
}

// blockScalar reads a literal block scalar from lines, whose key is
// indented by indent: its text with the block's indentation removed, and
// how many lines it took. first is the 1-based number of lines[0].
func blockScalar(lines []string, indent int, keep bool, first int) (string, int, error) {
	var out []string
	blockIndent := -1
	used := 0
	for i, l := range lines {
		if strings.Contains(l, "\t") {
			return "", 0, fmt.Errorf("line %d: a tab", first+i)
		}
		if strings.TrimSpace(l) == "" {
			out = append(out, "")
			used++
			continue
		}
		in := len(l) - len(strings.TrimLeft(l, " "))
		if in <= indent {
			break
		}
		if blockIndent < 0 {
			blockIndent = in
		}
		if in < blockIndent {
			return "", 0, fmt.Errorf("line %d: less indented than its block", first+i)
		}
		out = append(out, strings.TrimRight(l[blockIndent:], " "))
		used++
	}
	// Trailing blank lines belong to no one ("clip" and "strip").
	for len(out) > 0 && out[len(out)-1] == "" {
		out = out[:len(out)-1]
		used--
	}
	if len(out) == 0 {
		return "", used, nil
	}
	text := strings.Join(out, "\n")
	if keep {
		text += "\n"
	}
	return text, used, nil
}

// stripComment removes a comment: a '#' at the start or after a space,
// outside quotes.
func stripComment(s string) string {
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '#' && (i == 0 || s[i-1] == ' '):
			return strings.TrimRight(s[:i], " ")
		}
	}
	return strings.TrimRight(s, " ")
}

type yamlParser struct {
	lines []yamlLine
	i     int
}

// block parses the mapping or sequence whose lines start at indent.
func (p *yamlParser) block(indent int) (any, error) {
	l := p.lines[p.i]
	if l.indent != indent {
		return nil, fmt.Errorf("line %d: unexpected indentation", l.no)
	}
	if l.text == "-" || strings.HasPrefix(l.text, "- ") {
		return p.sequence(indent)
	}
	return p.mapping(indent)
}

func (p *yamlParser) sequence(indent int) ([]any, error) {
	var out []any
	for p.i < len(p.lines) {
		l := p.lines[p.i]
		if l.indent < indent {
			break
		}
		if l.indent > indent || !(l.text == "-" || strings.HasPrefix(l.text, "- ")) {
			if l.indent == indent {
				break // a key of the enclosing mapping
			}
			return nil, fmt.Errorf("line %d: unexpected indentation in a sequence", l.no)
		}
		rest := strings.TrimSpace(strings.TrimPrefix(l.text, "-"))
		switch {
		case rest == "":
			p.i++
			if p.i >= len(p.lines) || p.lines[p.i].indent <= indent {
				out = append(out, nil)
				continue
			}
			v, err := p.block(p.lines[p.i].indent)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		case isMappingEntry(rest):
			// "- key: value": a mapping whose first key sits after the dash.
			p.lines[p.i] = yamlLine{indent: indent + 2, text: rest, no: l.no}
			v, err := p.mapping(indent + 2)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		default:
			v, err := scalar(rest, l.no)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
			p.i++
		}
	}
	return out, nil
}

func (p *yamlParser) mapping(indent int) (map[string]any, error) {
	out := map[string]any{}
	for p.i < len(p.lines) {
		l := p.lines[p.i]
		if l.indent < indent {
			break
		}
		if l.indent > indent {
			return nil, fmt.Errorf("line %d: unexpected indentation in a mapping", l.no)
		}
		if strings.HasPrefix(l.text, "- ") || l.text == "-" {
			break // the end of a sequence of mappings at this indentation
		}
		if !isMappingEntry(l.text) {
			return nil, fmt.Errorf("line %d: %q is not a key", l.no, l.text)
		}
		key, val := splitEntry(l.text)
		key = unquote(key)
		if _, dup := out[key]; dup {
			return nil, fmt.Errorf("line %d: key %q twice", l.no, key)
		}
		p.i++
		if val != "" {
			v, err := scalar(val, l.no)
			if err != nil {
				return nil, err
			}
			out[key] = v
			continue
		}
		switch {
		case p.i < len(p.lines) && p.lines[p.i].indent > indent:
			v, err := p.block(p.lines[p.i].indent)
			if err != nil {
				return nil, err
			}
			out[key] = v
		case p.i < len(p.lines) && p.lines[p.i].indent == indent && strings.HasPrefix(p.lines[p.i].text, "- "):
			// A sequence may sit at its key's indentation.
			v, err := p.sequence(indent)
			if err != nil {
				return nil, err
			}
			out[key] = v
		default:
			out[key] = nil
		}
	}
	return out, nil
}

// isMappingEntry reports whether s is "key: value" or "key:".
func isMappingEntry(s string) bool {
	if s == "" || s[0] == '[' || s[0] == '{' {
		return false
	}
	k, _ := splitEntry(s)
	return k != ""
}

// splitEntry splits "key: value" at the first ": " outside quotes, or a
// trailing ':'; key is "" when s is not an entry.
func splitEntry(s string) (key, val string) {
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case (c == '"' || c == '\'') && i == 0:
			quote = c
		case c == ':' && (i == len(s)-1 || s[i+1] == ' '):
			return strings.TrimSpace(s[:i]), strings.TrimSpace(s[i+1:])
		}
	}
	return "", ""
}

// scalar is a value written on one line: a quoted or plain string or a
// flow sequence of them. Numbers and booleans stay text; the tests compare
// them as written.
func scalar(s string, no int) (any, error) {
	switch {
	case strings.HasPrefix(s, "&"), strings.HasPrefix(s, "*"), strings.HasPrefix(s, "!"),
		strings.HasPrefix(s, "|"), strings.HasPrefix(s, ">"):
		return nil, fmt.Errorf("line %d: %q is beyond this reader", no, s)
	case s == "{}":
		return map[string]any{}, nil
	case strings.HasPrefix(s, "{"):
		return nil, fmt.Errorf("line %d: a flow mapping is beyond this reader", no)
	case strings.HasPrefix(s, "["):
		if !strings.HasSuffix(s, "]") {
			return nil, fmt.Errorf("line %d: a flow sequence over several lines is beyond this reader", no)
		}
		inner := strings.TrimSpace(s[1 : len(s)-1])
		out := []any{}
		if inner == "" {
			return out, nil
		}
		for _, item := range strings.Split(inner, ",") {
			item = strings.TrimSpace(item)
			if strings.ContainsAny(item, "[]{}") {
				return nil, fmt.Errorf("line %d: a nested flow collection is beyond this reader", no)
			}
			out = append(out, unquote(item))
		}
		return out, nil
	}
	if (s[0] == '"' || s[0] == '\'') && (len(s) < 2 || s[len(s)-1] != s[0]) {
		return nil, fmt.Errorf("line %d: an unterminated quoted string", no)
	}
	return unquote(s), nil
}

func unquote(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		if u, err := strconv.Unquote(s); err == nil {
			return u
		}
	}
	if len(s) >= 2 && s[0] == '\'' && s[len(s)-1] == '\'' {
		return strings.ReplaceAll(s[1:len(s)-1], "''", "'")
	}
	return s
}

// TestYAMLReader: the reader gets the shapes the manifests use right, and
// refuses what it does not understand.
func TestYAMLReader(t *testing.T) {
	docs, err := parseYAML(`# a comment
a: 1
b:
  c: "x # not a comment"
  d: [x, "y"]
e:
- f: 1
  g:
    - h
    - 'i'
- j
k: # empty
---
l: m
`)
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprint(docs)
	want := "[map[a:1 b:map[c:x # not a comment d:[x y]] e:[map[f:1 g:[h i]] j] k:<nil>] map[l:m]]"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	// Literal blocks: taken as written, '#' included, blank lines inside
	// kept, the final line break kept by | and dropped by |-.
	docs, err = parseYAML(`s:
  f: |
    a: 1 # kept

    b: [2]

  g: |-
    x
  h:
    - i: |
        y
      j: z
t: u
`)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprintf("%q", docs), `[map["s":map["f":"a: 1 # kept\n\nb: [2]\n" "g":"x" "h":[map["i":"y\n" "j":"z"]]] "t":"u"]]`; got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	for _, bad := range []string{"a: >\n  x\n", "a: |\n  x\n y\n", "a: |\n  x\n\ty\n", "a: &x 1\n", "a:\n\tb: 1\n", "a: 1\n  b: 2\n", "a: 1\na: 2\n", "a: {b: 1}\n", "a: \"x\n"} {
		if _, err := parseYAML(bad); err == nil {
			t.Errorf("%q: read without complaint", bad)
		}
	}
}
