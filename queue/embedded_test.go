package queue_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/queue"
)

// embeddedFiles writes a CA and a certificate and key it signed for
// 127.0.0.1, and returns their paths.
func embeddedFiles(t *testing.T) (ca, cert, key string) {
	t.Helper()
	authority := newCA(t, "embedded test CA")
	leaf := authority.serverTLS(t).Certificates[0]
	keyDER, err := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return authority.file(t), cert, key
}

// TestEmbeddedOptions: the embedded server requires what the connection
// settings give (a user and password, a token, TLS with client
// certificates), and a setting it could not honour is a *config.Error
// naming its variable, without the secret.
func TestEmbeddedOptions(t *testing.T) {
	const pw = "emb-opt-Passw0rd"
	ca, cert, key := embeddedFiles(t)
	cases := []struct {
		name    string
		conn    config.Connection
		wantErr string // the variable named; "" = accepted
		check   func(*server.Options) string
	}{
		{"loopback, open", config.Connection{URL: "nats://127.0.0.1:4222"}, "", func(o *server.Options) string {
			if o.Username != "" || o.Password != "" || o.Authorization != "" || o.TLSConfig != nil {
				return "asks for something not given"
			}
			if o.Host != "127.0.0.1" || o.Port != 4222 {
				return "listens elsewhere"
			}
			return ""
		}},
		{"no port: the default", config.Connection{URL: "nats://localhost"}, "", func(o *server.Options) string {
			if o.Port != 4222 {
				return "not on 4222"
			}
			return ""
		}},
		{"IPv6 loopback", config.Connection{URL: "nats://[::1]:4333"}, "", func(o *server.Options) string {
			if o.Host != "::1" || o.Port != 4333 {
				return "listens elsewhere"
			}
			return ""
		}},
		{"user and password", config.Connection{URL: "nats://revoker:" + pw + "@127.0.0.1:4222,nats://127.0.0.1:4223"}, "", func(o *server.Options) string {
			if o.Username != "revoker" || o.Password != pw {
				return "does not require the URL's user and password"
			}
			return ""
		}},
		{"token", config.Connection{URL: "nats://" + pw + "@127.0.0.1:4222"}, "", func(o *server.Options) string {
			if o.Authorization != pw || o.Username != "" {
				return "does not require the URL's token"
			}
			return ""
		}},
		{"TLS with client certificates", config.Connection{URL: "tls://127.0.0.1:4222", TLSCA: ca, TLSCert: cert, TLSKey: key}, "", func(o *server.Options) string {
			if o.TLSConfig == nil || len(o.TLSConfig.Certificates) != 1 {
				return "no TLS certificate"
			}
			if o.TLSConfig.ClientAuth != tls.RequireAndVerifyClientCert || o.TLSConfig.ClientCAs == nil || !o.TLSVerify {
				return "client certificates not required"
			}
			return ""
		}},
		{"TLS without a CA", config.Connection{URL: "nats://127.0.0.1:4222", TLSCert: cert, TLSKey: key}, "", func(o *server.Options) string {
			if o.TLSConfig == nil || o.TLSConfig.ClientAuth != tls.NoClientCert {
				return "not TLS without client certificates"
			}
			return ""
		}},
		{"every interface with a password and TLS", config.Connection{URL: "nats://revoker:" + pw + "@0.0.0.0:4222", TLSCA: ca, TLSCert: cert, TLSKey: key}, "", func(o *server.Options) string {
			if o.Host != "0.0.0.0" || o.Password != pw || o.TLSConfig == nil {
				return "not as asked"
			}
			return ""
		}},
		{"every interface, open", config.Connection{URL: "nats://0.0.0.0:4222"}, "REVOKER_NATS_URL", nil},
		{"a name, open", config.Connection{URL: "nats://nats.internal:4222"}, "REVOKER_NATS_URL", nil},
		{"every interface, TLS, no password", config.Connection{URL: "nats://[::]:4222", TLSCert: cert, TLSKey: key}, "REVOKER_NATS_URL", nil},
		{"every interface, a password, no TLS", config.Connection{URL: "nats://revoker:" + pw + "@0.0.0.0:4222"}, "REVOKER_NATS_TLS_CERT", nil},
		{"creds file unreadable", config.Connection{URL: "nats://127.0.0.1:4222", Creds: "/run/secrets/revoker.creds"}, "REVOKER_NATS_CREDS", nil},
		{"a CA alone", config.Connection{URL: "nats://127.0.0.1:4222", TLSCA: ca}, "REVOKER_NATS_TLS_CERT", nil},
		{"tls:// without a certificate", config.Connection{URL: "tls://127.0.0.1:4222"}, "REVOKER_NATS_TLS_CERT", nil},
		{"a key of another certificate", config.Connection{URL: "nats://127.0.0.1:4222", TLSCert: cert, TLSKey: ca}, "REVOKER_NATS_TLS_CERT", nil},
		{"a CA file with no certificate", config.Connection{URL: "nats://127.0.0.1:4222", TLSCA: key, TLSCert: cert, TLSKey: key}, "REVOKER_NATS_TLS_CA", nil},
		{"an empty password", config.Connection{URL: "nats://revoker:@127.0.0.1:4222"}, "REVOKER_NATS_URL", nil},
		{"a password without a user", config.Connection{URL: "nats://:" + pw + "@127.0.0.1:4222"}, "REVOKER_NATS_URL", nil},
		{"a bcrypt-like password", config.Connection{URL: "nats://revoker:$2y$10$" + pw + "@127.0.0.1:4222"}, "REVOKER_NATS_URL", nil},
		{"websocket", config.Connection{URL: "wss://127.0.0.1:443"}, "REVOKER_NATS_URL", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			opts, err := queue.EmbeddedOptions(t.TempDir(), tc.conn)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if why := tc.check(opts); why != "" {
					t.Fatal(why)
				}
				return
			}
			var bad *config.Error
			if !errors.As(err, &bad) {
				t.Fatalf("error %v, want a *config.Error naming %s", err, tc.wantErr)
			}
			if bad.Name != tc.wantErr {
				t.Errorf("names %s, want %s (%v)", bad.Name, tc.wantErr, err)
			}
			if strings.Contains(err.Error(), pw) || strings.Contains(err.Error(), key) || strings.Contains(err.Error(), "revoker.creds") {
				t.Errorf("the error shows a secret or a secret's path: %v", err)
			}
		})
	}
}

// TestRunEmbeddedIsLoopbackAndOpenOnly: the demo's server, which requires
// nothing, refuses a URL with credentials (rather than ignore them) and an
// address other than loopback.
func TestRunEmbeddedIsLoopbackAndOpenOnly(t *testing.T) {
	const secret = "demo-Secr3t-91"
	for _, u := range []string{"nats://revoker:" + secret + "@127.0.0.1:4222", "nats://" + secret + "@127.0.0.1:4222", "nats://0.0.0.0:4222"} {
		if s, err := queue.RunEmbedded(t.TempDir(), u); err == nil {
			s.Shutdown()
			t.Errorf("%s: started, want refused", u)
		} else if strings.Contains(err.Error(), secret) {
			t.Errorf("%s: the error shows the secret: %v", u, err)
		}
	}
}

// credsFile writes a .creds file of a new user of a new account, its
// claims shaped by shape (nil: as made), and returns its path.
func credsFile(t *testing.T, shape func(*jwt.UserClaims)) string {
	t.Helper()
	akp, _ := nkeys.CreateAccount()
	b, _ := shapedCreds(t, akp, shape)
	path := filepath.Join(t.TempDir(), "revoker.creds")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// credsServer starts the embedded server requiring the identity of the
// .creds file at path, on a free port, and returns its URL.
func credsServer(t *testing.T, path string) string {
	t.Helper()
	opts, err := queue.EmbeddedOptions(t.TempDir(), config.Connection{URL: "nats://127.0.0.1:4222", Creds: path})
	if err != nil {
		t.Fatal(err)
	}
	opts.Port = -1 // a free one
	s, err := queue.StartServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	return s.ClientURL()
}

// refusedPublish publishes to subject on nc and reports whether the server
// refused it for permissions within 10 s.
func refusedPublish(t *testing.T, nc *nats.Conn, subject string, errs <-chan error) bool {
	t.Helper()
	if err := nc.Publish(subject, nil); err != nil {
		t.Fatal(err)
	}
	if err := nc.FlushTimeout(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		return errors.Is(err, nats.ErrPermissionViolation)
	case <-time.After(10 * time.Second):
		return false
	}
}

// TestEmbeddedCredsHoldsTheJWTsTerms: the embedded server holds what the
// .creds file's JWT says as an operator's server would: a response
// permission with no publish list allows no other publish; a connection is
// closed when the JWT expires and refused before it is valid; limits it
// could not enforce stop the start.
func TestEmbeddedCredsHoldsTheJWTsTerms(t *testing.T) {
	replier := credsFile(t, func(uc *jwt.UserClaims) {
		uc.Sub.Allow.Add("_INBOX.>")
		uc.Resp = &jwt.ResponsePermission{MaxMsgs: 1}
	})
	nc, err := nats.Connect(credsServer(t, replier), nats.UserCredentials(replier))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	errs := make(chan error, 4)
	nc.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err })
	if !refusedPublish(t, nc, "revoke.outcome.acct1.key1", errs) {
		t.Error("a JWT allowing replies only may publish a record")
	}

	expiring := credsFile(t, func(uc *jwt.UserClaims) { uc.Expires = time.Now().Add(3 * time.Second).Unix() })
	closed := make(chan struct{})
	nc2, err := nats.Connect(credsServer(t, expiring), nats.UserCredentials(expiring), nats.MaxReconnects(0),
		nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	select {
	case <-closed:
	case <-time.After(15 * time.Second):
		t.Error("a connection outlived its JWT's expiry by 10 s")
	}

	early := credsFile(t, func(uc *jwt.UserClaims) { uc.NotBefore = time.Now().Add(time.Hour).Unix() })
	if nc3, err := nats.Connect(credsServer(t, early), nats.UserCredentials(early), nats.MaxReconnects(0)); err == nil {
		nc3.Close()
		t.Error("a JWT not valid for an hour yet was admitted")
	}

	for name, shape := range map[string]func(*jwt.UserClaims){
		"source networks": func(uc *jwt.UserClaims) { uc.Src.Add("10.0.0.0/8") },
		"a payload limit": func(uc *jwt.UserClaims) { uc.Limits.Payload = 1024 },
		"a proxy":         func(uc *jwt.UserClaims) { uc.ProxyRequired = true },
		"websockets only": func(uc *jwt.UserClaims) { uc.AllowedConnectionTypes.Add(jwt.ConnectionTypeWebsocket) },
	} {
		_, err := queue.EmbeddedOptions(t.TempDir(), config.Connection{URL: "nats://127.0.0.1:4222", Creds: credsFile(t, shape)})
		var bad *config.Error
		if !errors.As(err, &bad) || bad.Name != "REVOKER_NATS_CREDS" {
			t.Errorf("%s: error %v, want one naming REVOKER_NATS_CREDS", name, err)
		}
	}
}

// TestEmbeddedRequiresTheCredsIdentity: with REVOKER_NATS_CREDS, the
// embedded server admits the file's user alone (SPEC §7; the worker's use
// of it is TestServeEmbeddedRequiresTheURLsUser): not a client
// without credentials, not another user, not the same JWT signed by
// another key; the JWT's permissions hold. A file it cannot believe stops
// the start, naming the variable.
func TestEmbeddedRequiresTheCredsIdentity(t *testing.T) {
	path := credsFile(t, func(uc *jwt.UserClaims) { uc.Pub.Deny.Add("forbidden.>") })
	url := credsServer(t, path)

	nc, err := nats.Connect(url, nats.UserCredentials(path))
	if err != nil {
		t.Fatalf("the file's own user refused: %v", err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A publish the JWT denies is refused by the server.
	refused := make(chan error, 1)
	nc.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { refused <- err })
	if err := nc.Publish("forbidden.x", nil); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-refused:
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Fatalf("error %v, want a permissions violation", err)
		}
	case <-ctx.Done():
		t.Fatal("a publish the JWT denies was not refused")
	}

	other := credsFile(t, nil)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// The file's JWT with another user's seed: the signature fails.
	ob, err := os.ReadFile(other)
	if err != nil {
		t.Fatal(err)
	}
	ujwt, _ := jwt.ParseDecoratedJWT(b)
	okp, _ := jwt.ParseDecoratedUserNKey(ob)
	oseed, _ := okp.Seed()
	forged, _ := jwt.FormatUserConfig(ujwt, oseed)
	forgedPath := filepath.Join(t.TempDir(), "forged.creds")
	if err := os.WriteFile(forgedPath, forged, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, opt := range map[string]nats.Option{
		"no credentials":       func(*nats.Options) error { return nil },
		"another user":         nats.UserCredentials(other),
		"the JWT, another key": nats.UserCredentials(forgedPath),
	} {
		if nc, err := nats.Connect(url, opt, nats.MaxReconnects(0)); err == nil {
			nc.Close()
			t.Errorf("%s: admitted", name)
		} else if !errors.Is(err, nats.ErrAuthorization) && !strings.Contains(strings.ToLower(err.Error()), "authorization") {
			t.Errorf("%s: error %v, want an authorization refusal", name, err)
		}
	}

	expired := credsFile(t, func(uc *jwt.UserClaims) { uc.Expires = time.Now().Add(-time.Minute).Unix() })
	for name, conn := range map[string]config.Connection{
		"expired":          {URL: "nats://127.0.0.1:4222", Creds: expired},
		"not a creds file": {URL: "nats://127.0.0.1:4222", Creds: filepath.Join("testdata", "nothing-here")},
		"and a URL user":   {URL: "nats://revoker:pw@127.0.0.1:4222", Creds: path},
	} {
		_, err := queue.EmbeddedOptions(t.TempDir(), conn)
		var bad *config.Error
		if !errors.As(err, &bad) || bad.Name != "REVOKER_NATS_CREDS" {
			t.Errorf("%s: error %v, want one naming REVOKER_NATS_CREDS", name, err)
		}
	}
	// On an address that is not loopback, creds and TLS are enough.
	ca, cert, key := embeddedFiles(t)
	if _, err := queue.EmbeddedOptions(t.TempDir(), config.Connection{URL: "nats://0.0.0.0:4222", Creds: path, TLSCA: ca, TLSCert: cert, TLSKey: key}); err != nil {
		t.Errorf("creds and TLS on every interface refused: %v", err)
	}
}

// TestStartServerSaysWhyAtOnce: a server that cannot listen (its port is
// taken) is reported at once and with its cause, not after the wait for a
// server still recovering its store.
func TestStartServerSaysWhyAtOnce(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	done := make(chan error, 1)
	go func() {
		s, err := queue.StartServer(&server.Options{Host: "127.0.0.1", Port: port, StoreDir: t.TempDir()})
		if s != nil {
			s.Shutdown()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			t.Fatalf("started on a port in use: %v, want the cause named", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no answer within 30s from a server whose port is in use")
	}
}
