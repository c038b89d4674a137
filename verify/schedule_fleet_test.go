package verify_test

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue/queuetest"
	"github.com/revoker/revoker/verify"
)

// TestFirstCheckRunsAcrossRestarts: a fleet whose replicas restart
// more often than REVOKER_VERIFY_INTERVAL (a daily deploy with a 24h
// interval; here: every poll of a 300ms interval) must still run its
// first check an interval after the fleet first polled: were "when checks
// began" kept in each process only, every restart would postpone the first
// check again, for ever, and revoker_keys_still_listed would stay 0 while
// a not_found key is still listed.
func TestFirstCheckRunsAcrossRestarts(t *testing.T) {
	r := newRig(t)
	r.api.KeepListed(acct, "alive")
	r.record(acct, "alive", event.NotFound)
	ctx := testCtx(t)
	const interval = 300 * time.Millisecond
	polls := 0
	queuetest.Eventually(t, 10*interval+5*time.Second, "a first scheduled check across restarts", func() bool {
		s, g := r.schedule("a", interval) // a freshly started replica
		polls++
		ran, err := s.Tick(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ran && testutil.ToFloat64(g) != 1 {
			t.Fatalf("check ran, gauge %v, want 1", testutil.ToFloat64(g))
		}
		return ran
	})
	t.Logf("first check after %d polls", polls)
}

// TestExistingBucketWithoutTTLsChecks: a revoker_verify bucket that
// exists without per-key TTLs (made by hand, by an older build, restored)
// is used as it is (the worker never alters an existing bucket, SPEC §3);
// the scheduled check must still run, not fail at every poll for ever.
func TestExistingBucketWithoutTTLsChecks(t *testing.T) {
	r := newRig(t)
	r.api.KeepListed(acct, "alive")
	r.record(acct, "alive", event.NotFound)
	ctx := testCtx(t)
	if _, err := r.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: verify.Bucket, History: 1}); err != nil {
		t.Fatal(err)
	}
	s, g := r.schedule("a", time.Nanosecond)
	var lastErr error
	ran := false
	for i := 0; i < 5 && !ran; i++ {
		ran, lastErr = s.Tick(ctx)
	}
	if !ran {
		t.Fatalf("no check ran in 5 polls; last error: %v (gauge %v)", lastErr, testutil.ToFloat64(g))
	}
}
