package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// REVOKER_NATS_URL mixing websocket and plain schemes is a value the NATS
// client refuses: it must stop the start with exit 2 and one line naming
// the variable (SPEC §6).
func TestNATSURLMixedSchemesOneLineNamingVariable(t *testing.T) {
	vars := map[string]string{
		"CLOUDFLARE_API_TOKEN": "tok-never-printed",
		"REVOKER_NATS_URL":     "nats://127.0.0.1:1,ws://127.0.0.1:2",
		"REVOKER_HTTP_ADDR":    "127.0.0.1:0",
	}
	code, _, stderr := runCmd(context.Background(), vars, "serve")
	lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
	if code != exitUsage || len(lines) != 1 || !strings.Contains(stderr, "REVOKER_NATS_URL") {
		t.Fatalf("exit %d, want 2 and one line naming REVOKER_NATS_URL; stderr (%d lines):\n%s", code, len(lines), stderr)
	}
}

// A bad ingress callers file beside a good credentials file stops the start
// with exit 2 and one line on stderr naming the variable (SPEC §6): nothing
// the start logged before it may join it.
func TestBadCallersFileBesideCredentialsFileOneLine(t *testing.T) {
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("s3cr3t-token-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	creds := filepath.Join(dir, "credentials.yaml")
	if err := os.WriteFile(creds, []byte("credentials:\n  - name: media-eu\n    token_file: "+token+"\n    accounts: [\"*\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	callers := filepath.Join(dir, "callers.yaml")
	if err := os.WriteFile(callers, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	env := hClone(hFastEnv)
	env["REVOKER_NATS_URL"] = "nats://127.0.0.1:1"
	env["REVOKER_CREDENTIALS_FILE"] = creds
	env["REVOKER_INGRESS_ADDR"] = "127.0.0.1:0"
	env["REVOKER_INGRESS_CALLERS_FILE"] = callers
	r := hRun(t, env, "", "serve")
	r.want(t, exitUsage, "REVOKER_INGRESS_CALLERS_FILE")
	if lines := hLines(r.stderr); len(lines) != 1 {
		t.Fatalf("%d lines on stderr, want the one naming the variable:\n%s", len(lines), r.stderr)
	}
}
