package untrusted_test

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/revoker/revoker/untrusted"
)

func TestLine(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		n        int
		want     string
	}{
		{"plain", "key k1 revoked", 64, "key k1 revoked"},
		{"C0 controls", "a\nb\rc\x1bd\x00e", 64, "a b c d e"},
		{"C1 controls", "a\u0085b\u009bc", 64, "a b c"},
		{"bidi override", "evil\u202egnp.exe", 64, "evil gnp.exe"},
		{"bidi isolates and marks", "\u2066a\u2069\u200fb\u061c", 64, "a  b"},
		{"line separators", "a\u2028b\u2029c", 64, "a b c"},
		{"cut on a boundary", "ééé", 5, "é" + untrusted.Ellipsis},
		// SPEC §5: at most 256 characters, the ellipsis one of them.
		{"ellipsis within the limit", strings.Repeat("a", 300), 256, strings.Repeat("a", 253) + untrusted.Ellipsis},
		{"surrounding space", "  x \n", 64, "x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := untrusted.Line(tc.in, tc.n); got != tc.want {
				t.Errorf("Line(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
			}
		})
	}
}

// TestChars: records keep up to n characters, however many bytes each.
func TestChars(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		n        int
		want     string
	}{
		{"fits in characters, not in bytes", strings.Repeat("é", 200), 256, strings.Repeat("é", 200)},
		{"cut to n characters, the ellipsis one of them", strings.Repeat("é", 300), 256, strings.Repeat("é", 255) + untrusted.Ellipsis},
		{"four-byte characters", strings.Repeat("\U0001F511", 10), 4, strings.Repeat("\U0001F511", 3) + untrusted.Ellipsis},
		{"unsafe characters made spaces first", "a\u202eb\nc", 64, "a b c"},
		{"exactly n", "abcd", 4, "abcd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := untrusted.Chars(tc.in, tc.n); got != tc.want {
				t.Errorf("Chars(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
			}
		})
	}
}

func FuzzChars(f *testing.F) {
	f.Add("é\u202eb\nc", 5)
	f.Fuzz(func(t *testing.T, s string, n int) {
		n = n%2048 + 1
		if n < 1 {
			n = -n + 1
		}
		got := untrusted.Chars(s, n)
		if strings.IndexFunc(got, untrusted.Unsafe) >= 0 {
			t.Fatalf("Chars(%q) = %q keeps an unsafe character", s, got)
		}
		if c := utf8.RuneCountInString(got); c > n {
			t.Fatalf("Chars(%q, %d) is %d characters", s, n, c)
		}
		if want := untrusted.Line(s, 4*n); utf8.RuneCountInString(want) <= n && got != want {
			t.Fatalf("Chars(%q, %d) = %q cuts what fits", s, n, got)
		}
	})
}

func FuzzLine(f *testing.F) {
	f.Add("a\u202eb\nc", 5)
	f.Fuzz(func(t *testing.T, s string, n int) {
		n = n%2048 + 1
		if n < 1 {
			n = -n + 1
		}
		got := untrusted.Line(s, n)
		if strings.IndexFunc(got, untrusted.Unsafe) >= 0 {
			t.Fatalf("Line(%q) = %q keeps an unsafe character", s, got)
		}
		if len(got) > max(n, len(untrusted.Ellipsis)) {
			t.Fatalf("Line(%q, %d) is %d bytes", s, n, len(got))
		}
	})
}

func TestEscapeJSON(t *testing.T) {
	in, err := json.Marshal(map[string]string{"cf_ray": "a\u202eb\u0085c\u2066d"})
	if err != nil {
		t.Fatal(err)
	}
	out := untrusted.EscapeJSON(in)
	if strings.IndexFunc(string(out), untrusted.Unsafe) >= 0 {
		t.Fatalf("%s keeps an unsafe character", out)
	}
	var back map[string]string
	if err := json.Unmarshal(out, &back); err != nil || back["cf_ray"] != "a\u202eb\u0085c\u2066d" {
		t.Fatalf("%s reads back as %q (%v)", out, back["cf_ray"], err)
	}
}
