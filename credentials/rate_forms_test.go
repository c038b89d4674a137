package credentials_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/revoker/revoker/credentials"
	"github.com/revoker/revoker/queue"
)

// A budget's positive rate is a limit. rate: 0.0000000001 is accepted, and
// its spacing overflows time.Duration into a negative interval, which the
// shared budget takes as "no limit".
func TestFileTinyRateIsRefused(t *testing.T) {
	d := dir(t)
	p := filepath.Join(d, "c.yaml")
	write(t, p, "credentials:\n  - name: a\n    token_file: tok-a\n    accounts: [abc]\n    rate: 0.0000000001\n")
	set, err := credentials.Load(p, opts("https://api.cloudflare.com/client/v4"))
	if err != nil {
		if !strings.Contains(err.Error(), "line 5") || !strings.Contains(err.Error(), "rate") {
			t.Fatalf("refused as %q; want the rate's line named", err)
		}
		return
	}
	t.Errorf("rate 0.0000000001 accepted; want it refused")
	r := set.Budgets()["a"]
	if iv := queue.BudgetInterval(r); iv <= 0 {
		t.Fatalf("rate %g accepted, and the budget's spacing is %v: no limit at all", r, iv)
	}
}

// The file may be JSON (SPEC §6), and 1e1 and 5e-1 are JSON numbers (RFC
// 8259 §6): a rate written so is refused as "not a number".
func TestJSONRateWithExponentRead(t *testing.T) {
	for num, want := range map[string]float64{"1e1": 10, "5e-1": 0.5, "2E0": 2} {
		d := dir(t)
		p := filepath.Join(d, "c.json")
		write(t, p, `{"credentials": [{"name": "a", "token_file": "tok-a", "accounts": ["abc"], "rate": `+num+`}]}`)
		set, err := credentials.Load(p, opts("https://api.cloudflare.com/client/v4"))
		if err != nil {
			t.Errorf("rate %s: %v", num, err)
			continue
		}
		if got := set.Budgets()["a"]; got != want {
			t.Errorf("rate %s read as %g, want %g", num, got, want)
		}
	}
}

// A quoted rate is a string, JSON or YAML: refused.
func TestQuotedRateRefused(t *testing.T) {
	d := dir(t)
	p := filepath.Join(d, "c.json")
	write(t, p, `{"credentials": [{"name": "a", "token_file": "tok-a", "accounts": ["abc"], "rate": "1e1"}]}`)
	if _, err := credentials.Load(p, opts("https://api.cloudflare.com/client/v4")); err == nil || !strings.Contains(err.Error(), "rate") {
		t.Fatalf("a quoted rate: %v; want it refused, named", err)
	}
}
