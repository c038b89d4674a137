package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
)

// embeddedPassword is the password of the embedded server's URL in these
// tests; it must never reach the output.
const embeddedPassword = "emb-Passw0rd-4f1e"

// lockedBuffer is an output the command writes while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// serveEmbedded runs `serve --embedded-nats` with vars (a free HTTP port
// and a stand-in API address added) until the test ends, and returns once
// /readyz answers 200: the worker has connected to the embedded server
// with the settings it was given. The end of the test stops it (as
// SIGTERM does) and checks that it exited 0 and never printed the
// password.
func serveEmbedded(t *testing.T, vars map[string]string) {
	t.Helper()
	httpPort := freePort(t)
	all := map[string]string{
		"CLOUDFLARE_API_TOKEN":     "tok",
		"CLOUDFLARE_BASE_URL":      "http://127.0.0.1:1/client/v4",
		"REVOKER_HTTP_ADDR":        fmt.Sprintf("127.0.0.1:%d", httpPort),
		"REVOKER_SHUTDOWN_TIMEOUT": "2s",
	}
	for k, v := range vars {
		all[k] = v
	}
	ctx, cancel := context.WithCancel(context.Background())
	var out lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--embedded-nats", t.TempDir()}, env{strings.NewReader(""), &out, &out, mapEnv(all)})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != exitOK {
				t.Errorf("serve exited %d, want 0; output:\n%s", code, out.String())
			}
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop within 30s of SIGTERM")
		}
		if strings.Contains(out.String(), embeddedPassword) {
			t.Errorf("the output shows the NATS password:\n%s", out.String())
		}
	})
	select {
	case code := <-done:
		done <- code // for the cleanup
		t.Fatalf("serve exited %d before it was ready; output:\n%s", code, out.String())
	default:
	}
	waitHTTP(t, fmt.Sprintf("http://127.0.0.1:%d/readyz", httpPort), 200)
}

// dialOnce connects once, without retrying, and reports why it failed.
func dialOnce(url string, opts ...nats.Option) (*nats.Conn, error) {
	return nats.Connect(url, append(opts, nats.Timeout(5*time.Second))...)
}

// mustWork connects with opts and checks that JetStream answers there: the
// streams the worker made are in the server it embedded.
func mustWork(t *testing.T, url string, opts ...nats.Option) {
	t.Helper()
	nc, err := dialOnce(url, opts...)
	if err != nil {
		t.Fatalf("a client with the right settings was refused: %v", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.Stream(ctx, "REVOCATIONS"); err != nil {
		t.Fatalf("the work stream, through an admitted client: %v", err)
	}
}

// mustBeRefused connects with opts and checks that the server refused it.
func mustBeRefused(t *testing.T, what, url string, opts ...nats.Option) {
	t.Helper()
	nc, err := dialOnce(url, opts...)
	if err == nil {
		nc.Close()
		t.Fatalf("%s: connected, want refused", what)
	}
	if strings.Contains(err.Error(), embeddedPassword) {
		t.Errorf("%s: the error shows the password", what)
	}
}

// TestServeEmbeddedRequiresTheURLsUser: with a user and password (or a
// token) in REVOKER_NATS_URL, the embedded server lets in only a client
// that gives them, and the worker (which gives them) works.
func TestServeEmbeddedRequiresTheURLsUser(t *testing.T) {
	t.Run("password", func(t *testing.T) {
		port := freePort(t)
		plain := fmt.Sprintf("nats://127.0.0.1:%d", port)
		serveEmbedded(t, map[string]string{
			"REVOKER_NATS_URL": fmt.Sprintf("nats://revoker:%s@127.0.0.1:%d", embeddedPassword, port),
		})
		mustBeRefused(t, "no user", plain)
		mustBeRefused(t, "a wrong password", plain, nats.UserInfo("revoker", "guess"))
		mustBeRefused(t, "another user", plain, nats.UserInfo("admin", embeddedPassword))
		if _, err := dialOnce(plain); !errors.Is(err, nats.ErrAuthorization) {
			t.Errorf("no user: %v, want an authorization violation", err)
		}
		mustWork(t, plain, nats.UserInfo("revoker", embeddedPassword))
	})
	t.Run("token", func(t *testing.T) {
		port := freePort(t)
		plain := fmt.Sprintf("nats://127.0.0.1:%d", port)
		serveEmbedded(t, map[string]string{
			"REVOKER_NATS_URL": fmt.Sprintf("nats://%s@127.0.0.1:%d", embeddedPassword, port),
		})
		mustBeRefused(t, "no token", plain)
		mustBeRefused(t, "a wrong token", plain, nats.Token("guess"))
		mustWork(t, plain, nats.Token(embeddedPassword))
	})
	t.Run("creds", func(t *testing.T) {
		// The identity of REVOKER_NATS_CREDS (SPEC §7): no operator or
		// account JWTs given, only the user's own file.
		account, _ := nkeys.CreateAccount()
		path, _ := userCreds(t, account)
		other, _ := userCreds(t, account)
		port := freePort(t)
		plain := fmt.Sprintf("nats://127.0.0.1:%d", port)
		serveEmbedded(t, map[string]string{"REVOKER_NATS_URL": plain, "REVOKER_NATS_CREDS": path})
		mustBeRefused(t, "no credentials", plain)
		mustBeRefused(t, "another user of the account", plain, nats.UserCredentials(other))
		mustWork(t, plain, nats.UserCredentials(path))
	})
}

// TestServeEmbeddedServesTLS: with REVOKER_NATS_TLS_CERT, _KEY and _CA the
// embedded server speaks TLS with that certificate and lets in only
// clients whose certificate the CA signed (and who give the password);
// the worker, which uses the same settings as a client, works.
func TestServeEmbeddedServesTLS(t *testing.T) {
	pki := newTestPKI(t)
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	serveEmbedded(t, map[string]string{
		"REVOKER_NATS_URL":      fmt.Sprintf("tls://revoker:%s@%s", embeddedPassword, addr),
		"REVOKER_NATS_TLS_CA":   pki.ca,
		"REVOKER_NATS_TLS_CERT": pki.cert,
		"REVOKER_NATS_TLS_KEY":  pki.key,
	})
	user := nats.UserInfo("revoker", embeddedPassword)
	mustBeRefused(t, "no certificate", "tls://"+addr, user, nats.RootCAs(pki.ca))
	mustBeRefused(t, "a certificate of another CA", "tls://"+addr, user, nats.RootCAs(pki.ca), nats.ClientCert(pki.otherCert, pki.otherKey))
	mustBeRefused(t, "a certificate but no password", "tls://"+addr, nats.RootCAs(pki.ca), nats.ClientCert(pki.cert, pki.key))
	mustBeRefused(t, "a server not trusted", "tls://"+addr, user, nats.ClientCert(pki.cert, pki.key))
	mustWork(t, "tls://"+addr, user, nats.RootCAs(pki.ca), nats.ClientCert(pki.cert, pki.key))
}

// TestServeEmbeddedRefusesWhatItCannotEnforce: settings the embedded
// server could not honour, and an address other than loopback without a
// password and TLS, stop the start with exit status 2 and a line naming
// the setting, before anything listens; no secret is printed.
func TestServeEmbeddedRefusesWhatItCannotEnforce(t *testing.T) {
	pki := newTestPKI(t)
	creds := filepath.Join(t.TempDir(), "revoker.creds")
	if err := os.WriteFile(creds, []byte("not read\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	tlsFiles := map[string]string{"REVOKER_NATS_TLS_CERT": pki.cert, "REVOKER_NATS_TLS_KEY": pki.key}
	cases := []struct {
		name string
		url  string
		vars map[string]string
		args []string
		want string
	}{
		{"every interface, no password", "nats://0.0.0.0:%d", nil, nil, "REVOKER_NATS_URL"},
		{"every interface, TLS but no password", "nats://0.0.0.0:%d", tlsFiles, nil, "REVOKER_NATS_URL"},
		{"a name, no password", "nats://nats.example.com:%d", nil, nil, "REVOKER_NATS_URL"},
		{"an address, a password but no TLS", "nats://revoker:" + embeddedPassword + "@192.0.2.10:%d", nil, nil, "REVOKER_NATS_TLS_CERT"},
		{"a flag names the flag", "nats://127.0.0.1:%d", nil, []string{"--nats-url", "nats://0.0.0.0:" + fmt.Sprint(port)}, "--nats-url"},
		{"a creds file", "nats://127.0.0.1:%d", map[string]string{"REVOKER_NATS_CREDS": creds}, nil, "REVOKER_NATS_CREDS"},
		{"a CA but no certificate", "nats://127.0.0.1:%d", map[string]string{"REVOKER_NATS_TLS_CA": pki.ca}, nil, "REVOKER_NATS_TLS_CERT"},
		{"tls:// but no certificate", "tls://revoker:" + embeddedPassword + "@127.0.0.1:%d", nil, nil, "REVOKER_NATS_TLS_CERT"},
		{"a key that is not the certificate's", "nats://127.0.0.1:%d",
			map[string]string{"REVOKER_NATS_TLS_CERT": pki.cert, "REVOKER_NATS_TLS_KEY": pki.otherKey}, nil, "REVOKER_NATS_TLS_CERT"},
		{"a user without a password", "nats://revoker:@127.0.0.1:%d", nil, nil, "REVOKER_NATS_URL"},
		{"a password the server takes for a hash", "nats://revoker:$2a$11$" + embeddedPassword + "@127.0.0.1:%d", nil, nil, "REVOKER_NATS_URL"},
		{"websocket", "ws://127.0.0.1:%d", nil, nil, "REVOKER_NATS_URL"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			vars := map[string]string{
				"CLOUDFLARE_API_TOKEN": "tok",
				"REVOKER_HTTP_ADDR":    "127.0.0.1:0",
				"REVOKER_NATS_URL":     fmt.Sprintf(tc.url, port),
			}
			for k, v := range tc.vars {
				vars[k] = v
			}
			// Bounded: serving instead of refusing must fail, not hang.
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			args := append([]string{"serve", "--embedded-nats", t.TempDir()}, tc.args...)
			code, stdout, stderr := runCmd(ctx, vars, args...)
			if code != exitUsage {
				t.Fatalf("exit %d, want 2; stderr:\n%s", code, stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr does not name %s:\n%s", tc.want, stderr)
			}
			if strings.Contains(stdout+stderr, embeddedPassword) {
				t.Errorf("the output shows the password:\n%s", stdout+stderr)
			}
			if strings.Contains(stderr, creds) || strings.Contains(stderr, pki.otherKey) {
				t.Errorf("the output shows a secret file's path:\n%s", stderr)
			}
			if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
				c.Close()
				t.Error("something listens on the port after the refusal")
			}
		})
	}
}

// testPKI is a CA, a certificate it signed for 127.0.0.1 usable by a
// server and a client alike (the worker presents it to the server it
// embeds), and a certificate of another CA; all as files.
type testPKI struct {
	ca, cert, key       string
	otherCert, otherKey string
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	keyDER := func(k *ecdsa.PrivateKey) []byte {
		b, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	sign := func(tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, by *ecdsa.PrivateKey) (*x509.Certificate, []byte) {
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, by)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c, der
	}
	now := time.Now()
	caTmpl := func(name string) *x509.Certificate {
		return &x509.Certificate{
			SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		}
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "revoker"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		KeyUsage:    x509.KeyUsageDigitalSignature,
	}
	var p testPKI
	for i, name := range []string{"revoker test CA", "another CA"} {
		caKey, leafKey := newKey(), newKey()
		ca, caDER := sign(caTmpl(name), caTmpl(name), &caKey.PublicKey, caKey)
		_, leafDER := sign(leafTmpl, ca, &leafKey.PublicKey, caKey)
		if i == 0 {
			p.ca = write("ca.pem", "CERTIFICATE", caDER)
			p.cert = write("cert.pem", "CERTIFICATE", leafDER)
			p.key = write("key.pem", "EC PRIVATE KEY", keyDER(leafKey))
		} else {
			p.otherCert = write("other-cert.pem", "CERTIFICATE", leafDER)
			p.otherKey = write("other-key.pem", "EC PRIVATE KEY", keyDER(leafKey))
		}
	}
	return p
}
