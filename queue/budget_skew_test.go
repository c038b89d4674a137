package queue_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
	"github.com/revoker/revoker/throttle"
)

// TestBudgetSkewedClock: one of three replicas has a wall clock off by 2 s
// ahead, 2 s behind or an hour ahead (SPEC §9). Together they still never
// start more calls in a second than the rate; the other two are never
// stalled; the skewed replica's urgent work goes before the others'
// scheduled work, and when it dies with a claim standing, the others go on
// within the claim's short life.
func TestBudgetSkewedClock(t *testing.T) {
	for _, skew := range []time.Duration{2 * time.Second, -2 * time.Second, time.Hour} {
		t.Run(fmt.Sprintf("skew=%v", skew), func(t *testing.T) { testBudgetSkew(t, skew) })
	}
}

func testBudgetSkew(t *testing.T, skew time.Duration) {
	const rate = 10
	srv := queuetest.Server(t)
	api := cloudflaretest.NewServer(cloudflaretest.WithRateLimit(rate))
	t.Cleanup(api.Close)
	s := newBReplicaClock(t, srv.ClientURL(), 1, api, "s", rate, 2, func() time.Time { return time.Now().Add(skew) })
	a := newBReplica(t, srv, api, "a", rate, 2)
	b := newBReplica(t, srv, api, "b", rate, 2)
	// Names start the keys: s… for the skewed replica, a… and b… for the
	// others, u… for urgent ones.
	for _, r := range []*bReplica{s, a, b} {
		r.work(1, 2, keysOf(r.name, 1000)) // more than the test lasts
	}
	others := func(q cloudflaretest.Request) bool {
		return strings.HasPrefix(q.KeyID, "a") || strings.HasPrefix(q.KeyID, "b")
	}

	// Scheduled work everywhere: the rate holds, and the others take slots
	// all along.
	start := time.Now()
	queuetest.Eventually(t, 20*time.Second, "30 calls", func() bool { return api.Count() >= 30 })
	reqs := api.Requests()
	checkWindow(t, reqs, rate)
	if n := api.Throttled(); n != 0 {
		t.Errorf("%d calls refused with 429", n)
	}
	// A stall is a gap of more than two seconds: a skewed clock used to stop
	// the others for the whole run (3 s and more), while a loaded 2-core
	// machine delays a fair turn by up to a second.
	const stall = 2 * time.Second
	last := start
	var fromOthers, fromSkewed int
	for _, q := range reqs {
		if !others(q) {
			fromSkewed++
			continue
		}
		fromOthers++
		if gap := q.At.Sub(last); gap > stall {
			t.Errorf("the other replicas made no call for %v (until %v into the run)", gap, q.At.Sub(start))
		}
		last = q.At
	}
	if gap := time.Since(last); gap > stall {
		t.Errorf("the other replicas made no call for the last %v", gap)
	}
	if fromSkewed == 0 {
		t.Error("the skewed replica made no call")
	}
	t.Logf("%d calls in %v: %d from the skewed replica, %d from the others", len(reqs), time.Since(start).Round(time.Millisecond), fromSkewed, fromOthers)

	// Urgent work at the skewed replica, on its way from the stream as the
	// consumer reports it: it goes first, soon.
	s.gate.SetPending(0, true)
	pendingAt := time.Now()
	queuetest.Eventually(t, 10*time.Second, "the others see the claim", func() bool { return !a.budget.Allows(1) && !b.budget.Allows(1) })
	seenAt := time.Now()
	urgent := keysOf("u", 10)
	s.work(0, 2, urgent)
	for _, k := range urgent {
		queuetest.Eventually(t, 20*time.Second, "urgent calls made", func() bool { return api.Deleted(budgetTAccount, k) })
	}
	s.gate.SetPending(0, false)
	var first, lastUrgent time.Time
	for _, q := range api.Requests() {
		if strings.HasPrefix(q.KeyID, "u") {
			if first.IsZero() {
				first = q.At
			}
			lastUrgent = q.At
		}
	}
	if d := first.Sub(pendingAt); d > stall {
		t.Errorf("the first urgent call started %v after the urgent work was known", d)
	}
	overtook := 0
	for _, q := range api.Requests() {
		if others(q) && q.At.After(seenAt) && q.At.Before(lastUrgent) {
			overtook++
		}
	}
	// At most the slot each had reserved before it saw the claim.
	if overtook > 2 {
		t.Errorf("%d scheduled calls of other replicas started while the skewed replica's urgent work waited", overtook)
	}
	checkWindow(t, api.Requests(), rate)
	t.Logf("urgent: first call %v after it was known, %d scheduled calls elsewhere meanwhile", first.Sub(pendingAt).Round(time.Millisecond), overtook)

	// Scheduled work resumes elsewhere once the urgent work is done.
	doneAt := time.Now()
	queuetest.Eventually(t, 10*time.Second, "scheduled calls resume elsewhere", func() bool {
		reqs := api.Requests()
		return others(reqs[len(reqs)-1]) && reqs[len(reqs)-1].At.After(doneAt)
	})

	// The skewed replica dies while it claims the urgent level: its claim
	// holds the others back for seconds at most.
	s.gate.SetPending(0, true)
	queuetest.Eventually(t, 10*time.Second, "the others see the claim again", func() bool { return !a.budget.Allows(1) && !b.budget.Allows(1) })
	s.kill()
	killedAt := time.Now()
	queuetest.Eventually(t, 20*time.Second, "the others call after the skewed replica died", func() bool {
		reqs := api.Requests()
		return others(reqs[len(reqs)-1]) && reqs[len(reqs)-1].At.After(killedAt)
	})
	d := time.Since(killedAt)
	// A claim lapses 3 s after its last write (claimTTL): allow for a
	// loaded machine, but not for a claim that never lapses.
	if d > 8*time.Second {
		t.Errorf("a dead replica's claim held the others for %v", d)
	}
	t.Logf("the others resumed %v after the skewed replica died", d.Round(time.Millisecond))
	checkWindow(t, api.Requests(), rate)
	if n := api.Throttled(); n != 0 {
		t.Errorf("%d calls refused with 429", n)
	}
}

// TestBudgetPlantedEntryBounded: an entry written into the bucket by hand,
// with a hold, a next slot and a claim years ahead, holds calls for at most
// the 5-minute cap (the claim for seconds), and is logged once, its cause
// made one safe line. The check is on the waits computed, not by waiting.
func TestBudgetPlantedEntryBounded(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	const rate = 4
	b, kv := budgetToPlantIn(t, rate, zap.New(core))
	g := throttle.New(throttle.Config{Priorities: 2, Concurrency: 1, Budget: b})
	t.Cleanup(g.Close)
	ctx := context.Background()
	const key = "token_feedf00d"
	plant := func(entry string) {
		t.Helper()
		if _, err := kv.Put(ctx, key, []byte(entry)); err != nil {
			t.Fatal(err)
		}
	}
	const far = "2125-01-01T00:00:00Z"

	plant(`{"hold":"` + far + `","cause":"planted\nsecond line \u202e","claims":{"intruder":{"p":0,"at":"` + far + `","until":"` + far + `"}}}`)
	queuetest.Eventually(t, 10*time.Second, "the planted hold seen", func() bool { return g.PausedFor() > time.Minute })
	until, cause := b.Held()
	if d := time.Until(until); d > throttle.MaxPause || d < throttle.MaxPause-time.Minute {
		t.Errorf("a planted hold holds for %v, want at most %v", d, throttle.MaxPause)
	}
	if d := g.PausedFor(); d > throttle.MaxPause {
		t.Errorf("the gate holds for %v, want at most %v", d, throttle.MaxPause)
	}
	if strings.ContainsAny(cause, "\n\u202e") {
		t.Errorf("cause %q read as it was written", cause)
	}
	at, ok, err := b.Reserve(ctx, 0)
	if err != nil || ok || time.Until(at) > throttle.MaxPause {
		t.Errorf("Reserve in a planted hold: %v ok=%v err=%v, want a wait of at most %v", time.Until(at), ok, err, throttle.MaxPause)
	}
	// The planted claim counts for claimTTL after it was stored, no more.
	queuetest.Eventually(t, 10*time.Second, "the planted claim lapsed", func() bool { return b.Allows(1) })

	plant(`{"next":"` + far + `"}`)
	queuetest.Eventually(t, 10*time.Second, "the planted next slot seen", func() bool {
		at, ok, err = b.Reserve(ctx, 1)
		return err == nil && !ok && time.Until(at) > time.Minute
	})
	if err != nil || ok || time.Until(at) > queue.BudgetInterval(rate)+throttle.MaxPause {
		t.Errorf("Reserve behind a planted next slot: %v ok=%v err=%v, want a wait of at most %v", time.Until(at), ok, err, queue.BudgetInterval(rate)+throttle.MaxPause)
	}

	warned := logs.FilterMessageSnippet("no replica could have written").All()
	if len(warned) != 1 {
		t.Fatalf("%d warnings about the planted entries, want 1: %v", len(warned), warned)
	}
	fields := fmt.Sprint(warned[0].ContextMap()["fields"])
	for _, f := range []string{"hold", "cause", "claims"} {
		if !strings.Contains(fields, f) {
			t.Errorf("warning names %s, want %s among them", fields, f)
		}
	}
}

// TestBudgetPlantedClaimKey: a replica's claim key is believed only for
// the replica it names, and, whatever its times say, for claimTTL after the
// server stored it. One naming another replica inside holds nobody up.
func TestBudgetPlantedClaimKey(t *testing.T) {
	b, kv := budgetToPlantIn(t, 4, zaptest.NewLogger(t))
	ctx := context.Background()
	const far = "2125-01-01T00:00:00Z"
	claim := func(owner string) string {
		return `{"claims":{"` + owner + `":{"p":0,"at":"` + far + `","until":"` + far + `"}}}`
	}
	// Another replica's claim inside x's key; and one of another budget.
	if _, err := kv.Put(ctx, "token_feedf00d.claim.x", []byte(claim("y"))); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "token_0ther000.claim.z", []byte(claim("z"))); err != nil {
		t.Fatal(err)
	}
	// Seen once the next write, after both, is seen.
	if _, err := kv.Put(ctx, "token_feedf00d.claim.w", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	queuetest.Eventually(t, 10*time.Second, "the planted keys seen", func() bool { return b.Stats().Watched >= 4 })
	if !b.Allows(1) {
		t.Fatal("a claim key naming another replica, or of another budget, held scheduled calls")
	}
	stored := time.Now()
	if _, err := kv.Put(ctx, "token_feedf00d.claim.x", []byte(claim("x"))); err != nil {
		t.Fatal(err)
	}
	queuetest.Eventually(t, 10*time.Second, "the claim seen", func() bool { return !b.Allows(1) })
	queuetest.Eventually(t, 10*time.Second, "the claim lapsed", func() bool { return b.Allows(1) })
	// 3 s after it was stored (claimTTL), give or take a loaded machine.
	if d := time.Since(stored); d > 6*time.Second {
		t.Errorf("a planted claim key held scheduled calls for %v", d)
	}
}

// budgetToPlantIn is a budget at rate, of the credential token:feedf00d,
// with its entry written once, and its bucket to plant entries in.
func budgetToPlantIn(t *testing.T, rate float64, log *zap.Logger) (*queue.Budget, jetstream.KeyValue) {
	t.Helper()
	srv := queuetest.Server(t)
	_, js := queuetest.Connect(t, srv)
	b, err := queue.NewBudget(js, queue.BudgetConfig{ID: func() string { return "token:feedf00d" }, Rate: rate, Create: true, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ctx := context.Background()
	if _, ok, err := b.Reserve(ctx, 0); err != nil || !ok {
		t.Fatalf("first reservation: %v %v", ok, err)
	}
	kv, err := js.KeyValue(ctx, queue.BudgetBucket)
	if err != nil {
		t.Fatal(err)
	}
	return b, kv
}

// TestBudgetEntryDeletedByHand: an operator deleting the budget's entry
// (to clear a hold that looks stuck, say) leaves a delete marker; a replica
// starting after it still reserves, rather than conflicting with the
// marker for ever and stopping every call of the budget.
func TestBudgetEntryDeletedByHand(t *testing.T) {
	srv := queuetest.Server(t)
	_, js := queuetest.Connect(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := queue.BudgetConfig{ID: func() string { return "token:de1e7ed0" }, Rate: 4, Create: true, Log: zap.NewNop()}
	first, err := queue.NewBudget(js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := first.Reserve(ctx, 0); err != nil || !ok {
		t.Fatalf("first reservation: %v %v", ok, err)
	}
	first.Close()
	kv, err := js.KeyValue(ctx, queue.BudgetBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "token_de1e7ed0"); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		b, err := queue.NewBudget(js, cfg)
		if err != nil {
			t.Fatal(err)
		}
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		_, ok, err := b.Reserve(rctx, 0)
		rcancel()
		b.Close()
		if err != nil || !ok {
			t.Fatalf("a replica started after the entry was deleted reserves nothing: ok=%v err=%v", ok, err)
		}
		if err := kv.Delete(ctx, "token_de1e7ed0"); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBudgetForeignEntryKeepsTheHold: another role can have the server
// store its own answer on the budget's key (a request whose reply subject
// is the key). Such an entry is no replica's: it neither wipes a hold (so
// calls would resume inside the API's block) nor stops calls for ever.
func TestBudgetForeignEntryKeepsTheHold(t *testing.T) {
	srv := queuetest.Server(t)
	_, js := queuetest.Connect(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := queue.NewBudget(js, queue.BudgetConfig{ID: func() string { return "token:f0e1a2b3" }, Rate: 4, Create: true, Log: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	if _, ok, err := b.Reserve(ctx, 0); err != nil || !ok {
		t.Fatalf("first reservation: %v %v", ok, err)
	}
	b.Hold(time.Now().Add(throttle.MaxPause), "429 from the API")
	kv, err := js.KeyValue(ctx, queue.BudgetBucket)
	if err != nil {
		t.Fatal(err)
	}
	// In the entry itself and in the budget's own copy of it, not only
	// pending here: the foreign entry must land after the hold's write is
	// answered, not race it. A reservation refused for the hold (not for
	// the next slot, a quarter of a second away) says the copy has it.
	queuetest.Eventually(t, 10*time.Second, "the hold stored in the entry", func() bool {
		e, err := kv.Get(ctx, "token_f0e1a2b3")
		at, ok, rerr := b.Reserve(ctx, 0)
		return err == nil && strings.Contains(string(e.Value()), `"hold"`) && rerr == nil && !ok && time.Until(at) > time.Minute
	})
	for _, foreign := range []string{`{"stream":"REVOCATIONS","seq":1}`, ``} {
		rev, err := kv.Put(ctx, "token_f0e1a2b3", []byte(foreign))
		if err != nil {
			t.Fatal(err)
		}
		// Read through to the foreign entry, then ask again.
		queuetest.Eventually(t, 10*time.Second, "the foreign entry read", func() bool {
			e, err := kv.Get(ctx, "token_f0e1a2b3")
			return err == nil && e.Revision() >= rev
		})
		at, ok, err := b.Reserve(ctx, 0)
		if err != nil || ok || time.Until(at) < time.Minute {
			t.Fatalf("after the entry %q: Reserve %v ok=%v err=%v; want the hold still standing", foreign, time.Until(at), ok, err)
		}
	}
}
