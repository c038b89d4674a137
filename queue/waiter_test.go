package queue_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// waiterSetup starts JetStream with revoker's streams and a waiter on a
// client of that connection.
func waiterSetup(t *testing.T) (*nats.Conn, jetstream.JetStream, *queue.Client, *queue.Waiter, config.Topology) {
	t.Helper()
	_, nc, js := queuetest.JetStream(t)
	cfg := config.Default()
	topo := cfg.Topology()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, js, topo, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	c := queue.ClientOn(nc, js, topo)
	w, err := queue.NewWaiter(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	return nc, js, c, w, topo
}

// storeRecord stores rec on the subject of (account, key), which need not
// be rec's own: a test may plant one where it does not belong.
func storeRecord(t *testing.T, js jetstream.JetStream, topo config.Topology, account, key string, rec event.Record) {
	t.Helper()
	body, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(context.Background(), queue.OutcomeSubject(topo.OutcomePrefix, account, key), body); err != nil {
		t.Fatal(err)
	}
}

// waiterRecord is the record of p's event, stored (published_at) now:
// after its stream was made, as a reader that does not know when the event
// was stored requires.
func waiterRecord(p queue.Published, outcome event.Outcome) event.Record {
	return event.Record{EventID: p.EventID, AccountID: p.AccountID, KeyID: p.KeyID, Outcome: outcome,
		Stream: p.Stream, Sequence: p.Sequence, Status: 200, PublishedAt: time.Now().UTC().Format(time.RFC3339Nano)}
}

// A thousand waiters share one subscription, and each gets the record of
// its own event.
func TestWaiterThousandWaitersOneSubscription(t *testing.T) {
	nc, js, c, w, topo := waiterSetup(t)
	// The first request makes the connection's shared reply subscription:
	// count from after it.
	if _, _, err := c.Recorded(context.Background(), queue.Published{AccountID: "a", KeyID: "warm", Stream: topo.Stream, Sequence: 1}); err != nil {
		t.Fatal(err)
	}
	base := nc.NumSubscriptions()

	const n = 1000
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pubs := make([]queue.Published, n)
	got := make([]event.Record, n)
	oks := make([]bool, n)
	var wg sync.WaitGroup
	for i := range pubs {
		pubs[i] = queue.Published{EventID: fmt.Sprintf("ev-%d", i), AccountID: "acct",
			KeyID: fmt.Sprintf("k%d", i), Stream: topo.Stream, Sequence: uint64(i + 1)}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			got[i], oks[i], _ = w.Wait(ctx, pubs[i])
		}(i)
	}
	queuetest.Eventually(t, 30*time.Second, "every waiter registered", func() bool { return w.Waiting() == n })
	if now := nc.NumSubscriptions(); now != base+1 {
		t.Fatalf("subscriptions with %d waiters: %d, want %d (one for all)", n, now, base+1)
	}
	for i, p := range pubs {
		rec := waiterRecord(p, event.Revoked)
		rec.CFRay = fmt.Sprintf("ray-%d", i)
		storeRecord(t, js, topo, p.AccountID, p.KeyID, rec)
	}
	wg.Wait()
	for i, p := range pubs {
		if !oks[i] {
			t.Fatalf("waiter %d got no record", i)
		}
		if !p.Answers(got[i]) || got[i].CFRay != fmt.Sprintf("ray-%d", i) {
			t.Fatalf("waiter %d got %+v, want the record of %+v", i, got[i], p)
		}
	}
	if w.Waiting() != 0 {
		t.Fatalf("waiters left registered: %d", w.Waiting())
	}
	w.Close()
	if now := nc.NumSubscriptions(); now != base {
		t.Fatalf("subscriptions after Close: %d, want %d: the waiter held exactly one", now, base)
	}
}

// Records that do not parse, sit on another key's subject, or name
// another event wake no one with a false answer; the true one does.
func TestWaiterIgnoresWhatIsNotItsRecord(t *testing.T) {
	nc, js, _, w, topo := waiterSetup(t)
	p := queue.Published{EventID: "e1", AccountID: "acct", KeyID: "key1", Stream: topo.Stream, Sequence: 7}
	type result struct {
		rec event.Record
		ok  bool
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		rec, ok, _ := w.Wait(ctx, p)
		done <- result{rec, ok}
	}()
	queuetest.Eventually(t, 10*time.Second, "the waiter registered", func() bool { return w.Waiting() == 1 })

	// Not JSON, on the key's own subject.
	if err := nc.Publish(queue.OutcomeSubject(topo.OutcomePrefix, p.AccountID, p.KeyID), []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	// Naming p, but on another key's subject.
	storeRecord(t, js, topo, "acct", "other", waiterRecord(p, event.Revoked))
	// On p's subject, but another stream's event with the same sequence.
	wrong := waiterRecord(p, event.Revoked)
	wrong.Stream = "ELSEWHERE"
	storeRecord(t, js, topo, p.AccountID, p.KeyID, wrong)
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		t.Fatalf("the wait ended on a record that is not p's: %+v", r)
	default:
	}

	storeRecord(t, js, topo, p.AccountID, p.KeyID, waiterRecord(p, event.NotFound))
	r := <-done
	if !r.ok || !p.Answers(r.rec) || r.rec.Outcome != event.NotFound {
		t.Fatalf("got %+v %v, want p's not_found", r.rec, r.ok)
	}
}

// A revoked record beats a not_found of the same event already in the
// trail when the wait starts.
func TestWaiterBelievesRevoked(t *testing.T) {
	_, js, _, w, topo := waiterSetup(t)
	p := queue.Published{EventID: "e2", AccountID: "acct", KeyID: "key2", Stream: topo.Stream, Sequence: 9}
	storeRecord(t, js, topo, p.AccountID, p.KeyID, waiterRecord(p, event.Revoked))
	storeRecord(t, js, topo, p.AccountID, p.KeyID, waiterRecord(p, event.NotFound))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rec, ok, err := w.Wait(ctx, p)
	if err != nil || !ok || rec.Outcome != event.Revoked {
		t.Fatalf("got %+v %v %v, want the revoked record", rec, ok, err)
	}
}

// A wait with no record ends with its context, without error.
func TestWaiterEndsWithContext(t *testing.T) {
	_, _, _, w, topo := waiterSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, ok, err := w.Wait(ctx, queue.Published{AccountID: "acct", KeyID: "none", Stream: topo.Stream, Sequence: 1})
	if ok || err != nil {
		t.Fatalf("got ok %v err %v, want no record and no error", ok, err)
	}
	if w.Waiting() != 0 {
		t.Fatal("the ended wait is still registered")
	}
}

// A waiter nobody waits on holds no subscription (every record of the
// fleet would reach it); a wait subscribes before it reads the trail, and
// hears its record.
func TestWaiterIdleHoldsNoSubscription(t *testing.T) {
	t.Cleanup(queue.SetWaiterLinger(50 * time.Millisecond))
	nc, js, c, w, topo := waiterSetup(t)
	if _, _, err := c.Recorded(context.Background(), queue.Published{AccountID: "a", KeyID: "warm", Stream: topo.Stream, Sequence: 1}); err != nil {
		t.Fatal(err)
	}
	withSub := nc.NumSubscriptions() + 1 // none yet: nobody has waited

	p := queue.Published{EventID: "e1", AccountID: "acct", KeyID: "idle1", Stream: topo.Stream, Sequence: 3}
	done := make(chan bool, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, ok, _ := w.Wait(ctx, p)
		done <- ok
	}()
	queuetest.Eventually(t, 10*time.Second, "the wait subscribed", func() bool {
		return w.Waiting() == 1 && nc.NumSubscriptions() == withSub
	})
	storeRecord(t, js, topo, p.AccountID, p.KeyID, waiterRecord(p, event.Revoked))
	if !<-done {
		t.Fatal("the wait ended without its record")
	}
	queuetest.Eventually(t, 10*time.Second, "idle again, no subscription", func() bool { return nc.NumSubscriptions() == withSub-1 })
}

// publish --wait's watcher believes the trail, not what it hears: a record
// the stream refused is heard but answers nothing, a revoked record in the
// trail beats a not_found heard, and once the connection was made again
// (notices sent meanwhile are lost), a record stored unheard is still
// found by the deadline.
func TestWatcherBelievesTheTrailNotWhatItHears(t *testing.T) {
	nc, js, c, _, topo := waiterSetup(t)
	pub := func(key string, seq uint64) queue.Published {
		return queue.Published{EventID: key, AccountID: "acct", KeyID: key, Stream: topo.Stream, Sequence: seq}
	}
	revoked, refusedOnly, unheard := pub("wkey1", 21), pub("wkey2", 22), pub("wkey3", 23)
	storeRecord(t, js, topo, revoked.AccountID, revoked.KeyID, waiterRecord(revoked, event.Revoked))
	storeRecord(t, js, topo, unheard.AccountID, unheard.KeyID, waiterRecord(unheard, event.NotFound))

	w, err := c.Watch("", "")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for _, p := range []queue.Published{revoked, refusedOnly} {
		// Heard by every subscriber, refused by the stream: a losing
		// replica's write expecting another last sequence.
		body, _ := json.Marshal(waiterRecord(p, event.NotFound))
		m := nats.NewMsg(queue.OutcomeSubject(topo.OutcomePrefix, p.AccountID, p.KeyID))
		m.Data = body
		m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "999999")
		if err := nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := nc.ForceReconnect(); err != nil {
		t.Fatal(err)
	}
	queuetest.Eventually(t, 10*time.Second, "reconnected", func() bool { return nc.Stats().Reconnects > 0 && nc.IsConnected() })

	want := map[uint64]queue.Published{revoked.Sequence: revoked, refusedOnly.Sequence: refusedOnly, unheard.Sequence: unheard}
	got := map[string]event.Outcome{}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.Await(ctx, want, time.Now().Add(time.Second), func(p queue.Published, rec event.Record) { got[p.KeyID] = rec.Outcome }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["wkey1"] != event.Revoked || got["wkey3"] != event.NotFound {
		t.Fatalf("answers %v; want wkey1 revoked (the trail's), wkey3 not_found (stored unheard), nothing for wkey2 (refused)", got)
	}
	if _, left := want[refusedOnly.Sequence]; !left || len(want) != 1 {
		t.Fatalf("left waiting: %v; want only wkey2", want)
	}
}

// NATS away when the waiter is made (here: a silent cut, so the check of
// its subscription gets no answer) does not turn waiting off: once NATS is
// back, a wait subscribes and gets its record.
func TestWaiterMadeWhileNATSIsAwayStillWaits(t *testing.T) {
	srv := queuetest.Server(t)
	bh := queuetest.NewBlackhole(t, srv.Addr().String())
	nc, err := nats.Connect(bh.URL(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	topo := config.Default().Topology()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, js, topo, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	c := queue.ClientOn(nc, js, topo)
	c.Timeout = 300 * time.Millisecond

	bh.Cut()
	w, err := queue.NewWaiter(c)
	if err != nil {
		t.Fatalf("waiter made while NATS does not answer: %v; want one that waits once NATS is back", err)
	}
	defer w.Close()
	bh.Heal()

	c.Timeout = 5 * time.Second
	p := queue.Published{EventID: "away1", AccountID: "acct", KeyID: "awaykey", Stream: topo.Stream, Sequence: 31}
	done := make(chan event.Record, 1)
	go func() {
		if rec, ok, _ := w.Wait(ctx, p); ok {
			done <- rec
		}
		close(done)
	}()
	queuetest.Eventually(t, 10*time.Second, "the wait registered", func() bool { return w.Waiting() == 1 })
	storeRecord(t, js, topo, p.AccountID, p.KeyID, waiterRecord(p, event.Revoked))
	if rec, ok := <-done; !ok || rec.Outcome != event.Revoked {
		t.Fatalf("got %+v (%v), want p's revoked record", rec, ok)
	}
}

// A watcher whose subscription is gone ends its wait with the error at
// once, rather than waiting out the deadline hearing nothing.
func TestWatcherEndsOnAFailedSubscription(t *testing.T) {
	_, _, c, _, topo := waiterSetup(t)
	w, err := c.Watch("", "")
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	want := map[uint64]queue.Published{1: {AccountID: "acct", KeyID: "gone1", Stream: topo.Stream, Sequence: 1}}
	start := time.Now()
	err = w.Await(context.Background(), want, time.Now().Add(10*time.Second), func(queue.Published, event.Record) {})
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("Await on a closed subscription: %v after %s; want its error at once", err, time.Since(start))
	}
}

// Without a reconnect every notice was heard: at the deadline the watcher
// returns, leaving the unanswered events waiting, without reading the
// trail for each (a batch of thousands would overrun --timeout).
func TestWatcherReturnsAtTheDeadline(t *testing.T) {
	_, js, c, _, topo := waiterSetup(t)
	unheard := queue.Published{EventID: "u1", AccountID: "acct", KeyID: "ukey1", Stream: topo.Stream, Sequence: 41}
	storeRecord(t, js, topo, unheard.AccountID, unheard.KeyID, waiterRecord(unheard, event.Revoked))
	w, err := c.Watch("", "")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	want := map[uint64]queue.Published{unheard.Sequence: unheard}
	if err := w.Await(context.Background(), want, time.Now().Add(200*time.Millisecond), func(queue.Published, event.Record) {
		t.Error("answered from the trail with no reconnect")
	}); err != nil {
		t.Fatal(err)
	}
	if len(want) != 1 {
		t.Fatalf("left waiting: %v", want)
	}
}

// A refused record is heard first; the real one is stored later, while the
// watcher waits to read the first one back again. It is answered by the
// deadline, with no reconnect: a new notice is read soon, and what was
// heard is looked up once more at the deadline. (The store is timed into
// the gap between two read-backs of the first notice, 510 and 1022 ms
// after it; the deadline falls inside it too.)
func TestWatcherAnswersARecordStoredAfterARefusedOne(t *testing.T) {
	nc, js, c, _, topo := waiterSetup(t)
	p := queue.Published{EventID: "late1", AccountID: "acct", KeyID: "latekey", Stream: topo.Stream, Sequence: 51}
	w, err := c.Watch("", "")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	body, _ := json.Marshal(waiterRecord(p, event.NotFound))
	m := nats.NewMsg(queue.OutcomeSubject(topo.OutcomePrefix, p.AccountID, p.KeyID))
	m.Data = body
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "999999") // heard, refused
	if err := nc.PublishMsg(m); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	stored := make(chan error, 1)
	real, _ := json.Marshal(waiterRecord(p, event.Revoked))
	time.AfterFunc(600*time.Millisecond, func() {
		_, err := js.Publish(context.Background(), queue.OutcomeSubject(topo.OutcomePrefix, p.AccountID, p.KeyID), real)
		stored <- err
	})
	want := map[uint64]queue.Published{p.Sequence: p}
	var got event.Outcome
	if err := w.Await(context.Background(), want, time.Now().Add(900*time.Millisecond), func(_ queue.Published, rec event.Record) { got = rec.Outcome }); err != nil {
		t.Fatal(err)
	}
	if err := <-stored; err != nil {
		t.Fatal(err)
	}
	if got != event.Revoked {
		t.Fatalf("answer %q; want the revoked record stored after the refused one", got)
	}
}

// A record heard while the trail cannot be read (the outcome stream's
// leader moving, say) is read back once it can, before the deadline:
// the watcher once gave the notice up after two seconds of failed reads,
// and publish --wait then said "no outcome in time" for a stored record.
// Here the client reads a mirror of the outcome stream that is made only
// three seconds into the wait.
func TestWatcherReadsAHeardRecordOnceTheTrailAnswers(t *testing.T) {
	nc, js, _, _, topo := waiterSetup(t)
	late := topo
	late.OutcomeStream = "TRAIL_LATE"
	c := queue.ClientOn(nc, js, late)
	p := queue.Published{EventID: "ev-late", AccountID: "acct", KeyID: "latekey", Stream: topo.Stream, Sequence: 77}
	w, err := c.Watch(p.AccountID, p.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	storeRecord(t, js, topo, p.AccountID, p.KeyID, waiterRecord(p, event.Revoked))
	mirrored := make(chan error, 1)
	time.AfterFunc(3*time.Second, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: late.OutcomeStream, Storage: jetstream.MemoryStorage,
			Mirror: &jetstream.StreamSource{Name: topo.OutcomeStream}})
		mirrored <- err
	})

	want := map[uint64]queue.Published{p.Sequence: p}
	var got *event.Record
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.Await(ctx, want, time.Now().Add(10*time.Second), func(_ queue.Published, rec event.Record) { got = &rec }); err != nil {
		t.Fatal(err)
	}
	if err := <-mirrored; err != nil {
		t.Fatalf("make the mirror: %v", err)
	}
	if got == nil || got.Outcome != event.Revoked {
		t.Fatalf("answer %+v: the revoked record, heard at once and readable from the third second, was not read back within ten", got)
	}
}
