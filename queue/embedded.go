package queue

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/revoker/revoker/config"
)

// Variables an embedded server's settings come from; a *config.Error from
// Embedded names one of them.
const (
	embeddedURL     = "REVOKER_NATS_URL"
	embeddedCreds   = "REVOKER_NATS_CREDS"
	embeddedTLSCA   = "REVOKER_NATS_TLS_CA"
	embeddedTLSCert = "REVOKER_NATS_TLS_CERT"
	embeddedTLSKey  = "REVOKER_NATS_TLS_KEY"
)

// Embedded starts a JetStream server inside the process, storing in dir,
// for the clients conn describes: it listens on the address of conn's URL
// (the first of a list), requires the URL's user and password (or its
// token, or the identity of conn's .creds file) and, when conn names a certificate, TLS with that certificate and
// key, verifying client certificates against conn's CA when one is named.
// On an address that is not loopback it refuses to start without both a
// password (or token) and TLS. A setting it cannot honour is a
// *config.Error naming the variable; nothing in any error holds a secret.
// The caller shuts the server down.
func Embedded(dir string, conn config.Connection) (*server.Server, error) {
	opts, err := EmbeddedOptions(dir, conn)
	if err != nil {
		return nil, err
	}
	return StartServer(opts)
}

// EmbeddedOptions are the options of the server Embedded starts.
func EmbeddedOptions(dir string, conn config.Connection) (*server.Options, error) {
	bad := func(name, problem string) error {
		return &config.Error{Name: name, Problem: problem + " (--embedded-nats)"}
	}
	first, _, _ := strings.Cut(conn.URL, ",")
	u, err := url.Parse(strings.TrimSpace(first))
	if err != nil || u.Hostname() == "" {
		return nil, bad(embeddedURL, "the first URL has no host to listen on")
	}
	switch u.Scheme {
	case "nats", "tls":
	default:
		return nil, bad(embeddedURL, "the embedded server takes nats:// or tls:// clients, not "+u.Scheme+"://")
	}
	host, portStr := u.Hostname(), u.Port()
	if portStr == "" {
		portStr = "4222"
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, bad(embeddedURL, "the first URL's port is not a number")
	}
	opts := &server.Options{Host: host, Port: port, StoreDir: dir}

	auth := "none"
	if conn.Creds != "" {
		if u.User != nil {
			return nil, bad(embeddedCreds, "set, and "+embeddedURL+" names a user too: give the embedded server one identity to require")
		}
		ca, err := embeddedCredsAuth(conn.Creds)
		if err != nil {
			return nil, err
		}
		// The nonce the client signs comes with the server's INFO only
		// when the server is told to send one.
		opts.CustomClientAuthentication, opts.AlwaysEnableNonce = ca, true
		auth = "creds"
	}
	if u.User != nil {
		user := u.User.Username()
		pw, hasPW := u.User.Password()
		switch {
		case hasPW && (user == "" || pw == ""):
			return nil, bad(embeddedURL, "the embedded server needs both a user and a password (or a token alone: nats://token@host)")
		case hasPW:
			opts.Username, opts.Password = user, pw
			auth = "password"
		case user == "":
			return nil, bad(embeddedURL, "an empty token")
		default:
			// The client sends a user without a password as a token.
			opts.Authorization = user
			pw = user
			auth = "token"
		}
		// The server takes a password of this form for a bcrypt hash, and
		// would then refuse the very password the worker sends.
		if bcryptLike.MatchString(pw) {
			return nil, bad(embeddedURL, "a password or token beginning with $2a$NN$ (or $2b$, $2x$, $2y$) is taken for a bcrypt hash by the server; choose another")
		}
	}

	if conn.TLSCert == "" {
		switch {
		case conn.TLSCA != "":
			return nil, bad(embeddedTLSCert, "not set, but "+embeddedTLSCA+" is: the embedded server needs a certificate and key (the CA then verifies its clients)")
		case u.Scheme == "tls":
			return nil, bad(embeddedTLSCert, "not set, but "+embeddedURL+" is a tls:// URL: the embedded server needs a certificate and key")
		}
	} else {
		tc, err := embeddedTLS(conn)
		if err != nil {
			return nil, err
		}
		opts.TLSConfig = tc
		opts.TLSVerify = conn.TLSCA != ""
	}

	if !loopback(host) {
		// Anyone who reaches the address could publish revocations and
		// rewrite the audit trail; a password sent in clear is as bad.
		switch {
		case auth == "none":
			return nil, bad(embeddedURL, fmt.Sprintf("%q is not a loopback address: the embedded server needs a user and password there (nats://user:password@host:port), or %s", host, embeddedCreds))
		case opts.TLSConfig == nil:
			return nil, bad(embeddedTLSCert, fmt.Sprintf("not set, but %q is not a loopback address: the embedded server needs TLS there (%s and %s)", host, embeddedTLSCert, embeddedTLSKey))
		}
	}
	return opts, nil
}

// bcryptLike is what the server takes for a bcrypt hash rather than a
// password (nats-server's isBcrypt).
var bcryptLike = regexp.MustCompile(`^\$2[abxy]\$\d{2}\$`)

// embeddedTLS is the server side of conn's TLS settings: the certificate
// and key are the server's, the CA (if any) verifies client certificates.
// The files are read here rather than by the server's own loader, whose
// errors carry the key file's path.
func embeddedTLS(conn config.Connection) (*tls.Config, error) {
	certPEM, err := os.ReadFile(conn.TLSCert)
	if err != nil {
		return nil, &config.Error{Name: embeddedTLSCert, Problem: "cannot be read (--embedded-nats)"}
	}
	keyPEM, err := os.ReadFile(conn.TLSKey)
	if err != nil {
		return nil, &config.Error{Name: embeddedTLSKey, Problem: "the file it names cannot be read (--embedded-nats)"}
	}
	// The standard library's messages about a pair name no path and no
	// part of the key.
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, &config.Error{Name: embeddedTLSCert, Problem: "cannot serve with " + embeddedTLSKey + " (--embedded-nats): " + err.Error()}
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if conn.TLSCA != "" {
		caPEM, err := os.ReadFile(conn.TLSCA)
		if err != nil {
			return nil, &config.Error{Name: embeddedTLSCA, Problem: "cannot be read (--embedded-nats)"}
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, &config.Error{Name: embeddedTLSCA, Problem: "holds no PEM certificate (--embedded-nats)"}
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tc, nil
}

// loopback reports whether host is reachable from this machine only. A
// name other than localhost counts as not loopback: what it resolves to
// may change.
func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// RunEmbedded starts a JetStream server with no authentication, for the
// demo: it listens on the loopback address of natsURL (the first one of a
// list); port -1 picks a free port. A URL with a user, password or token,
// or an address that is not loopback, is refused rather than served
// without them. The caller shuts it down.
func RunEmbedded(dir, natsURL string) (*server.Server, error) {
	first, _, _ := strings.Cut(natsURL, ",")
	if u, err := url.Parse(strings.TrimSpace(first)); err == nil && u.User != nil {
		return nil, errors.New("embedded nats: this JetStream takes no user, password or token; use revoker serve --embedded-nats")
	}
	return Embedded(dir, config.Connection{URL: natsURL})
}

// startWait bounds the wait for a server to take connections: a node
// started again recovers its store, and a clustered one meets its peers,
// before it listens; a loaded machine has taken over 10s.
const startWait = 2 * time.Minute

// StartServer starts a JetStream server with opts (JetStream is turned on)
// and waits until it takes connections; a server that cannot start (its
// port taken, its store unusable) is reported at once, with the cause.
func StartServer(opts *server.Options) (*server.Server, error) {
	opts.JetStream = true
	opts.NoSigs = true
	opts.NoLog = true
	if opts.ServerName == "" {
		opts.ServerName = "revoker-embedded"
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	// The server tells why it cannot start only to its logger, and then
	// waits as if it might yet.
	failed := startLog{fatal: make(chan string, 1)}
	s.SetLogger(failed, false, false)
	go s.Start()
	for deadline := time.Now().Add(startWait); ; {
		if s.ReadyForConnections(50 * time.Millisecond) {
			return s, nil
		}
		select {
		case why := <-failed.fatal:
			s.Shutdown()
			return nil, fmt.Errorf("embedded nats: %s", why)
		default:
		}
		if time.Now().After(deadline) {
			s.Shutdown()
			return nil, fmt.Errorf("embedded nats: not ready after %v", startWait)
		}
	}
}

// startLog is the logger of a server StartServer starts: it keeps the
// first fatal error and drops everything else, as NoLog would.
type startLog struct{ fatal chan string }

func (l startLog) Fatalf(format string, v ...any) {
	select {
	case l.fatal <- fmt.Sprintf(format, v...):
	default:
	}
}
func (startLog) Noticef(string, ...any) {}
func (startLog) Warnf(string, ...any)   {}
func (startLog) Errorf(string, ...any)  {}
func (startLog) Debugf(string, ...any)  {}
func (startLog) Tracef(string, ...any)  {}
