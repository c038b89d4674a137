package main

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestRemovedCallerStaysRefusedAfterReopen: a caller taken out of the
// callers file (a leaked token) is refused without a restart, and stays
// refused when serve opens a new NATS connection after the old one was
// closed for good (SPEC §10): the new ingress starts from the file's
// latest callers, not those read at start.
func TestRemovedCallerStaysRefusedAfterReopen(t *testing.T) {
	const tokA, tokB = "token-of-a", "token-of-b"
	hash := func(s string) string { sum := sha256.Sum256([]byte(s)); return hex.EncodeToString(sum[:]) }
	dir := t.TempDir()
	path := filepath.Join(dir, "callers.yaml")
	both := "callers:\n  - name: a\n    token_sha256: " + hash(tokA) + "\n    accounts: [\"*\"]\n" +
		"  - name: b\n    token_sha256: " + hash(tokB) + "\n    accounts: [\"*\"]\n"
	onlyA := "callers:\n  - name: a\n    token_sha256: " + hash(tokA) + "\n    accounts: [\"*\"]\n"
	if err := os.WriteFile(path, []byte(both), 0o600); err != nil {
		t.Fatal(err)
	}
	s := hStack(t, map[string]string{"REVOKER_INGRESS_ADDR": "127.0.0.1:0", "REVOKER_INGRESS_CALLERS_FILE": path})
	addrs := make(chan string, 4)
	conns := make(chan *queue.Conn, 4)
	s.startWorkerWith(serveOptions{
		ingressReady: func(a string) { addrs <- a },
		connected:    func(c *queue.Conn) { conns <- c },
	})
	next := func(what string) string {
		t.Helper()
		select {
		case a := <-addrs:
			return "http://" + a
		case <-time.After(20 * time.Second):
			t.Fatalf("%s: the ingress did not listen", what)
		}
		return ""
	}
	var first *queue.Conn
	select {
	case first = <-conns:
	case <-time.After(20 * time.Second):
		t.Fatal("no connection")
	}
	base := next("start")
	status := func(base, tok string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, base+"/v1/revocations/some-id", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return -1
		}
		res.Body.Close()
		return res.StatusCode
	}
	if c := status(base, tokB); c == http.StatusUnauthorized {
		t.Fatalf("b refused before its removal: %d", c)
	}
	if err := os.WriteFile(path, []byte(onlyA), 0o600); err != nil {
		t.Fatal(err)
	}
	queuetest.Eventually(t, 20*time.Second, "b refused once out of the file", func() bool { return status(base, tokB) == http.StatusUnauthorized })

	first.Conn.Close() // the client giving up for good: serve opens a new connection
	base = next("after the reopen")
	if c := status(base, tokB); c != http.StatusUnauthorized {
		t.Fatalf("after the connection was opened again, the removed caller b got %d, want 401 (the callers read at start are back)", c)
	}
}
