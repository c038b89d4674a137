package deploy_test

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/revoker/revoker/queue"
)

// routePassword is the route password of the example cluster in these
// tests, given through the environment as the files expect.
const routePassword = "0f3c9a1e7b5d42c8a6e1f09b3d7c5a21"

// TestNATSClusterRoutesNeedPasswordAndTLS runs the three files of
// nats-cluster/ (route secrets from the environment, route certificates
// made for the test, free ports and stores instead of the files' own): the
// nodes form a cluster over authenticated TLS routes, and a route that
// lacks the password, TLS or a certificate of the routes' CA is refused.
func TestNATSClusterRoutesNeedPasswordAndTLS(t *testing.T) {
	dir := t.TempDir()
	pki := newRoutePKI(t, filepath.Join(dir, "tls"))
	ports := freePorts(t, 3)
	t.Setenv("REVOKER_ROUTE_PASSWORD", routePassword)
	for i, p := range ports {
		t.Setenv(fmt.Sprintf("REVOKER_ROUTE_N%d", i+1), fmt.Sprintf("nats-route://revoker-route:%s@127.0.0.1:%d", routePassword, p))
	}
	var confs []string
	for i := 1; i <= 3; i++ {
		p, err := filepath.Abs(filepath.Join("nats-cluster", fmt.Sprintf("n%d.conf", i)))
		if err != nil {
			t.Fatal(err)
		}
		confs = append(confs, p)
	}
	// The files name their certificates relative to where the server runs.
	t.Chdir(dir)

	opts := make([]*server.Options, 3)
	for i, conf := range confs {
		text, err := os.ReadFile(conf)
		if err != nil {
			t.Fatal(err)
		}
		for n, line := range strings.Split(string(text), "\n") {
			line = strings.TrimSpace(line)
			if line != "" && !strings.HasPrefix(line, "#") && (strings.Contains(line, "://") || strings.Contains(line, routePassword)) {
				t.Errorf("n%d.conf:%d: a route URL (or its password) written in the file: %s", i+1, n+1, line)
			}
		}
		o, err := server.ProcessConfigFile(conf)
		if err != nil {
			t.Fatalf("n%d.conf: %v", i+1, err)
		}
		if o.Cluster.Username == "" || o.Cluster.Password != routePassword {
			t.Errorf("n%d: route authorization user %q, password from the environment: %v", i+1, o.Cluster.Username, o.Cluster.Password == routePassword)
		}
		if tc := o.Cluster.TLSConfig; tc == nil || tc.ClientAuth != tls.RequireAndVerifyClientCert || tc.ClientCAs == nil {
			t.Errorf("n%d: routes do not require TLS with a verified certificate", i+1)
		}
		if len(o.Routes) != 2 {
			t.Fatalf("n%d: %d routes, want the other two", i+1, len(o.Routes))
		}
		for _, r := range o.Routes {
			if pw, _ := r.User.Password(); r.User == nil || r.User.Username() != o.Cluster.Username || pw != routePassword {
				t.Errorf("n%d: a route to %s does not log in as the route user", i+1, r.Host)
			}
			if r.Port() == fmt.Sprint(ports[i]) {
				t.Errorf("n%d: routes to itself", i+1)
			}
		}
		o.Port, o.HTTPPort, o.Cluster.Port = -1, 0, ports[i]
		o.StoreDir = t.TempDir()
		opts[i] = o
	}
	if t.Failed() {
		t.FailNow()
	}

	srvs := make([]*server.Server, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i, o := range opts {
		wg.Go(func() { srvs[i], errs[i] = queue.StartServer(o) })
	}
	wg.Wait()
	for i, s := range srvs {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	}
	waitFor(t, 30*time.Second, "a meta leader that sees three peers over the authenticated routes", func() (bool, error) {
		for _, s := range srvs {
			if s.JetStreamIsLeader() && len(s.JetStreamClusterPeers()) == 3 {
				return true, nil
			}
		}
		return false, nil
	})

	addr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	nodeCert, err := tls.LoadX509KeyPair(pki.nodeCert[1], pki.nodeKey[1])
	if err != nil {
		t.Fatal(err)
	}
	otherCert, err := tls.LoadX509KeyPair(pki.otherCert, pki.otherKey)
	if err != nil {
		t.Fatal(err)
	}
	withCert := func(c *tls.Certificate) *tls.Config {
		tc := &tls.Config{RootCAs: pki.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
		if c != nil {
			// Sent whatever CAs the server says it accepts, so that the
			// server's own check is what refuses it.
			tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return c, nil }
		}
		return tc
	}
	// The probe that is let in shows the others fail for the reason named,
	// not because the probe is wrong.
	if got := routeProbe(t, addr, withCert(&nodeCert), routePassword); got != "admitted" {
		t.Fatalf("a route with the password and a node certificate: %s, want admitted", got)
	}
	for _, tc := range []struct {
		name string
		tls  *tls.Config
		pw   string
	}{
		{"a wrong password", withCert(&nodeCert), "guess"},
		{"no password", withCert(&nodeCert), ""},
		{"no TLS", nil, routePassword},
		{"no client certificate", withCert(nil), routePassword},
		{"a certificate of another CA", withCert(&otherCert), routePassword},
	} {
		if got := routeProbe(t, addr, tc.tls, tc.pw); got == "admitted" {
			t.Errorf("a route with %s was admitted", tc.name)
		} else {
			t.Logf("a route with %s: %s", tc.name, got)
		}
	}
}

// routeProbe opens a route connection to addr as a new node would (TLS
// first when tc is set, then CONNECT with the route user and pw, then
// PING) and says what became of it: "admitted" when the server answered
// PONG, else why not.
func routeProbe(t *testing.T, addr string, tc *tls.Config, pw string) string {
	t.Helper()
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(5 * time.Second))
	conn := raw
	if tc != nil {
		tconn := tls.Client(raw, tc)
		if err := tconn.Handshake(); err != nil {
			return "handshake: " + err.Error()
		}
		conn = tconn
	}
	connect, _ := json.Marshal(map[string]any{
		"user": "revoker-route", "pass": pw, "tls_required": tc != nil,
		"name": "probe-" + fmt.Sprint(time.Now().UnixNano()), "cluster": "revoker", "headers": true,
	})
	if _, err := fmt.Fprintf(conn, "CONNECT %s\r\nPING\r\n", connect); err != nil {
		return "write: " + err.Error()
	}
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadString('\n')
		switch {
		case err != nil:
			return "closed: " + err.Error()
		case strings.HasPrefix(line, "PONG"):
			return "admitted"
		case strings.HasPrefix(line, "-ERR"):
			return strings.TrimSpace(line)
		}
	}
}

// routePKI is a CA for routes, a certificate it signed for each node
// (127.0.0.1, server and client use) and one of another CA, written where
// the nats-cluster files look for them.
type routePKI struct {
	pool                *x509.CertPool
	nodeCert, nodeKey   map[int]string
	otherCert, otherKey string
}

func newRoutePKI(t *testing.T, dir string) routePKI {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	now := time.Now()
	newCA := func(name string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c, key, der
	}
	leaf := func(ca *x509.Certificate, caKey *ecdsa.PrivateKey, serial int64) (cert, key []byte) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: fmt.Sprintf("route-%d", serial)},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			KeyUsage:    x509.KeyUsageDigitalSignature,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return der, kb
	}
	ca, caKey, caDER := newCA("revoker routes CA")
	write("route-ca.pem", "CERTIFICATE", caDER)
	p := routePKI{pool: x509.NewCertPool(), nodeCert: map[int]string{}, nodeKey: map[int]string{}}
	p.pool.AddCert(ca)
	for n := 1; n <= 3; n++ {
		c, k := leaf(ca, caKey, int64(n+1))
		p.nodeCert[n] = write(fmt.Sprintf("n%d-route.pem", n), "CERTIFICATE", c)
		p.nodeKey[n] = write(fmt.Sprintf("n%d-route-key.pem", n), "EC PRIVATE KEY", k)
	}
	other, otherKey, _ := newCA("another CA")
	c, k := leaf(other, otherKey, 9)
	p.otherCert = write("other-route.pem", "CERTIFICATE", c)
	p.otherKey = write("other-route-key.pem", "EC PRIVATE KEY", k)
	return p
}

// freePorts returns n distinct loopback ports nothing listens on now.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	seen := map[int]bool{}
	var out []int
	for len(out) < n {
		_, p, err := net.SplitHostPort(freeAddr(t))
		if err != nil {
			t.Fatal(err)
		}
		var port int
		fmt.Sscan(p, &port)
		if !seen[port] {
			seen[port] = true
			out = append(out, port)
		}
	}
	return out
}
