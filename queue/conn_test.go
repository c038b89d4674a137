package queue_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// startServer runs a plain NATS server (no JetStream) with opts on a free
// loopback port.
func startServer(t *testing.T, opts *server.Options) *server.Server {
	t.Helper()
	opts.Host, opts.Port, opts.NoSigs, opts.NoLog = "127.0.0.1", -1, true, true
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	return srv
}

// connections is how many client connections srv has accepted, failed ones
// included: each is one connect attempt.
func connections(srv *server.Server) uint64 {
	v, err := srv.Varz(nil)
	if err != nil {
		return 0
	}
	return v.TotalConnections
}

// causes returns the logged reasons for not connecting that contain substr.
func causes(logs *observer.ObservedLogs, substr string) []string {
	var out []string
	for _, e := range logs.All() {
		if c, ok := e.ContextMap()["cause"].(string); ok && e.Message != "nats disconnected, reconnecting" &&
			strings.Contains(strings.ToLower(c), substr) {
			out = append(out, c)
		}
	}
	return out
}

// operator is a JWT-mode trust chain: one operator, one account known to
// the server, and users of that account written as .creds files.
type operator struct {
	opClaims *jwt.OperatorClaims
	opKey    nkeys.KeyPair
	accKey   nkeys.KeyPair
	accJWT   string
}

func newOperator(t *testing.T) *operator {
	t.Helper()
	okp, _ := nkeys.CreateOperator()
	opub, _ := okp.PublicKey()
	oc := jwt.NewOperatorClaims(opub)
	if _, err := oc.Encode(okp); err != nil {
		t.Fatal(err)
	}
	akp, _ := nkeys.CreateAccount()
	apub, _ := akp.PublicKey()
	ajwt, err := jwt.NewAccountClaims(apub).Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	return &operator{opClaims: oc, opKey: okp, accKey: akp, accJWT: ajwt}
}

func (o *operator) server(t *testing.T) *server.Server {
	t.Helper()
	apub, _ := o.accKey.PublicKey()
	res := &server.MemAccResolver{}
	if err := res.Store(apub, o.accJWT); err != nil {
		t.Fatal(err)
	}
	return startServer(t, &server.Options{TrustedOperators: []*jwt.OperatorClaims{o.opClaims}, AccountResolver: res})
}

// creds returns a .creds file's content for a new user signed by signer.
func creds(t *testing.T, signer nkeys.KeyPair) (content []byte, seed string) {
	t.Helper()
	return shapedCreds(t, signer, nil)
}

// shapedCreds is creds with the user's claims shaped by shape (nil: as
// made).
func shapedCreds(t *testing.T, signer nkeys.KeyPair, shape func(*jwt.UserClaims)) (content []byte, seed string) {
	t.Helper()
	ukp, _ := nkeys.CreateUser()
	upub, _ := ukp.PublicKey()
	uc := jwt.NewUserClaims(upub)
	if shape != nil {
		shape(uc)
	}
	ujwt, err := uc.Encode(signer)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := ukp.Seed()
	b, err := jwt.FormatUserConfig(ujwt, s)
	if err != nil {
		t.Fatal(err)
	}
	return b, string(s)
}

// Refused credentials are retried for ever, and the .creds file is read
// again each time: fixing it is enough, however many refusals came before.
// The refusal is logged, once.
func TestConnectSurvivesRefusedCredsUntilFixed(t *testing.T) {
	op := newOperator(t)
	srv := op.server(t)
	stranger, _ := nkeys.CreateAccount() // an account the server does not know
	bad, _ := creds(t, stranger)
	good, _ := creds(t, op.accKey)
	path := filepath.Join(t.TempDir(), "revoker.creds")
	if err := os.WriteFile(path, bad, 0o600); err != nil {
		t.Fatal(err)
	}

	core, logs := observer.New(zapcore.DebugLevel)
	cfg := config.Default()
	cfg.NATSURL, cfg.NATSCreds = srv.ClientURL(), path
	var up atomic.Bool
	c, err := queue.Connect(cfg.Connection(), zap.New(core), func(connected bool) { up.Store(connected) })
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// The client's default gives up after the second identical refusal.
	queuetest.Eventually(t, 30*time.Second, "four refused connects", func() bool { return connections(srv) >= 4 })
	select {
	case <-c.Lost():
		t.Fatal("the connection was closed for good after refused credentials")
	default:
	}
	if c.IsClosed() {
		t.Fatal("the client stopped reconnecting after refused credentials")
	}
	if got := causes(logs, "authorization violation"); len(got) != 1 {
		t.Fatalf("refusal logged %d times (%q), want once", len(got), got)
	}

	if err := os.WriteFile(path, good, 0o600); err != nil {
		t.Fatal(err)
	}
	queuetest.Eventually(t, 30*time.Second, "connected with the fixed .creds file", func() bool { return c.IsConnected() && up.Load() })
}

// A client that wants TLS from a server that has none says so in its log
// (once), rather than only "not reachable".
func TestConnectLogsTLSCause(t *testing.T) {
	srv := startServer(t, &server.Options{})
	core, logs := observer.New(zapcore.DebugLevel)
	cfg := config.Default()
	cfg.NATSURL = srv.ClientURL()
	cfg.NATSTLSCA = newCA(t, "revoker test CA").file(t)
	c, err := queue.Connect(cfg.Connection(), zap.New(core), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	queuetest.Eventually(t, 30*time.Second, "four connect attempts", func() bool { return connections(srv) >= 4 })
	queuetest.Eventually(t, 10*time.Second, "the TLS cause logged", func() bool { return len(causes(logs, "secure connection")) > 0 })
	if got := causes(logs, "secure connection"); len(got) != 1 {
		t.Fatalf("TLS cause logged %d times (%q), want once", len(got), got)
	}
	if c.IsClosed() {
		t.Fatal("the client stopped reconnecting")
	}
}

// A server whose certificate the configured CA did not sign: the cause
// names the certificate problem, once.
func TestConnectLogsWrongCA(t *testing.T) {
	srv := startServer(t, &server.Options{TLSConfig: newCA(t, "the server's CA").serverTLS(t)})
	core, logs := observer.New(zapcore.DebugLevel)
	cfg := config.Default()
	cfg.NATSURL = "tls://" + srv.Addr().String()
	cfg.NATSTLSCA = newCA(t, "another CA").file(t)
	c, err := queue.Connect(cfg.Connection(), zap.New(core), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	queuetest.Eventually(t, 30*time.Second, "four connect attempts", func() bool { return connections(srv) >= 4 })
	queuetest.Eventually(t, 10*time.Second, "the certificate cause logged", func() bool { return len(causes(logs, "certificate")) > 0 })
	if got := causes(logs, "certificate"); len(got) != 1 {
		t.Fatalf("certificate cause logged %d times (%q), want once", len(got), got)
	}
}

// A wrong password is logged as such, once.
func TestConnectLogsBadPassword(t *testing.T) {
	const pw = "RightPassw0rd0123456789"
	srv := startServer(t, &server.Options{Username: "revoker", Password: pw})
	core, logs := observer.New(zapcore.DebugLevel)
	cfg := config.Default()
	wrong := "WrongPassw0rd0123456789"
	cfg.NATSURL = fmt.Sprintf("nats://revoker:%s@%s", wrong, srv.Addr())
	c, err := queue.Connect(cfg.Connection(), zap.New(core), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	queuetest.Eventually(t, 30*time.Second, "four connect attempts", func() bool { return connections(srv) >= 4 })
	queuetest.Eventually(t, 10*time.Second, "the refusal logged", func() bool { return len(causes(logs, "authorization violation")) > 0 })
	if got := causes(logs, "authorization violation"); len(got) != 1 {
		t.Fatalf("refusal logged %d times (%q), want once", len(got), got)
	}
	assertNotLogged(t, logs, wrong)
}

// A token in the NATS URL never reaches a log line: not on connect, not on
// reconnect, not in an error.
func TestConnectNeverLogsURLToken(t *testing.T) {
	const token = "NATStok3nSECRET0123456789"
	srv := startServer(t, &server.Options{Authorization: token})
	core, logs := observer.New(zapcore.DebugLevel)

	cfg := config.Default()
	cfg.NATSURL = fmt.Sprintf("nats://%s@%s", token, srv.Addr())
	c, err := queue.Connect(cfg.Connection(), zap.New(core), nil)
	if err != nil {
		t.Fatal(err)
	}
	queuetest.Eventually(t, 10*time.Second, "connected", c.IsConnected)
	if err := c.ForceReconnect(); err != nil {
		t.Fatal(err)
	}
	queuetest.Eventually(t, 30*time.Second, "reconnected", func() bool { return len(logs.FilterMessage("nats reconnected").All()) > 0 })
	c.Close()
	if len(logs.FilterMessage("nats connected").All()) == 0 {
		t.Fatal("nothing logged on connect: the check below would prove nothing")
	}
	assertNotLogged(t, logs, token)

	// A wrong token, refused: its error text must not carry it either.
	const wrong = "NATSwr0ngTOKEN0123456789"
	cfg.NATSURL = fmt.Sprintf("nats://%s@%s", wrong, srv.Addr())
	c2, err := queue.Connect(cfg.Connection(), zap.New(core), nil)
	if err != nil {
		t.Fatal(err)
	}
	queuetest.Eventually(t, 30*time.Second, "the refusal logged", func() bool { return len(causes(logs, "authorization violation")) > 0 })
	c2.Close()
	assertNotLogged(t, logs, wrong)
}

// assertNotLogged fails if secret is in any message or field of logs.
func assertNotLogged(t *testing.T, logs *observer.ObservedLogs, secret string) {
	t.Helper()
	for _, e := range logs.All() {
		line := e.Message + " " + fmt.Sprint(e.ContextMap())
		if strings.Contains(line, secret) {
			t.Errorf("a secret was logged: %s", line)
		}
	}
}

// A connection closed without Close reports itself lost, so its owner can
// open a new one; Close does not.
func TestConnLostOnlyWhenClosedForGood(t *testing.T) {
	srv := startServer(t, &server.Options{})
	cfg := config.Default()
	cfg.NATSURL = srv.ClientURL()

	c, err := queue.Connect(cfg.Connection(), zap.NewNop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case <-c.Lost():
		t.Fatal("Close reported the connection lost")
	default:
	}

	c, err = queue.Connect(cfg.Connection(), zap.NewNop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Conn.Close() // as the client does when it gives up
	select {
	case <-c.Lost():
	case <-time.After(10 * time.Second):
		t.Fatal("a connection closed for good was not reported lost")
	}
}

// TestConnLogsEachTroubleOnce: trouble the client reports again and again
// (a consumer's missed heartbeats while the server is away come every few
// seconds) is logged once per distinct cause (SPEC §10).
func TestConnLogsEachTroubleOnce(t *testing.T) {
	srv := startServer(t, &server.Options{})
	cfg := config.Default()
	cfg.NATSURL = srv.ClientURL()
	core, logs := observer.New(zap.WarnLevel)
	c, err := queue.Connect(cfg.Connection(), zap.New(core), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	report := c.Conn.Opts.AsyncErrorCB
	for range 5 {
		report(c.Conn, nil, nats.ErrConsumerNotActive)
	}
	report(c.Conn, nil, nats.ErrSlowConsumer)
	report(c.Conn, nil, nats.ErrBadSubscription)
	if n := logs.FilterField(zap.String("error", nats.ErrConsumerNotActive.Error())).Len(); n != 1 {
		t.Fatalf("%q logged %d times, want once", nats.ErrConsumerNotActive, n)
	}
	if n := logs.FilterMessage("nats error").Len(); n != 3 {
		t.Fatalf("%d nats error lines, want one per distinct cause (3)", n)
	}
}
