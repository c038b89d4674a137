package natsauth_test

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/service"
)

const serviceClientPW = "svc-Passw0rd-41d8"

// The shipped file reads every user's password from the environment, the
// service-client's included: set for every test of the package, as
// startServer sets the others'.
func TestMain(m *testing.M) {
	os.Setenv("REVOKER_SERVICE_CLIENT_PASSWORD", serviceClientPW)
	os.Exit(m.Run())
}

// As the shipped service-client, a program revokes through the NATS
// service run by the shipped worker, asks for status and finds the
// service; it cannot put events on the work subjects itself, nor read
// the audit trail or others' replies.
func TestServiceClientRevokesThroughService(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the revoker binary")
	}
	srv, slog := startServer(t)
	bin := buildRevoker(t)
	api := cloudflaretest.NewServer(cloudflaretest.WithToken(apiToken))
	t.Cleanup(api.Close)
	api.AddKey("acc1", "svcKey")
	ctx := t.Context()
	stop := serveAsWorker(ctx, t, bin, srv, api.URL)
	defer stop()

	var (
		mu   sync.Mutex
		errs []error
	)
	nc, err := nats.Connect(userURL(srv, "service-client", serviceClientPW), nats.CustomInboxPrefix("_INBOX_service"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			mu.Lock()
			defer mu.Unlock()
			errs = append(errs, err)
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	// The worker starts the service once it is connected.
	var reply *nats.Msg
	waitFor(t, 30*time.Second, "the service answers a revoke", func() bool {
		m := nats.NewMsg(service.RevokeSubject)
		m.Data = []byte(`{"account_id":"acc1","key_id":"svcKey"}`)
		m.Header.Set("Nats-Msg-Id", "svc-1")
		m.Header.Set(service.HeaderWait, "20s")
		reply, err = nc.RequestMsg(m, 25*time.Second)
		return err == nil && reply.Header.Get(micro.ErrorCodeHeader) != "503"
	})
	if code := reply.Header.Get(micro.ErrorCodeHeader); code != "" {
		t.Fatalf("revoke: error %s: %s", code, reply.Header.Get(micro.ErrorHeader))
	}
	var rec event.Record
	if err := json.Unmarshal(reply.Data, &rec); err != nil || rec.Outcome != event.Revoked || rec.KeyID != "svcKey" {
		t.Fatalf("revoke reply %s (%v), want the revoked record", reply.Data, err)
	}
	if !api.Deleted("acc1", "svcKey") {
		t.Fatal("the key was not deleted")
	}

	status, err := nc.Request(service.StatusSubject, []byte(`{"account_id":"acc1","key_id":"svcKey"}`), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(status.Data, &rec); err != nil || rec.Outcome != event.Revoked {
		t.Fatalf("status reply %s (%v), want the revoked record", status.Data, err)
	}
	// By its id alone, through the worker's event index (its bucket is
	// the worker's to write, under these permissions).
	status, err = nc.Request(service.StatusSubject, []byte(`{"event_id":"svc-1"}`), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(status.Data, &rec); err != nil || rec.Outcome != event.Revoked || rec.EventID != "svc-1" {
		t.Fatalf("status by id: reply %s (%s %v), want the revoked record", status.Data, status.Header.Get(micro.ErrorHeader), err)
	}

	// No discovery under the shipped permissions: the library would answer
	// wherever a request says, with the worker's permissions.
	if _, err := nc.Request("$SRV.PING."+service.Name, nil, 2*time.Second); err == nil {
		t.Fatal("the service answered discovery under the shipped permissions")
	}

	// Nothing but the service: no direct publish, no audit trail.
	if err := nc.Publish("revoke.urgent", []byte(`{"account_id":"acc1","key_id":"other"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.SubscribeSync("revoke.outcome.>"); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, subject := range []string{"revoke.urgent", "revoke.outcome.>"} {
		waitFor(t, 10*time.Second, "service-client refused on "+subject, func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, e := range errs {
				if errors.Is(e, nats.ErrPermissionViolation) && strings.Contains(e.Error(), `"`+subject+`"`) {
					return true
				}
			}
			return false
		})
	}
	// The worker served without a refusal of its own.
	if v := slog.violations("worker"); len(v) > 0 {
		t.Fatalf("the worker was refused: %v", v)
	}
}
