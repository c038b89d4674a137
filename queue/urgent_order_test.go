package queue_test

import (
	"cmp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/config"
)

// firstCalls maps each key with prefix to the arrival of its first call.
func (s *stack) firstCalls(prefix string) map[string]time.Time {
	out := map[string]time.Time{}
	for _, r := range s.api.Requests() {
		if strings.HasPrefix(r.KeyID, prefix) {
			if _, ok := out[r.KeyID]; !ok {
				out[r.KeyID] = r.At
			}
		}
	}
	return out
}

// TestUrgentBurstIsCalledInStoredOrder: a burst of urgent events published
// behind a scheduled backlog at 4 calls a second. Every first delivery of
// a fetch waits for one look at the consumer, and all are let go at once:
// their goroutines came to the gate in any order, often the reverse. SPEC §3 bounds an urgent
// event's first call by the calls in flight, the urgent events ahead of it
// and one rate interval: an urgent event stored later must not take a call
// ahead of one stored earlier (beyond the calls that were in flight).
func TestUrgentBurstIsCalledInStoredOrder(t *testing.T) {
	const rate, backlog, urgent = 4, 300, 6
	s := newStack(t, func(c *config.Config) { c.RateLimit = rate; c.Concurrency = 2 })
	s.ensure()
	s.publishMany(s.cfg.LowestPriority(), keyList("s", backlog))
	s.start()
	s.waitFor("the backlog being worked", func() bool { return s.api.Count() >= 3 })
	// Published without waiting for each ack; the acks' sequences give
	// the stored order.
	js, err := jetstream.New(s.nc)
	if err != nil {
		t.Fatal(err)
	}
	var futs []jetstream.PubAckFuture
	for _, k := range keyList("u", urgent) {
		m := nats.NewMsg(s.cfg.HighestPriority())
		m.Data = []byte(eventJSON(acct, k))
		f, err := js.PublishMsgAsync(m)
		if err != nil {
			t.Fatal(err)
		}
		futs = append(futs, f)
	}
	seqs := map[string]uint64{}
	for i, f := range futs {
		select {
		case ack := <-f.Ok():
			seqs[keyList("u", urgent)[i]] = ack.Sequence
		case err := <-f.Err():
			t.Fatal(err)
		case <-time.After(10 * time.Second):
			t.Fatal("no ack")
		}
	}
	storedBy := time.Now() // every urgent event is stored by now
	s.waitFor("every urgent event called", func() bool { return len(s.firstCalls("u")) == urgent })
	first := s.firstCalls("u")
	keys := keyList("u", urgent)
	slices.SortFunc(keys, func(a, b string) int { return cmp.Compare(seqs[a], seqs[b]) })
	var order []string
	for _, r := range s.api.Requests() {
		if strings.HasPrefix(r.KeyID, "u") && first[r.KeyID] == r.At {
			order = append(order, r.KeyID)
		}
	}
	// overtaken[i]: urgent events stored after keys[i] whose first call came first.
	worst := 0
	for i, k := range keys {
		n := 0
		for _, later := range keys[i+1:] {
			if first[later].Before(first[k]) {
				n++
			}
		}
		worst = max(worst, n)
	}
	t.Logf("stored order (by stream sequence) %v; first calls in order %v; %s (nothing ahead of it) first called at least %v after it was stored",
		keys, order, keys[0], first[keys[0]].Sub(storedBy).Round(time.Millisecond))
	// The calls in flight when an urgent event was stored were scheduled
	// ones; urgent events stored after it were not among them.
	if worst > 0 {
		t.Fatalf("an urgent event was overtaken by %d urgent events stored after it: first calls in order %v", worst, order)
	}
}

// TestRetriesDoNotKeepLaterEventsFromTheirFirstCall: events of one level
// are first called as they were stored, but an earlier event that fails
// and retries at once queues as it comes: k1 answered 503 on every call,
// retrying every few milliseconds, must not take every rate slot (4 a
// second) from k2 and k3 until its retry budget (a minute) is spent.
func TestRetriesDoNotKeepLaterEventsFromTheirFirstCall(t *testing.T) {
	s := newStack(t, func(c *config.Config) {
		c.RateLimit, c.Concurrency = 4, 3
		c.RetryInitial, c.RetryMaxInterval, c.RetryMaxElapsed = 10*time.Millisecond, 20*time.Millisecond, time.Minute
	})
	s.ensure()
	failing := make([]int, 200)
	for i := range failing {
		failing[i] = 503
	}
	s.api.Script("k1", failing...)
	s.publishMany(s.cfg.HighestPriority(), []string{"k1", "k2", "k3"})
	s.start()
	s.waitFor("k2 and k3 called while k1 keeps failing", func() bool { return s.deletes("k2") > 0 && s.deletes("k3") > 0 })
	if n := s.deletes("k1"); n > 6 {
		t.Fatalf("k1 was called %d times before k2 and k3 had their first call", n)
	}
}
