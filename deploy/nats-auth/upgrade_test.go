package natsauth_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/queue"
)

// Upgrading from a file that kept every user in one account (the global
// account, $G): on a single server, stopped, the global account's
// JetStream directory renamed to REVOKER's brings the streams, buckets and
// consumers along (README.md, "Upgrading"). Events waiting, the trail and
// the dead letters are all there for the worker under the shipped file.
func TestUpgradeFromOneAccount(t *testing.T) {
	store := t.TempDir()
	ctx := t.Context()

	// Before: one account, as the earlier file had it.
	old, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: store, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go old.Start()
	if !old.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	nc, err := nats.Connect(old.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := queue.Ensure(ctx, js, config.Default().Topology(), zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	for _, subject := range []string{"revoke.scheduled", "revoke.outcome.a1.k1", "revoke.dlq"} {
		if _, err := js.Publish(ctx, subject, []byte(`{"account_id":"a1","key_id":"k1"}`)); err != nil {
			t.Fatal(err)
		}
	}
	nc.Close()
	old.Shutdown()
	old.WaitForShutdown()

	// The move: the global account's directory becomes REVOKER's.
	if err := os.Rename(filepath.Join(store, "jetstream", "$G"), filepath.Join(store, "jetstream", "REVOKER")); err != nil {
		t.Fatal(err)
	}

	srv, _ := startServerIn(t, store)
	w := connectAs(t, srv, "worker")
	for _, stream := range []string{"REVOCATIONS", "REVOCATION_OUTCOMES", "REVOCATIONS_DLQ"} {
		s, err := w.js.Stream(ctx, stream)
		if err != nil {
			t.Fatalf("%s after the move: %v", stream, err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs != 1 {
			t.Errorf("%s holds %d messages after the move, want 1", stream, info.State.Msgs)
		}
	}
	cons, err := w.js.Consumer(ctx, "REVOCATIONS", config.Default().Durable("revoke.scheduled"))
	if err != nil {
		t.Fatalf("the scheduled consumer after the move: %v", err)
	}
	if _, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second)); err != nil {
		t.Fatalf("the waiting event is not delivered after the move: %v", err)
	}
}
