package natsauth_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/ingress"
)

// ingressBucket is the key-value bucket in which the HTTP ingress keeps its
// idempotency keys (SPEC §11): caller, body hash and stored event of each.
const ingressBucket = ingress.Bucket

// The worker makes and uses the ingress's bucket the way the ingress does
// (its configuration; claim a key with Create, read it, move it on with
// Update, drop a claim whose event was not stored) without a refusal; no other role may read or write it, nor may
// the worker purge or delete it. An entry there decides which event an
// Idempotency-Key answers with, so only the process that stores the events
// may write one.
func TestIngressBucketIsTheWorkers(t *testing.T) {
	srv, slog := startServer(t)
	ctx := t.Context()
	var workerRefusals refusals
	wjs := jsAs(t, srv, "worker", workerPW, &workerRefusals)

	kv, err := wjs.CreateKeyValue(ctx, ingress.BucketConfig(1))
	if err != nil {
		t.Fatalf("the worker makes %s: %v", ingressBucket, err)
	}
	// Made again by the next replica: the same bucket, found by name.
	if _, err := wjs.CreateKeyValue(ctx, ingress.BucketConfig(1)); err != nil {
		t.Fatalf("the worker makes %s a second time: %v", ingressBucket, err)
	}
	if kv, err = wjs.KeyValue(ctx, ingressBucket); err != nil {
		t.Fatalf("the worker binds %s: %v", ingressBucket, err)
	}
	const key = "ingress_soar_INC-4211"
	rev, err := kv.Create(ctx, key, []byte(`{"state":"storing"}`))
	if err != nil {
		t.Fatalf("the worker claims a key: %v", err)
	}
	if _, err := kv.Create(ctx, key, []byte(`{"state":"storing"}`)); !errors.Is(err, jetstream.ErrKeyExists) {
		t.Fatalf("a second claim of the key: %v, want ErrKeyExists", err)
	}
	if _, err := kv.Update(ctx, key, []byte(`{"state":"stored","sequence":1}`), rev); err != nil {
		t.Fatalf("the worker records the stored event: %v", err)
	}
	e, err := kv.Get(ctx, key)
	if err != nil || string(e.Value()) != `{"state":"stored","sequence":1}` {
		t.Fatalf("the worker reads the entry back: %v", err)
	}
	stale, err := kv.Put(ctx, "ingress_soar_stale", []byte(`{"state":"storing"}`))
	if err != nil {
		t.Fatalf("the worker takes over a stale claim: %v", err)
	}
	if err := kv.Delete(ctx, "ingress_soar_stale", jetstream.LastRevision(stale)); err != nil {
		t.Fatalf("the worker drops a claim whose event was not stored: %v", err)
	}
	if v := slog.violations("worker"); len(v) > 0 {
		t.Fatalf("the worker was refused using %s: %q", ingressBucket, v)
	}

	svc := &role{name: "service-client"}
	nc, err := nats.Connect(userURL(srv, "service-client", serviceClientPW), nats.CustomInboxPrefix("_INBOX_service"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { svc.refused.add(err) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	svc.nc = nc
	roles := []*role{connectAs(t, srv, "publisher"), connectAs(t, srv, "operator"), svc}

	stream := "KV_" + ingressBucket
	for _, r := range roles {
		for _, a := range []struct{ subject, body string }{
			{"$KV." + ingressBucket + "." + key, `{"state":"stored","sequence":99}`},
			{"$KV." + ingressBucket + ".forged", `{}`},
			{"$JS.API.STREAM.INFO." + stream, ``},
			{"$JS.API.STREAM.CREATE." + stream, `{}`},
			{"$JS.API.STREAM.MSG.GET." + stream, `{"last_by_subj":"$KV.` + ingressBucket + `.` + key + `"}`},
			{"$JS.API.DIRECT.GET." + stream + ".$KV." + ingressBucket + "." + key, ``},
			{"$JS.API.DIRECT.GET." + stream, `{"seq":1}`},
			{"$JS.API.CONSUMER.CREATE." + stream, `{}`},
			{"$JS.API.STREAM.PURGE." + stream, `{}`},
		} {
			if r.try(t, a.subject, a.body) {
				t.Errorf("%s on %s: allowed, want refused", r.name, a.subject)
			}
		}
	}
	// The worker keeps its entries but may not empty or remove the bucket.
	w := &role{name: "worker"}
	w.nc, err = nats.Connect(userURL(srv, "worker", workerPW), nats.CustomInboxPrefix(inboxOf["worker"]),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { w.refused.add(err) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.nc.Close)
	for _, subject := range []string{"$JS.API.STREAM.PURGE." + stream, "$JS.API.STREAM.DELETE." + stream, "$JS.API.STREAM.UPDATE." + stream} {
		if w.try(t, subject, `{}`) {
			t.Errorf("worker on %s: allowed, want refused", subject)
		}
	}

	// What the others tried changed nothing.
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if e, err := kv.Get(cctx, key); err != nil || string(e.Value()) != `{"state":"stored","sequence":1}` {
		t.Fatalf("the entry after the others' tries: %v", err)
	}
	if _, err := kv.Get(cctx, "forged"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("a forged entry: %v, want ErrKeyNotFound", err)
	}
}
