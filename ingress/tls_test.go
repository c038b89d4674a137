package ingress

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// writePair writes a self-signed certificate for 127.0.0.1 with serial
// and its key; mod sets both files' modification time.
func writePair(t *testing.T, certFile, keyFile string, serial int64, mod time.Time) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "ingress test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for f, b := range map[string][]byte{
		certFile: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyFile:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
	} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(f, mod, mod); err != nil {
			t.Fatal(err)
		}
	}
}

// startTLS starts an ingress serving TLS with the pair in certFile and
// keyFile, logging at level and above to the observer it returns.
func startTLS(t *testing.T, certFile, keyFile string, level zapcore.Level) (*Server, *observer.ObservedLogs) {
	t.Helper()
	ns := startNATS(t, 0, t.TempDir())
	nc, js := queuetest.Connect(t, ns)
	core, logs := observer.New(level)
	s, err := Start(context.Background(), js, Config{
		Addr: "127.0.0.1:0", TLSCert: certFile, TLSKey: keyFile, Callers: tCallers(),
		Client: queue.ClientOn(nc, js, tTopology()), Subjects: tTopology().Subjects, Log: zap.New(core),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s, logs
}

// The certificate pair is read again when its files change; a pair that
// does not load keeps the previous one, and is logged once.
func TestIngressTLSReload(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	start := time.Now().Add(-time.Hour)
	writePair(t, certFile, keyFile, 1, start)
	s, logs := startTLS(t, certFile, keyFile, zapcore.InfoLevel)
	serial := func() int64 {
		conn, err := tls.Dial("tcp", s.Addr(), &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12}) //nolint:gosec // the test's own self-signed pair
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	if got := serial(); got != 1 {
		t.Fatalf("serial %d", got)
	}
	if _, err := tls.Dial("tcp", s.Addr(), &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS11}); err == nil { //nolint:gosec // checking the minimum version
		t.Fatal("TLS 1.1 accepted")
	}

	writePair(t, certFile, keyFile, 2, start.Add(time.Minute))
	queuetest.Eventually(t, 10*time.Second, "the new certificate served", func() bool { return serial() == 2 })

	if err := os.WriteFile(certFile, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	queuetest.Eventually(t, 10*time.Second, "the bad pair logged", func() bool {
		serial() // files are looked at on handshakes
		return logs.FilterMessage("ingress TLS certificate cannot be loaded; keeping the previous one").Len() == 1
	})
	for range 3 {
		if got := serial(); got != 2 {
			t.Fatalf("serial %d after a bad pair, want the previous (2)", got)
		}
	}
	// Looked at again a second later: still logged once.
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) {
		serial()
	}
	if n := logs.FilterMessage("ingress TLS certificate cannot be loaded; keeping the previous one").Len(); n != 1 {
		t.Fatalf("logged %d times", n)
	}
	writePair(t, certFile, keyFile, 3, start.Add(2*time.Minute))
	queuetest.Eventually(t, 10*time.Second, "a good pair served again", func() bool { return serial() == 3 })
}
