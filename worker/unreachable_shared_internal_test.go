package worker

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/metrics"
	"github.com/revoker/revoker/throttle"
)

// prio0 is a delivery of the highest priority (only Priority is used).
type prio0 struct{ Delivery }

func (prio0) Priority() int { return 0 }

// TestSharedListGivenUpIsNotUnreachable: a 404 that joined another
// delivery's key list, which that delivery gave up before any call went
// out (its delivery stopped or was settled meanwhile), heard nothing from
// the API: condition api must stay met.
func TestSharedListGivenUpIsNotUnreachable(t *testing.T) {
	api := &countingLister{}
	gate := throttle.New(throttle.Config{Priorities: 1, Concurrency: 1})
	t.Cleanup(gate.Close)
	m := metrics.New(prometheus.NewRegistry(), metrics.Labels{}, metrics.Build{})
	ready := metrics.NewReadiness(prometheus.NewRegistry())
	ready.Declare(ReadyAPI)
	w := &Worker{Deps: Deps{API: api, Gate: gate, Metrics: m, Ready: ready, Log: zap.NewNop()}, lists: map[listKey]*listing{}, budget: m.Budget("")}
	ctx := context.Background()
	held, err := gate.Acquire(ctx, 0) // every slot taken: the owner's list waits
	if err != nil {
		t.Fatal(err)
	}
	ownerDone := make(chan struct{})
	go func() {
		defer close(ownerDone)
		// The owner's delivery ends before its list goes out.
		_, _, _, _, _ = w.keyList(ctx, ctx, Route{}, "acct1", 0, time.Now(),
			func(*permit) (ending, error) { return stopped, nil })
	}()
	waitFor(t, func() bool {
		w.listMu.Lock()
		defer w.listMu.Unlock()
		return w.lists[listKey{"acct1", 0, "", ""}] != nil
	})
	a := &attempt{d: prio0{}, ev: event.Event{AccountID: "acct1", KeyID: "key1"}}
	a.last = Decision{Kind: NotFound, Detail: "HTTP 404: key not found"}
	type res struct {
		d   Decision
		end ending
	}
	got := make(chan res, 1)
	go func() {
		d, end := w.proveAbsence(ctx, ctx, a, time.Now())
		got <- res{d, end}
	}()
	waitFor(t, func() bool {
		w.listMu.Lock()
		defer w.listMu.Unlock()
		l := w.lists[listKey{"acct1", 0, "", ""}]
		return l != nil && l.sharers == 1
	})
	held.Release()
	<-ownerDone
	r := <-got
	if api.count() != 0 {
		t.Fatalf("%d key lists made; the test wants none", api.count())
	}
	if !ready.Met(ReadyAPI) {
		t.Fatalf("condition api unmet (%q) though no call was made (sharer got %+v)", ready.Why(ReadyAPI), r.d)
	}
}

// TestEarlierWorkersLapseDoesNotMeetALaterUnanswered: a worker on an
// earlier connection set condition api for a call that got no answer; the
// worker on the new connection then had a call go unanswered too. The
// earlier worker's lapse must not meet the condition again before the
// later call's unreachableFor has passed.
func TestEarlierWorkersLapseDoesNotMeetALaterUnanswered(t *testing.T) {
	old := minUnreachableFor
	minUnreachableFor = 400 * time.Millisecond
	t.Cleanup(func() { minUnreachableFor = old })
	ready := metrics.NewReadiness(prometheus.NewRegistry())
	ready.Declare(ReadyAPI)
	w1 := &Worker{Deps: Deps{Ready: ready, Log: zap.NewNop()}}
	w2 := &Worker{Deps: Deps{Ready: ready, Log: zap.NewNop()}}
	noAns := Decision{Kind: Retry, Detail: "no response: connection refused"}
	t0 := time.Now()
	w1.heed(Route{}, noAns, 0, true)
	// The connection is made again; the new worker's call goes unanswered
	// a moment later (the clock must pass, not to synchronise).
	waitFor(t, func() bool { return time.Since(t0) >= 300*time.Millisecond })
	t1 := time.Now()
	w2.heed(Route{}, noAns, 0, true)
	waitFor(t, func() bool { return ready.Met(ReadyAPI) })
	if since := time.Since(t1); since < minUnreachableFor {
		t.Fatalf("condition api met again %v after the last unanswered call; want at least %v", since, minUnreachableFor)
	}
}
