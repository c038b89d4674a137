package credentials_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/revoker/revoker/credentials"
)

// A secret written inline, whose text the YAML parser quotes in its
// message, must not reach the error, not even in part (SPEC §6), whatever
// characters it holds: a '"' in it must not end the hiding early.
func TestSyntaxErrorHidesQuotedValueWithQuote(t *testing.T) {
	d := dir(t)
	p := filepath.Join(d, "credentials.yaml")
	for _, secretLine := range []string{
		`    token: >"Zq9SecretHead"Zq9SecretTail`,
		`    token: |Zq9SecretHead"Zq9SecretTail`,
		`    token_file: >Zq9SecretHead"Zq9SecretTail`,
	} {
		write(t, p, "credentials:\n  - name: a\n"+secretLine+"\n    accounts: [\"*\"]\n")
		_, err := credentials.Load(p, opts("http://127.0.0.1:1"))
		if err == nil {
			t.Fatalf("%s: loaded", secretLine)
		}
		if strings.Contains(err.Error(), "Zq9Secret") {
			t.Errorf("%s: the error shows part of the value: %v", secretLine, err)
		}
	}
}
