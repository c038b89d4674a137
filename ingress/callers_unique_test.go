package ingress

import (
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Two callers with one token_sha256 are one bearer with two names and two
// sets of permissions: the file is accepted, and every request with that
// token is silently taken as the first caller's — the second entry's
// name, accounts and urgent right never apply. A callers file whose
// entries cannot be told apart breaks its rules and should be refused
// (exit 2 at start), like a name used twice.
func TestCallersSharingATokenRefused(t *testing.T) {
	h := hex.EncodeToString(sha("shared-token"))
	p := filepath.Join(t.TempDir(), "callers.yaml")
	content := "callers:\n" +
		"  - name: soar\n    token_sha256: " + h + "\n    urgent: false\n    accounts: [abc]\n" +
		"  - name: oncall\n    token_sha256: " + h + "\n    urgent: true\n    accounts: [\"*\"]\n"
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	cs, err := LoadCallers(p)
	if err != nil {
		if !strings.Contains(err.Error(), "caller 2") || !strings.Contains(err.Error(), "token_sha256") {
			t.Fatalf("refused as %q; want caller 2 and its token_sha256 named", err)
		}
		return
	}
	a := newAuthenticator(cs)
	hdr := http.Header{"Authorization": {"Bearer shared-token"}}
	c, _ := a.authenticate(hdr, nil, time.Now())
	name := "<none>"
	if c != nil {
		name = c.Name
	}
	t.Fatalf("two callers with one token_sha256 accepted; the token authenticates as %q only, caller \"oncall\" can never be used", name)
}
