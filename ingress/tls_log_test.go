package ingress

import (
	"crypto/tls"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/revoker/revoker/queue/queuetest"
)

// TestTLSHandshakeErrorLogLineStaysBounded: the ALPN protocol names a
// client offers are the caller's bytes, and net/http logs a refused
// handshake through the ingress's ErrorLog with crypto/tls's error text,
// which quotes them all. The line stays within the 16 KiB of SPEC §10 and
// holds none of them raw (§11).
func TestTLSHandshakeErrorLogLineStaysBounded(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writePair(t, certFile, keyFile, 1, time.Now().Add(-time.Hour))
	s, logs := startTLS(t, certFile, keyFile, zapcore.DebugLevel)

	evil := "\u202eevil\x1b[2J\u0085"
	protos := []string{evil}
	for i := 0; i < 100; i++ {
		protos = append(protos, strings.Repeat("p", 250)+string(rune('a'+i%26)))
	}
	conn, err := tls.Dial("tcp", s.Addr(), &tls.Config{InsecureSkipVerify: true, NextProtos: protos}) //nolint:gosec // test pair
	if err == nil {
		conn.Close()
		t.Fatal("handshake with only unknown ALPN protocols accepted")
	}
	var line string
	queuetest.Eventually(t, 10*time.Second, "the refused handshake logged", func() bool {
		for _, e := range logs.All() {
			if strings.Contains(e.Message, "TLS handshake error") {
				line = e.Message
				return true
			}
		}
		return false
	})
	if len(line) > 16<<10 {
		t.Errorf("log line is %d bytes, over the 16 KiB of SPEC §10", len(line))
	}
	if strings.ContainsAny(line, "\u202e\x1b\u0085") {
		t.Errorf("log line holds a control character raw: %q", line)
	}
}
