package queue_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestBudgetFreshReplicaSeesClaimKeys: a replica far from the server
// claims the urgent level in its claim key only (its shared-entry write
// keeps losing, the case the claim key exists for). A replica that starts
// now (a restart, a rollout, a budget made after a credentials file
// change) must not take a scheduled slot while that claim is live: SPEC §9.
func TestBudgetFreshReplicaSeesClaimKeys(t *testing.T) {
	for _, rate := range []float64{0, 4} {
		t.Run(fmt.Sprint("rate ", rate), func(t *testing.T) {
			srv := queuetest.Server(t)
			_, js := queuetest.Connect(t, srv)
			seer := bareBudget(t, srv.ClientURL(), rate)
			reserveNow(t, seer, 1) // bucket and entry exist
			ctx := context.Background()
			kv, err := js.KeyValue(ctx, queue.BudgetBucket)
			if err != nil {
				t.Fatal(err)
			}
			plant := func() {
				if _, err := kv.Put(ctx, "token_0a1b2c3d.claim.far", []byte(`{"claims":{"far":{"p":0}}}`)); err != nil {
					t.Fatal(err)
				}
			}
			plant()
			queuetest.Eventually(t, 5*time.Second, "the far claim seen by a running replica", func() bool { return !seer.Allows(1) })
			inverted := 0
			const tries = 5
			for range tries {
				// The shared entry's next slot due, so that only a claim
				// can refuse the fresh replica a slot.
				queuetest.Eventually(t, 5*time.Second, "the next slot due", func() bool {
					if rate == 0 {
						return true // no slots, no entry
					}
					e, err := kv.Get(ctx, "token_0a1b2c3d")
					if err != nil {
						return false
					}
					var st struct {
						Next time.Time `json:"next"`
					}
					return json.Unmarshal(e.Value(), &st) == nil && time.Now().After(st.Next)
				})
				plant() // live for 3 s from now
				fresh := bareBudget(t, srv.ClientURL(), rate)
				rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				at, ok, err := fresh.Reserve(rctx, 1)
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				if ok {
					inverted++
					t.Logf("fresh replica reserved a scheduled slot at %v while the urgent claim is live (the running replica blocked: %v)", time.Until(at).Round(time.Millisecond), !seer.Allows(1))
				}
				fresh.Close()
			}
			if inverted > 0 {
				t.Errorf("%d of %d freshly started replicas took a scheduled slot while another replica's urgent claim was live", inverted, tries)
			}
		})
	}
}

// TestBudgetOutageLogsEachCauseOnce: during one outage of the bucket, a
// replica with urgent work waiting logs each cause of trouble once
// (BudgetConfig.Log), not again each time keepClaim and the reservations
// take turns failing.
func TestBudgetOutageLogsEachCauseOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 8 s")
	}
	testOutageLogs(t, true)
}

func testOutageLogs(t *testing.T, claim bool) {
	srv := queuetest.Server(t)
	hole := queuetest.NewBlackhole(t, srv.ClientURL()[len("nats://"):])
	_, js := queuetest.ConnectURL(t, hole.URL())
	core, logs := observer.New(zapcore.WarnLevel)
	b, err := queue.NewBudget(js, queue.BudgetConfig{
		ID: func() string { return "token:0a1b2c3d" }, Rate: 4, Create: true, Log: zap.New(core),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	near := bareBudget(t, srv.ClientURL(), 4)
	reserveNow(t, b, 1)
	if claim {
		b.Claim(0)
		queuetest.Eventually(t, 5*time.Second, "the claim seen", func() bool { return !near.Allows(1) })
	}

	hole.Cut()
	t.Cleanup(hole.Heal)
	// The gate asks again and again while the budget cannot be asked.
	// 8 s of it, or until the log shows the same cause four times over.
	cutAt := time.Now()
	queuetest.Eventually(t, 20*time.Second, "8 s of the outage", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, _, _ = b.Reserve(ctx, 0)
		cancel()
		return time.Since(cutAt) > 8*time.Second || len(logs.FilterMessageSnippet("not reachable").All()) >= 6
	})
	count := map[string]int{}
	var order []string
	for _, e := range logs.FilterMessageSnippet("not reachable").All() {
		msg := fmt.Sprint(e.ContextMap()["error"])
		count[msg]++
		order = append(order, msg)
	}
	t.Logf("warnings in order: %q", order)
	for msg, n := range count {
		if n > 1 {
			t.Errorf("%q logged %d times during one outage", msg, n)
		}
	}
}

// TestBudgetMissingBucketAskedAtTheBackoff: with the bucket missing and
// creation not allowed, a budget that claims nothing asks the server for
// it no faster than run's backoff (50 ms doubling to 2 s): keepClaim binds
// on its own every half second, whether or not it has a claim to keep.
func TestBudgetMissingBucketAskedAtTheBackoff(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 10 s")
	}
	srv := queuetest.Server(t)
	_, js := queuetest.Connect(t, srv)
	asked := bucketLookups(t, srv)
	b, err := queue.NewBudget(js, queue.BudgetConfig{ID: func() string { return "token:0a1b2c3d" }, Rate: 4, Log: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	start := time.Now()
	queuetest.Eventually(t, 20*time.Second, "10 s", func() bool { return time.Since(start) > 10*time.Second })
	// run alone: 50, 100, ... 1600 ms, then every 2 s: about 10 in 10 s.
	t.Logf("bucket looked up %d times in 10 s", asked.Load())
	if n := asked.Load(); n > 12 {
		t.Errorf("a missing bucket was looked up %d times in 10 s with nothing to claim, want about 10", n)
	}
}

// TestBudgetCloseAfterClaimEnds: work ends (Claim(-1)) and the budget is
// closed at once, as at a graceful shutdown: no trouble is reported.
func TestBudgetCloseAfterClaimEnds(t *testing.T) {
	t.Cleanup(queue.SetCloseWrite(10 * time.Second)) // a loaded machine's answers are late, not trouble
	srv := queuetest.Server(t)
	core, logs := observer.New(zapcore.WarnLevel)
	b, near := claimingBudget(t, srv, srv.ClientURL(), zap.New(core))
	b.Claim(-1)
	b.Close()
	for _, e := range logs.All() {
		t.Errorf("at close: %s %v", e.Message, e.ContextMap()["error"])
	}
	queuetest.Eventually(t, 5*time.Second, "the claim gone for the other replica", func() bool { return near.Allows(1) })
}

// TestBudgetCloseEndsClaimEverywhere: a replica closing with urgent work
// claimed (a shutdown) ends its claim at Close, in its claim key and in
// the shared entry, which replicas of this version read too: the others'
// scheduled calls do not wait 2-3 s for it to lapse.
func TestBudgetCloseEndsClaimEverywhere(t *testing.T) {
	// Close's writes, not a lapse, end the claim here: a loaded machine
	// may take longer than the shipped bound to answer them.
	t.Cleanup(queue.SetCloseWrite(10 * time.Second))
	srv := queuetest.Server(t)
	_, js := queuetest.Connect(t, srv)
	b := bareBudget(t, srv.ClientURL(), 4)
	near := bareBudget(t, srv.ClientURL(), 4)
	reserveNow(t, b, 1)
	ctx := context.Background()
	kv, err := js.KeyValue(ctx, queue.BudgetBucket)
	if err != nil {
		t.Fatal(err)
	}
	liveInEntry := entryClaims(t, srv.ClientURL())
	claimKeys := func() int {
		keys, err := kv.ListKeys(ctx)
		if err != nil {
			return -1
		}
		n := 0
		for k := range keys.Keys() {
			if strings.Contains(k, ".claim.") {
				n++
			}
		}
		return n
	}
	b.Claim(0)
	queuetest.Eventually(t, 5*time.Second, "the claim in its key and in the shared entry, seen by near",
		func() bool { return claimKeys() == 1 && liveInEntry() == 1 && !near.Allows(1) })
	b.Close()
	// Written before Close returned: no waiting for a lapse here.
	if n := claimKeys(); n != 0 {
		t.Errorf("after Close: %d claim keys", n)
	}
	if n := liveInEntry(); n != 0 {
		t.Errorf("after Close: the shared entry still holds %d live claim(s)", n)
	}
}

// TestBudgetCloseDuringOutageIsQuick: Close with a claim standing while
// the server does not answer (a shutdown during an outage) does not wait
// out requests' timeouts (5 s for stopping the watch): the claim lapses
// on its own. Routes.Close closes each budget in turn.
func TestBudgetCloseDuringOutageIsQuick(t *testing.T) {
	srv := queuetest.Server(t)
	hole := queuetest.NewBlackhole(t, srv.ClientURL()[len("nats://"):])
	b, _ := claimingBudget(t, srv, hole.URL(), zap.NewNop())
	hole.Cut()
	t.Cleanup(hole.Heal)
	start := time.Now()
	b.Close()
	// The writes ending the claim are bounded by 300 ms; a wide margin for
	// a loaded machine, well short of a request's timeout.
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v during an outage", d.Round(time.Millisecond))
	}
}

// claimingBudget is a budget at rate 4 on the server at url, claiming the
// urgent level, and a replica next to srv that sees the claim.
func claimingBudget(t *testing.T, srv *server.Server, url string, log *zap.Logger) (b, near *queue.Budget) {
	t.Helper()
	_, js := queuetest.ConnectURL(t, url)
	b, err := queue.NewBudget(js, queue.BudgetConfig{ID: func() string { return "token:0a1b2c3d" }, Rate: 4, Create: true, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	near = bareBudget(t, srv.ClientURL(), 4)
	reserveNow(t, b, 1)
	b.Claim(0)
	queuetest.Eventually(t, 5*time.Second, "the claim seen", func() bool { return !near.Allows(1) })
	return b, near
}

// entryClaims: the live claims of the shared entry of token:0a1b2c3d, by
// owner, as the server holds them (-1 when unreadable).
func entryClaims(t *testing.T, url string) func() int {
	t.Helper()
	_, js := queuetest.ConnectURL(t, url)
	return func() int {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		kv, err := js.KeyValue(ctx, queue.BudgetBucket)
		if err != nil {
			return -1
		}
		e, err := kv.Get(ctx, "token_0a1b2c3d")
		if err != nil {
			return -1
		}
		var st struct {
			Claims map[string]struct {
				Until time.Time `json:"until"`
			} `json:"claims"`
		}
		if json.Unmarshal(e.Value(), &st) != nil {
			return -1
		}
		n := 0
		for _, c := range st.Claims {
			if time.Now().Before(c.Until) {
				n++
			}
		}
		return n
	}
}

// TestBudgetCloseDuringOutageSaysNothing: a shutdown during an outage,
// with a claim standing in the shared entry, reports no trouble: the
// claim lapses on its own (as endClaim says of the claim key), and "no
// call starts until it answers" is not true of a budget being closed.
func TestBudgetCloseDuringOutageSaysNothing(t *testing.T) {
	srv := queuetest.Server(t)
	hole := queuetest.NewBlackhole(t, srv.ClientURL()[len("nats://"):])
	core, logs := observer.New(zapcore.WarnLevel)
	b, _ := claimingBudget(t, srv, hole.URL(), zap.New(core))
	live := entryClaims(t, srv.ClientURL())
	queuetest.Eventually(t, 5*time.Second, "the claim in the shared entry", func() bool { return live() == 1 })
	hole.Cut()
	t.Cleanup(hole.Heal)
	b.Close()
	for _, e := range logs.All() {
		t.Errorf("at close during an outage: %s %v", e.Message, e.ContextMap()["error"])
	}
}

// TestBudgetClaimDuringCloseNotWritten: the gate's loop is not joined by
// Gate.Close (BudgetGate.Close then closes the budget), so a Claim can
// arrive while the budget closes. Close must still leave no live claim of
// this replica in the shared entry. The Clock hook stands in for the
// gate's loop: once armed, each reading of the clock is accompanied by a
// Claim(0), as the gate's last iteration would make it.
func TestBudgetClaimDuringCloseNotWritten(t *testing.T) {
	srv := queuetest.Server(t)
	_, js := queuetest.Connect(t, srv)
	var (
		armed atomic.Bool
		self  atomic.Pointer[queue.Budget]
	)
	clock := func() time.Time {
		if armed.Load() {
			self.Load().Claim(0)
		}
		return time.Now()
	}
	b, err := queue.NewBudget(js, queue.BudgetConfig{ID: func() string { return "token:0a1b2c3d" }, Rate: 4, Create: true,
		Log: zap.NewNop(), Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	self.Store(b)
	t.Cleanup(b.Close)
	near := bareBudget(t, srv.ClientURL(), 4)
	reserveNow(t, b, 1)
	b.Claim(0)
	live := entryClaims(t, srv.ClientURL())
	queuetest.Eventually(t, 5*time.Second, "the claim seen", func() bool { return !near.Allows(1) && live() == 1 })
	armed.Store(true)
	b.Close()
	armed.Store(false)
	if n := live(); n != 0 {
		t.Errorf("after Close: the shared entry holds %d live claim(s)", n)
	}
}

// bucketLookups counts the lookups of the budget's bucket on srv.
func bucketLookups(t *testing.T, srv *server.Server) *atomic.Int64 {
	t.Helper()
	nc, _ := queuetest.Connect(t, srv)
	var asked atomic.Int64
	sub, err := nc.Subscribe("$JS.API.STREAM.INFO.KV_"+queue.BudgetBucket, func(*nats.Msg) { asked.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return &asked
}
