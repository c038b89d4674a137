package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCredentialsFileBadExits2: a credentials file that breaks a rule
// stops serve with exit status 2 before NATS is reached, naming the
// variable, the file's line and the reason, never the secret (SPEC §6).
func TestCredentialsFileBadExits2(t *testing.T) {
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("s3cr3t-token-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "credentials.yaml")
	bad := "credentials:\n  - name: media-eu\n    token_file: " + token + "\n    accounts: [\"*\"]\n" +
		"  - name: Media_EU\n    token_file: " + token + "\n    accounts: [abc]\n"
	if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	env := hClone(hFastEnv)
	env["REVOKER_NATS_URL"] = "nats://127.0.0.1:1"
	delete(env, "CLOUDFLARE_API_TOKEN")
	env["REVOKER_CREDENTIALS_FILE"] = path
	r := hRun(t, env, "", "serve")
	r.want(t, exitUsage, "REVOKER_CREDENTIALS_FILE", "line 5")
	if strings.Contains(r.stderr, "s3cr3t") {
		t.Fatalf("the secret reached stderr: %s", r.stderr)
	}
	// Given as a flag, the message names the flag (SPEC §6).
	delete(env, "REVOKER_CREDENTIALS_FILE")
	r = hRun(t, env, "", "serve", "--credentials-file", path)
	r.want(t, exitUsage, "--credentials-file: ", "line 5")
	// The file is read before anything starts: with an embedded server and
	// a variable the file makes unused, its error is still the one line.
	env["REVOKER_CREDENTIALS_FILE"] = path
	env["CLOUDFLARE_API_TOKEN"] = "ignored-beside-the-file"
	env["REVOKER_NATS_URL"] = fmt.Sprintf("nats://127.0.0.1:%d", freePort(t))
	r = hRun(t, env, "", "serve", "--embedded-nats", t.TempDir())
	r.want(t, exitUsage, "REVOKER_CREDENTIALS_FILE", "line 5")
	if lines := hLines(r.stderr); len(lines) != 1 {
		t.Fatalf("%d lines on stderr, want the one naming the variable:\n%s", len(lines), r.stderr)
	}
}
