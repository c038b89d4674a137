package queue_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/queue"
)

// TestExistingBucketDifferencesWarned: SPEC §3, "It never changes existing ones: where their settings differ
// (retention, storage, age, duplicate window, replicas) it logs a
// warning and carries on." "Existing ones" are the streams, key-value
// buckets and consumers it would create. An existing ledger bucket kept in
// memory with a one-minute age limit differs in storage and age.
func TestExistingBucketDifferencesWarned(t *testing.T) {
	js := setupJS(t)
	cfg := config.Default()
	ctx := context.Background()
	odd := queue.LedgerConfig(cfg.StreamReplicas)
	odd.Storage, odd.TTL = jetstream.MemoryStorage, time.Minute
	if _, err := js.CreateKeyValue(ctx, odd); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.WarnLevel)
	log := zap.New(core)
	if err := queue.Ensure(ctx, js, cfg.Topology(), log); err != nil {
		t.Fatal(err)
	}
	if _, err := queue.BindLedger(ctx, js, cfg.Topology(), log); err != nil {
		t.Fatalf("a different but workable bucket stopped the start: %v", err)
	}
	kv, _ := js.KeyValue(ctx, queue.LedgerBucket)
	st, _ := kv.Status(ctx)
	if st.TTL() != time.Minute || st.BackingStore() != "JetStream" {
		t.Fatalf("existing bucket changed: ttl %v", st.TTL())
	}
	warned := map[string]bool{}
	for _, e := range logs.All() {
		m := e.ContextMap()
		if m["bucket"] == queue.LedgerBucket {
			warned[m["setting"].(string)] = true
		}
	}
	t.Logf("warnings for bucket %s: %v; all warn lines: %d", queue.LedgerBucket, warned, logs.Len())
	if len(warned) < 2 {
		t.Fatalf("bucket %s differs in storage (memory, want file) and age (1m, want %v); warnings = %v, want one per difference",
			queue.LedgerBucket, queue.LedgerConfig(1).TTL, warned)
	}
}
