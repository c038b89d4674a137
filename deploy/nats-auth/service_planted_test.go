package natsauth_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/service"
)

// The publisher, which may put any Nats-Msg-Id on the work subjects,
// plants an event under the id a service-client's incident revocation will
// carry. The NATS service refused that revocation with 409 and stored
// nothing: one role dropped another's revocation with a guessable id. It
// is now stored under an id of its own (SPEC §12; the ingress, §11, does
// the same).
func TestPlantedIDDoesNotDropAServiceRevocation(t *testing.T) {
	srv, _ := startServer(t)
	ctx := t.Context()
	w := connectAs(t, srv, "worker")
	topo := createTopology(ctx, t, w)
	pub := connectAs(t, srv, "publisher")
	svc := connectAs(t, srv, "service-client")

	// The worker's NATS service, as `revoker serve` runs it.
	cfg := config.Default()
	client := queue.ClientOn(w.nc, w.js, topo)
	s, err := service.Start(ctx, w.nc, service.Config{Client: client, Subjects: cfg.Subjects, Version: "0.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop() })

	planted := nats.NewMsg("revoke.scheduled")
	planted.Data = []byte(`{"account_id":"acc1","key_id":"harmless"}`)
	planted.Header.Set(jetstream.MsgIDHeader, "INC-42")
	if _, err := pub.js.PublishMsg(ctx, planted); err != nil {
		t.Fatal(err)
	}

	req := nats.NewMsg(service.RevokeSubject)
	req.Data = []byte(`{"account_id":"acc1","key_id":"leaked"}`)
	req.Header.Set(jetstream.MsgIDHeader, "INC-42")
	req.Header.Set(service.HeaderUrgent, "true")
	var reply *nats.Msg
	waitFor(t, 20*time.Second, "the service answers", func() bool {
		reply, err = svc.nc.RequestMsg(req, 10*time.Second)
		return err == nil
	})
	if code := reply.Header.Get(micro.ErrorCodeHeader); code != "" {
		t.Fatalf("the service-client's revocation of acc1/leaked was refused: %s %s", code, reply.Header.Get(micro.ErrorHeader))
	}
	var q service.Queued
	if err := json.Unmarshal(reply.Data, &q); err != nil || !strings.HasPrefix(q.EventID, "INC-42:") || q.KeyID != "leaked" {
		t.Fatalf("answered %s (%v); want acc1/leaked queued under INC-42:<an id of its own>", reply.Data, err)
	}
	st, err := w.js.Stream(ctx, topo.Stream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(ctx, "revoke.urgent")
	if err != nil {
		t.Fatalf("no urgent event stored for acc1/leaked: the publisher's planted id dropped it (%v)", err)
	}
	if ev, err := event.Decode(m.Data); err != nil || ev.KeyID != "leaked" || m.Header.Get(jetstream.MsgIDHeader) != q.EventID {
		t.Fatalf("the urgent event stored is %s under %q; want acc1/leaked under %q", m.Data, m.Header.Get(jetstream.MsgIDHeader), q.EventID)
	}
}

// The same, for an event of the caller's own key and subject that the
// worker dead-letters (a field breaks its rule): the valid revocation
// after it, under the planted id, was refused with 409 and the key stayed
// alive.
func TestPlantedSameKeyEventDoesNotDropAServiceRevocation(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the revoker binary")
	}
	srv, _ := startServer(t)
	bin := buildRevoker(t)
	api := cloudflaretest.NewServer(cloudflaretest.WithToken(apiToken))
	t.Cleanup(api.Close)
	api.AddKey("acc1", "leaked")
	ctx := t.Context()
	stop := serveAsWorker(ctx, t, bin, srv, api.URL)
	defer stop()
	w := connectAs(t, srv, "worker") // only to look, as the worker reads
	pub := connectAs(t, srv, "publisher")
	svc := connectAs(t, srv, "service-client")

	planted := nats.NewMsg("revoke.urgent")
	planted.Data = []byte(`{"account_id":"acc1","key_id":"leaked","requested_at":"not a time"}`)
	planted.Header.Set(jetstream.MsgIDHeader, "INC-42")
	waitFor(t, 30*time.Second, "the worker made the work stream and the publisher planted INC-42", func() bool {
		_, err := pub.js.PublishMsg(ctx, planted)
		return err == nil
	})
	waitFor(t, 30*time.Second, "the planted event is done", func() bool {
		return storedOn(ctx, t, w, "REVOCATION_OUTCOMES", "revoke.outcome.acc1.leaked")
	})

	req := nats.NewMsg(service.RevokeSubject)
	req.Data = []byte(`{"account_id":"acc1","key_id":"leaked"}`)
	req.Header.Set(jetstream.MsgIDHeader, "INC-42")
	req.Header.Set(service.HeaderUrgent, "true")
	req.Header.Set(service.HeaderWait, "10s")
	reply, err := svc.nc.RequestMsg(req, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if code := reply.Header.Get(micro.ErrorCodeHeader); code != "" {
		t.Fatalf("the service-client's valid urgent revocation of acc1/leaked (its own key and subject) was refused, nothing stored, no call: %s %s",
			code, reply.Header.Get(micro.ErrorHeader))
	}
	waitFor(t, 15*time.Second, "acc1/leaked is deleted", func() bool { return api.Deleted("acc1", "leaked") })
}

// A publisher naming an outcome subject as the reply subject of a request
// it may make has the server's answer delivered there, where every
// `publish --wait` of the fleet listens: it is a notice at most, never a
// record believed (deploy/nats-auth/README.md).
func TestRepliesOnAnOutcomeSubjectAreNoRecords(t *testing.T) {
	srv, _ := startServer(t)
	ctx := t.Context()
	w := connectAs(t, srv, "worker")
	topo := createTopology(ctx, t, w)
	attacker := connectAs(t, srv, "publisher")
	victim := connectAs(t, srv, "publisher") // another publisher process: publish --wait
	heard, err := victim.nc.SubscribeSync("revoke.outcome.>")
	if err != nil {
		t.Fatal(err)
	}
	client := queue.ClientOn(victim.nc, victim.js, topo)
	waiter, err := queue.NewWaiter(client)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(waiter.Close)
	ev := event.Event{AccountID: "acc1", KeyID: "leaked"}
	p, err := client.Publish(ctx, "revoke.scheduled", "wait-1", ev, []byte(`{"account_id":"acc1","key_id":"leaked"}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := victim.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	type waited struct {
		rec event.Record
		ok  bool
	}
	done := make(chan waited, 1)
	wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	go func() {
		rec, ok, _ := waiter.Wait(wctx, p)
		done <- waited{rec, ok}
	}()
	// No worker runs: the only thing on the key's subject is the answer.
	if attacker.try(t, "revoke.outcome.acc1.leaked", `{"outcome":"revoked"}`) {
		t.Fatal("the publisher may publish on an outcome subject")
	}
	if err := attacker.nc.PublishRequest("$JS.API.STREAM.MSG.GET.REVOCATION_OUTCOMES", "revoke.outcome.acc1.leaked", []byte(`{"seq":1}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := heard.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("the server's answer did not reach the outcome subject (%v): this test no longer shows the path the README names", err)
	}
	if got := <-done; got.ok {
		t.Fatalf("publish --wait believed %+v from an answer on the outcome subject", got.rec)
	}
}
