package ingress

import (
	"crypto/sha256"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/revoker/revoker/queue/queuetest"
)

// TestCallersFileChangeTakesEffectWithoutARestart: a caller's token leaks,
// and the operator takes it out of the callers file (renamed over, as
// configuration tools write). Within seconds, and without a restart, the
// token is refused and the caller added in its place is let in. A change
// that does not load keeps the callers in use, and says why.
func TestCallersFileChangeTakesEffectWithoutARestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "callers.yaml")
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(path+".new", []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".new", path); err != nil {
			t.Fatal(err)
		}
	}
	one := func(name, token string) string {
		return fmt.Sprintf("callers:\n  - name: %s\n    token_sha256: %x\n    accounts: [\"*\"]\n", name, sha256.Sum256([]byte(token)))
	}
	write(one("leaked", "leaked-token"))
	h := newHarness(t, func(c *Config) { c.Callers, c.CallersFile = nil, path })
	status := func(token string) int {
		return h.do(h.get("/v1/revocations/some-event", bearer(token)...)).StatusCode
	}
	if got := status("leaked-token"); got == http.StatusUnauthorized {
		t.Fatal("the caller in the file at start is refused")
	}
	if got := status("new-token"); got != http.StatusUnauthorized {
		t.Fatalf("a token of no caller answered %d", got)
	}

	write(one("rotated", "new-token"))
	queuetest.Eventually(t, 15*time.Second, "the removed caller refused and the new one let in", func() bool {
		return status("leaked-token") == http.StatusUnauthorized && status("new-token") != http.StatusUnauthorized
	})

	write("callers: [")
	queuetest.Eventually(t, 15*time.Second, "the file that does not load reported", func() bool {
		return h.logs.FilterMessageSnippet("callers file cannot be used").Len() > 0
	})
	if status("new-token") == http.StatusUnauthorized || status("leaked-token") != http.StatusUnauthorized {
		t.Fatal("a callers file that does not load changed the callers in use")
	}
}
