package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// natsSecrets is a JetStream server that wants a NATS credential, the
// environment that gives it to revoker, a connection for the test, and the
// secrets that must never show.
type natsSecrets struct {
	env     map[string]string
	connect func(t *testing.T) *nats.Conn
	secrets []string
}

// tokenServer wants a token, given in the NATS URL.
func tokenServer(t *testing.T) natsSecrets {
	const token = "NATSurlTOKEN0123456789abcdef"
	srv, err := queue.StartServer(&server.Options{Host: "127.0.0.1", Port: -1, StoreDir: t.TempDir(), Authorization: token})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	url := fmt.Sprintf("nats://%s@%s", token, srv.Addr())
	return natsSecrets{
		env: map[string]string{"REVOKER_NATS_URL": url},
		connect: func(t *testing.T) *nats.Conn {
			nc, err := nats.Connect(url)
			if err != nil {
				t.Fatal(err)
			}
			return nc
		},
		secrets: []string{token},
	}
}

// userCreds writes a .creds file of a new user that signer (an account)
// signed, and returns its path and the user's seed.
func userCreds(t *testing.T, signer nkeys.KeyPair) (path string, seed []byte) {
	t.Helper()
	ukp, _ := nkeys.CreateUser()
	upub, _ := ukp.PublicKey()
	ujwt, err := jwt.NewUserClaims(upub).Encode(signer)
	if err != nil {
		t.Fatal(err)
	}
	seed, _ = ukp.Seed()
	creds, err := jwt.FormatUserConfig(ujwt, seed)
	if err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(t.TempDir(), "revoker.creds")
	if err := os.WriteFile(path, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, seed
}

// credsServer trusts one operator; revoker connects with a .creds file of a
// user of its JetStream-enabled account.
func credsServer(t *testing.T) natsSecrets {
	okp, _ := nkeys.CreateOperator()
	opub, _ := okp.PublicKey()
	oc := jwt.NewOperatorClaims(opub)
	if _, err := oc.Encode(okp); err != nil {
		t.Fatal(err)
	}
	res := &server.MemAccResolver{}
	account := func(js bool) (nkeys.KeyPair, string) {
		kp, _ := nkeys.CreateAccount()
		pub, _ := kp.PublicKey()
		ac := jwt.NewAccountClaims(pub)
		if js {
			ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
		}
		s, err := ac.Encode(okp)
		if err != nil {
			t.Fatal(err)
		}
		if err := res.Store(pub, s); err != nil {
			t.Fatal(err)
		}
		return kp, pub
	}
	_, sysPub := account(false)
	akp, _ := account(true)
	path, seed := userCreds(t, akp)
	srv, err := queue.StartServer(&server.Options{
		Host: "127.0.0.1", Port: -1, StoreDir: t.TempDir(),
		TrustedOperators: []*jwt.OperatorClaims{oc}, AccountResolver: res, SystemAccount: sysPub,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	return natsSecrets{
		env: map[string]string{"REVOKER_NATS_URL": srv.ClientURL(), "REVOKER_NATS_CREDS": path},
		connect: func(t *testing.T) *nats.Conn {
			nc, err := nats.Connect(srv.ClientURL(), nats.UserCredentials(path))
			if err != nil {
				t.Fatal(err)
			}
			return nc
		},
		// The seed, and its part after the prefix, in case of a cut copy.
		secrets: []string{string(seed), string(seed[10:])},
	}
}

// The NATS credential (a token in the URL, the seed of a .creds file) never
// shows in the worker's logs, its /metrics, or the records it writes.
func TestServeKeepsNATSSecrets(t *testing.T) {
	for name, start := range map[string]func(*testing.T) natsSecrets{"url token": tokenServer, "creds seed": credsServer} {
		t.Run(name, func(t *testing.T) {
			ns := start(t)
			api := cloudflaretest.NewServer(cloudflaretest.WithToken(hToken))
			t.Cleanup(api.Close)
			env := map[string]string{"CLOUDFLARE_BASE_URL": api.URL, "CLOUDFLARE_API_TOKEN": hToken}
			for k, v := range hFastEnv {
				env[k] = v
			}
			for k, v := range ns.env {
				env[k] = v
			}
			cfg := hConfig(t, env)

			core, logs := observer.New(zapcore.DebugLevel)
			ctx, cancel := context.WithCancel(context.Background())
			addr := make(chan string, 1)
			done := make(chan error, 1)
			go func() {
				done <- serve(ctx, cfg, serveOptions{log: zap.New(core), ready: func(a string) { addr <- a }})
			}()
			stopped := false
			stop := func() {
				if stopped {
					return
				}
				stopped = true
				cancel()
				select {
				case err := <-done:
					if err != nil {
						t.Errorf("serve: %v", err)
					}
				case <-time.After(15 * time.Second):
					t.Error("serve did not stop within 15s")
				}
			}
			defer stop()
			var a string
			select {
			case a = <-addr:
			case <-time.After(10 * time.Second):
				t.Fatal("serve did not listen")
			}
			queuetest.Eventually(t, 15*time.Second, "ready", func() bool {
				resp, err := http.Get("http://" + a + "/readyz")
				if err != nil {
					return false
				}
				resp.Body.Close()
				return resp.StatusCode == http.StatusOK
			})

			nc := ns.connect(t)
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				t.Fatal(err)
			}
			api.Script("keyB", 400) // dead-lettered: a record in each stream
			for _, key := range []string{"keyA", "keyB"} {
				if _, err := js.Publish(ctx, "revoke.urgent", []byte(`{"account_id":"acc1","key_id":"`+key+`"}`)); err != nil {
					t.Fatal(err)
				}
			}
			var records []string
			queuetest.Eventually(t, 30*time.Second, "two outcome records and a dead letter", func() bool {
				records = records[:0]
				for stream, want := range map[string]int{cfg.OutcomeStream: 2, cfg.DLQStream: 1} {
					got, err := streamText(ctx, js, stream)
					if err != nil || len(got) < want {
						return false
					}
					records = append(records, got...)
				}
				return true
			})

			metricsText := get(t, "http://"+a+"/metrics")
			if !strings.Contains(metricsText, "revoker_nats_connected 1") {
				t.Fatalf("/metrics does not show the connection: the check below would prove little")
			}
			stop()

			var logText strings.Builder
			for _, e := range logs.All() {
				fmt.Fprintf(&logText, "%s %v\n", e.Message, e.ContextMap())
			}
			if logs.Len() == 0 {
				t.Fatal("nothing logged")
			}
			for _, s := range ns.secrets {
				for where, text := range map[string]string{
					"logs": logText.String(), "/metrics": metricsText, "records": strings.Join(records, "\n"),
				} {
					if strings.Contains(text, s) {
						t.Errorf("the NATS secret shows in %s", where)
					}
				}
			}
		})
	}
}

// streamText returns every message of stream, headers and body, as text.
func streamText(ctx context.Context, js jetstream.JetStream, stream string) ([]string, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for seq := info.State.FirstSeq; seq > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, fmt.Sprintf("%s %v %s", m.Subject, m.Header, m.Data))
	}
	return out, nil
}
