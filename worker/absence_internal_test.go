package worker

import (
	"context"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/revoker/revoker/metrics"
	"sync"
	"testing"
	"time"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/throttle"
)

// countingLister counts key lists.
type countingLister struct {
	API
	mu    sync.Mutex
	lists int
}

func (c *countingLister) ListSigningKeys(context.Context, string) (*cloudflare.KeyList, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lists++
	return cloudflare.NewKeyList(&cloudflare.Response{Status: 200}), nil
}

func (c *countingLister) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lists
}

// TestOneListServesEarlier404s: 404s of one account that arrived before a
// key list went out share it; a 404 after it went out gets a list of its
// own (SPEC §4, "The proof", point 1).
func TestOneListServesEarlier404s(t *testing.T) {
	api := &countingLister{}
	gate := throttle.New(throttle.Config{Priorities: 1, Concurrency: 1})
	t.Cleanup(gate.Close)
	m := metrics.New(prometheus.NewRegistry(), metrics.Labels{}, metrics.Build{})
	w := &Worker{Deps: Deps{API: api, Gate: gate, Metrics: m}, lists: map[listKey]*listing{}, budget: m.Budget("")}
	ctx := context.Background()

	// Every call slot is taken: the first list waits for its permit.
	held, err := gate.Acquire(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	type got struct {
		list    *cloudflare.KeyList
		fetched time.Time
	}
	results := make(chan got, 2)
	first404 := time.Now()
	go func() {
		l, at, _, _, _ := w.keyList(ctx, ctx, Route{}, "acct1", 0, first404, noWait)
		results <- got{l, at}
	}()
	waitFor(t, func() bool {
		w.listMu.Lock()
		defer w.listMu.Unlock()
		return w.lists[listKey{"acct1", 0, "", ""}] != nil
	})
	second404 := time.Now()
	go func() {
		l, at, _, _, _ := w.keyList(ctx, ctx, Route{}, "acct1", 0, second404, noWait)
		results <- got{l, at}
	}()
	// The second joins the list under way rather than fetching its own.
	waitFor(t, func() bool {
		w.listMu.Lock()
		defer w.listMu.Unlock()
		return w.lists[listKey{"acct1", 0, "", ""}].sharers == 1
	})
	held.Release()
	a, b := <-results, <-results
	if a.list != b.list || api.count() != 1 {
		t.Fatalf("%d lists for two 404s that came before the list went out", api.count())
	}
	if !a.fetched.After(second404) {
		t.Fatalf("list fetched at %v, not after the 404 at %v", a.fetched, second404)
	}
	// A 404 after that list went out is not proven by it.
	if _, _, _, _, err := w.keyList(ctx, ctx, Route{}, "acct1", 0, time.Now(), noWait); err != nil || api.count() != 2 {
		t.Fatalf("a later 404 got %d lists in all (err %v), want its own", api.count(), err)
	}
}

// TestListNotSharedAcrossCredentials: after a reload moves an account
// from credential a to b, or gives a another secret (another Identity), a
// 404 heard through the new route does not join a list under way through
// the old one: the list proving it is fetched through its own.
func TestListNotSharedAcrossCredentials(t *testing.T) {
	for name, routes := range map[string][2]Route{
		"another credential":            {{Credential: "a"}, {Credential: "b"}},
		"another secret, the same name": {{Credential: "a", Identity: "token:1a2b3c4d a"}, {Credential: "a", Identity: "token:5e6f7a8b a"}},
	} {
		t.Run(name, func(t *testing.T) {
			apiOld, apiNew := &countingLister{}, &countingLister{}
			routes[0].API, routes[1].API = apiOld, apiNew
			gate := throttle.New(throttle.Config{Priorities: 1, Concurrency: 1})
			t.Cleanup(gate.Close)
			m := metrics.New(prometheus.NewRegistry(), metrics.Labels{}, metrics.Build{})
			w := &Worker{Deps: Deps{API: apiOld, Gate: gate, Metrics: m}, lists: map[listKey]*listing{}, budget: m.Budget("")}
			ctx := context.Background()
			held, err := gate.Acquire(ctx, 0) // every call slot taken: lists wait for a permit
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{}, 2)
			list := func(r Route) {
				_, _, _, _, _ = w.keyList(ctx, ctx, r, "acct1", 0, time.Now(), noWait)
				done <- struct{}{}
			}
			// settled: the lists under way, and how many 404s joined one.
			settled := func(lists, sharers int) func() bool {
				return func() bool {
					w.listMu.Lock()
					defer w.listMu.Unlock()
					joined := 0
					for _, l := range w.lists {
						joined += l.sharers
					}
					return len(w.lists) == lists && joined == sharers
				}
			}
			go list(routes[0])
			waitFor(t, settled(1, 0))
			go list(routes[1])
			// Either its own list waits for a permit, or it joined the other.
			waitFor(t, func() bool { return settled(2, 0)() || settled(1, 1)() })
			held.Release()
			<-done
			<-done
			if apiOld.count() != 1 || apiNew.count() != 1 {
				t.Fatalf("lists through the old route: %d, through the new: %d; want one each", apiOld.count(), apiNew.count())
			}
		})
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// noWait is a key list's readiness check that always passes.
func noWait(*permit) (ending, error) { return decided, nil }
