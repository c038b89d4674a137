package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/revoker/revoker/queue/queuetest"
)

// badValue runs `revoker serve` with vars over a worker's usual settings
// (a NATS URL nobody answers unless vars gives one) and args, and reports
// how it failed to stop at once with exit 2 and one line naming want; ""
// when it did.
func badValue(vars map[string]string, want string, wait time.Duration, args ...string) string {
	all := map[string]string{
		"CLOUDFLARE_API_TOKEN": "tok-never-printed",
		"REVOKER_NATS_URL":     "nats://127.0.0.1:1",
		"REVOKER_HTTP_ADDR":    "127.0.0.1:0",
		"REVOKER_LOG_LEVEL":    "error",
	}
	for k, v := range vars {
		all[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	code, _, stderr := runCmd(ctx, all, append([]string{"serve"}, args...)...)
	lines := hLines(stderr)
	if code == exitUsage && len(lines) == 1 && strings.Contains(lines[0], want) {
		return ""
	}
	return fmt.Sprintf("exit %d, want 2 and one line naming %s; stderr (%d lines):\n%s", code, want, len(lines), stderr)
}

// freeLoopbackAddr returns a loopback address no one listens on now.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// REVOKER_DEBUG_ADDR equal to REVOKER_HTTP_ADDR can never start: a bad
// value (SPEC §6, §7), not exit 1 once the second listen fails.
func TestDebugAddrSameAsHTTPAddrIsBadConfig(t *testing.T) {
	addr := freeLoopbackAddr(t)
	if why := badValue(map[string]string{"REVOKER_HTTP_ADDR": addr, "REVOKER_DEBUG_ADDR": addr}, "REVOKER_DEBUG_ADDR", 20*time.Second); why != "" {
		t.Fatal(why)
	}
}

// A REVOKER_HTTP_ADDR host that is no IP address and does not resolve
// ("256.1.1.1") was accepted, and the start failed with exit 1 and a line
// naming no variable (SPEC §6).
func TestHTTPAddrBadHostNamedExit2(t *testing.T) {
	if why := badValue(map[string]string{"REVOKER_HTTP_ADDR": "256.1.1.1:8080"}, "REVOKER_HTTP_ADDR", 20*time.Second); why != "" {
		t.Fatal(why)
	}
}

// A REVOKER_NATS_TLS_CA (or client certificate) that exists but holds no
// PEM stopped the start with exit 2, its one line naming no variable:
// "revoker serve: bad configuration: nats: nats: failed to parse root
// certificate from ..." (SPEC §6: one line naming the variable or flag).
func TestNATSTLSFilesBadContentNamed(t *testing.T) {
	junk := t.TempDir() + "/junk.pem"
	if err := os.WriteFile(junk, []byte("not pem\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		vars map[string]string
		args []string
		want string
	}{
		{map[string]string{"REVOKER_NATS_TLS_CA": junk}, nil, "REVOKER_NATS_TLS_CA"},
		{nil, []string{"--nats-tls-ca", junk}, "--nats-tls-ca"},
		{map[string]string{"REVOKER_NATS_TLS_CERT": junk, "REVOKER_NATS_TLS_KEY": junk}, nil, "REVOKER_NATS_TLS_CERT"},
	} {
		if why := badValue(tc.vars, tc.want, 20*time.Second, tc.args...); why != "" {
			t.Errorf("%v %v: %s", tc.vars, tc.args, why)
		}
	}
}

// The ingress callers file's errors printed its path raw: a path holding
// a line break (a file that exists, so config's own check passes) split
// the one line of a bad value in two (SPEC §6).
func TestCallersFilePathWithNewlineOneLine(t *testing.T) {
	callers := t.TempDir() + "/callers\nINJECTED.yaml"
	if err := os.WriteFile(callers, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{"REVOKER_INGRESS_ADDR": "127.0.0.1:0", "REVOKER_INGRESS_CALLERS_FILE": callers}
	if why := badValue(vars, "REVOKER_INGRESS_CALLERS_FILE", 20*time.Second); why != "" {
		t.Fatal(why)
	}
}

// A work or dead-letter subject under $JS.API was accepted, but JetStream
// can never make a stream on it (err_code 10052): serve retried "JetStream
// setup not possible yet" for ever instead of stopping with exit 2 and one
// line naming the variable (SPEC §6; §3: what makes the work impossible
// stops the start).
func TestJetStreamAPISubjectIsBadValue(t *testing.T) {
	for _, tc := range []struct{ env, val string }{
		{"REVOKER_SUBJECTS", "$JS.API.revoke"},
		{"REVOKER_DLQ_SUBJECT", "$JS.API.dlq"},
	} {
		srv, _, _ := queuetest.JetStream(t)
		if why := badValue(map[string]string{"REVOKER_NATS_URL": srv.ClientURL(), tc.env: tc.val}, tc.env, 8*time.Second); why != "" {
			t.Errorf("%s=%s: %s", tc.env, tc.val, why)
		}
	}
}
