package queue_test

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/worker"
)

// TestConsumerMadeAgainUnnoticedIsNoFirstDelivery: a full lane (not fetching)
// does not notice that its consumer was deleted and made again elsewhere
// (another replica's rebind, within the watch's 1 s tick). The lane keeps
// the old consumer's freshness and delivery counts, so the new consumer's
// redelivery of an event that the lane itself delivered and gave back is
// numbered 1: it must not be taken for the event's first delivery (no
// recall, a blind write-ahead), or its record's attempts miss the earlier
// call.
func TestConsumerMadeAgainUnnoticedIsNoFirstDelivery(t *testing.T) {
	var (
		kCalls   atomic.Int32
		held     atomic.Int32
		releaseK = make(chan struct{})
		releaseH = make(chan struct{})
	)
	s := oneSlotStack(t, func(c *config.Config) {
		c.RetryMaxElapsed = time.Millisecond
	}, func(key string) (int, string, bool) {
		switch key {
		case "kstale":
			if kCalls.Add(1) == 1 {
				held.Add(1)
				<-releaseK
				return 500, `<html>oops</html>`, true
			}
		case "khold":
			held.Add(1)
			<-releaseH
		}
		return 0, "", false
	})
	s.start()
	t.Cleanup(func() {
		select {
		case <-releaseK:
		default:
			close(releaseK)
		}
		select {
		case <-releaseH:
		default:
			close(releaseH)
		}
	})
	subj := s.cfg.LowestPriority()
	s.publish(subj, eventJSON(acct, "kstale"), "id-kstale") // seq 1
	s.waitFor("kstale's call held", func() bool { return held.Load() == 1 })
	s.publish(subj, eventJSON(acct, "khold"), "id-khold") // seq 2, waits for the one permit
	s.waitFor("the lane full", func() bool { return testutil.ToFloat64(s.m.Inflight) == 2 })

	// Another replica (or an operator) deletes the consumer and makes it
	// again, as ensureConsumer does, within a few milliseconds.
	remakeConsumer(t, s, subj)

	// The held call of kstale answers 500; its delivery's budget is
	// spent; it is given back, and the new consumer delivers it again.
	close(releaseK)
	s.waitFor("khold's call held (kstale's delivery gave its permit back)", func() bool { return held.Load() == 2 })
	close(releaseH)
	s.waitFor("kstale recorded", func() bool { return len(s.outcomesOf("kstale")) > 0 })

	calls := s.deletes("kstale")
	var rec event.Record
	for _, o := range s.outcomes() {
		if o.KeyID == "kstale" {
			rec = o
		}
	}
	for _, e := range s.logs.FilterField(zap.String("key", "kstale")).All() {
		t.Logf("log: %s delivery=%v", e.Message, e.ContextMap()["delivery"])
	}
	t.Logf("kstale: %d DELETE calls; record outcome=%s attempts=%d unanswered=%d", calls, rec.Outcome, rec.Attempts, rec.UnansweredCalls)
	if rec.Attempts != calls {
		t.Fatalf("record says attempts=%d, but %d DELETE calls were made for the event", rec.Attempts, calls)
	}
}

// TestConsumerMadeAgainUnnoticedCallsNotAgain: as
// TestConsumerMadeAgainUnnoticedIsNoFirstDelivery, but the held call
// revokes the key and its record is stored; the ack, sent for the lost
// consumer's delivery, does not remove the event, and the new consumer
// delivers it again, numbered 1: no second DELETE for an event already
// recorded revoked (SPEC §4: such a delivery "makes no call").
func TestConsumerMadeAgainUnnoticedCallsNotAgain(t *testing.T) {
	var (
		held     atomic.Int32
		releaseK = make(chan struct{})
		releaseH = make(chan struct{})
	)
	s := oneSlotStack(t, nil, func(key string) (int, string, bool) {
		switch key {
		case "kagain":
			if held.Load() == 0 {
				held.Add(1)
				<-releaseK
			}
		case "khold2":
			held.Add(1)
			<-releaseH
		}
		return 0, "", false
	})
	s.start()
	t.Cleanup(func() {
		for _, c := range []chan struct{}{releaseK, releaseH} {
			select {
			case <-c:
			default:
				close(c)
			}
		}
	})
	subj := s.cfg.LowestPriority()
	s.publish(subj, eventJSON(acct, "kagain"), "id-kagain")
	s.waitFor("kagain's call held", func() bool { return held.Load() == 1 })
	s.publish(subj, eventJSON(acct, "khold2"), "id-khold2")
	s.waitFor("the lane full", func() bool { return testutil.ToFloat64(s.m.Inflight) == 2 })

	remakeConsumer(t, s, subj)
	close(releaseK)
	s.waitFor("kagain recorded", func() bool { return len(s.outcomesOf("kagain")) > 0 })
	s.waitFor("khold2's call held", func() bool { return held.Load() == 2 })
	close(releaseH)
	s.waitFor("work stream empty", func() bool { return s.count(s.cfg.Stream) == 0 })
	t.Logf("kagain outcomes %v, DELETE calls %d", s.outcomesOf("kagain"), s.deletes("kagain"))
	if n := s.deletes("kagain"); n != 1 {
		t.Fatalf("%d DELETE calls for an event whose first call revoked the key and was recorded; want 1", n)
	}
}

// remakeConsumer deletes subj's consumer and makes it again at once, as a
// replica binding it again does.
func remakeConsumer(t *testing.T, s *stack, subj string) {
	t.Helper()
	ctx := context.Background()
	if err := s.js.DeleteConsumer(ctx, s.cfg.Stream, s.cfg.Durable(subj)); err != nil {
		t.Fatal(err)
	}
	st, err := s.js.Stream(ctx, s.cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	want := queue.LaneConsumer(s.cfg.Topology(), subj)
	want.Metadata = map[string]string{queue.MetaFreshFrom: strconv.FormatUint(st.CachedInfo().State.LastSeq+1, 10)}
	if _, err := s.js.CreateConsumer(ctx, s.cfg.Stream, want); err != nil {
		t.Fatal(err)
	}
}

// TestConsumerMadeAgainNumberedAboveCountsEveryCall: replica A's lane is
// full (not fetching; its last delivery numbered 2). Replica B fetches
// event E (consumer sequence 3), writes its call ahead, calls (500) and
// dies holding E. The consumer is deleted and made again; a third
// replica's fetch takes the new consumer's first two deliveries. A's next
// fetch gets E numbered 3, above its last: its record must still count
// B's call (SPEC §4, "The proof", point 2).
func TestConsumerMadeAgainNumberedAboveCountsEveryCall(t *testing.T) {
	s, release := fullLaneStack(t, "ke")
	subj := s.cfg.LowestPriority()
	s.publish(subj, eventJSON(acct, "ke"), "id-ke") // seq 3

	// Replica B: fetches E, writes its call ahead, calls (500), dies.
	got := fetchElsewhere(t, s, subj, 1)
	if len(got) != 1 || got[0].Sequence.Stream != 3 {
		t.Fatalf("B fetched %+v; want E at sequence 3", got)
	}
	callElsewhere(t, s, got[0], "ke")

	remakeConsumer(t, s, subj)
	// A third replica takes the new consumer's first two deliveries.
	for _, md := range fetchElsewhere(t, s, subj, 2) {
		t.Logf("third replica got stream seq %d, consumer seq %d", md.Sequence.Stream, md.Sequence.Consumer)
	}
	release()
	wantEveryCallCounted(t, s, "ke")
}

// TestConsumerResetCountsEveryCall: replica A's lane is full (k1 in its
// call, k2 waiting for it; its last delivery numbered 2). Replica B takes
// e1 and e2 (numbered 3 and 4), stores its calls ahead, calls (500 each)
// and dies holding them. The consumer is reset (`nats consumer reset`):
// the same consumer, made at the same time, its deliveries forgotten and
// numbered from 1 again. A then gets k2, e1 and e2 numbered from 1, each
// delivered once as far as the consumer knows: their records must still
// count B's calls (SPEC §4, "The proof", point 2), and k2, which A held,
// is called for once.
func TestConsumerResetCountsEveryCall(t *testing.T) {
	s, release := fullLaneStack(t, "e1", "e2")
	subj := s.cfg.LowestPriority()
	s.publish(subj, eventJSON(acct, "e1"), "id-e1") // seq 3
	s.publish(subj, eventJSON(acct, "e2"), "id-e2") // seq 4
	got := fetchElsewhere(t, s, subj, 2)
	if len(got) != 2 {
		t.Fatalf("B fetched %d deliveries; want e1 and e2", len(got))
	}
	for i, md := range got {
		callElsewhere(t, s, md, []string{"e1", "e2"}[i])
	}
	if _, err := s.js.ResetConsumer(context.Background(), s.cfg.Stream, s.cfg.Durable(subj)); err != nil {
		t.Fatal(err)
	}
	release()
	wantEveryCallCounted(t, s, "e1")
	wantEveryCallCounted(t, s, "e2")
	s.waitFor("the work stream empty", func() bool { return s.count(s.cfg.Stream) == 0 })
	if n := s.deletes("k2"); n != 1 {
		t.Fatalf("k2, held by this replica through the reset: %d DELETE calls, want 1", n)
	}
}

// answer500 is the body of a 500 the stand-in answers a first call with.
const answer500 = `{"success":false,"errors":[{"code":10000,"message":"oops"}],"messages":[],"result":null}`

// beforeCreate is a JetStream whose first CreateConsumer of durable runs
// before first: what other replicas do while this one is between reading
// the stream and creating the consumer.
type beforeCreate struct {
	jetstream.JetStream
	durable string
	once    sync.Once
	before  func()
}

func (j *beforeCreate) CreateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	if cfg.Durable == j.durable {
		j.once.Do(j.before)
	}
	return j.JetStream.CreateConsumer(ctx, stream, cfg)
}

// TestConsumerMadeAndDeletedWhileOneIsMade: replica A finds its consumer
// deleted and reads the stream's last sequence (1) to make it again.
// Before its create reaches the server, event ke is stored (sequence 2),
// replica B makes the consumer, is handed ke, stores its call ahead,
// calls (500) and dies holding it, and B's consumer is deleted. A's
// consumer then delivers ke numbered 1: its record must still count B's
// call (SPEC §4, "The proof", point 2).
func TestConsumerMadeAndDeletedWhileOneIsMade(t *testing.T) {
	var eCalls atomic.Int32
	s := oneSlotStack(t, nil, func(key string) (int, string, bool) {
		if key == "ke" && eCalls.Add(1) == 1 {
			return 500, answer500, true
		}
		return 0, "", false
	})
	s.ensure()
	ctx := context.Background()
	subj := s.cfg.LowestPriority()
	durable := s.cfg.Durable(subj)
	s.publish(subj, eventJSON(acct, "kold"), "id-kold") // sequence 1
	if err := s.js.DeleteConsumer(ctx, s.cfg.Stream, durable); err != nil {
		t.Fatal(err)
	}
	js := &beforeCreate{JetStream: s.js, durable: durable, before: func() {
		s.publish(subj, eventJSON(acct, "ke"), "id-ke") // sequence 2
		if err := queue.Ensure(ctx, s.js, s.cfg.Topology(), zap.NewNop()); err != nil {
			t.Fatal(err)
		}
		var got []*jetstream.MsgMetadata
		for len(got) == 0 || got[len(got)-1].Sequence.Stream != 2 {
			got = append(got, fetchElsewhere(t, s, subj, 1)...)
		}
		callElsewhere(t, s, got[len(got)-1], "ke")
		if err := s.js.DeleteConsumer(ctx, s.cfg.Stream, durable); err != nil {
			t.Fatal(err)
		}
	}}
	if err := queue.Ensure(ctx, js, s.cfg.Topology(), zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	s.start()
	wantEveryCallCounted(t, s, "ke")
}

// fullLaneStack is a one-slot stack whose lane is full: k1 (sequence 1)
// in a call held until release, k2 (sequence 2) waiting for the slot. The
// first DELETE of each of failFirst is answered 500.
func fullLaneStack(t *testing.T, failFirst ...string) (s *stack, release func()) {
	t.Helper()
	var held atomic.Int32
	releaseK := make(chan struct{})
	release = sync.OnceFunc(func() { close(releaseK) })
	calls := map[string]*atomic.Int32{}
	for _, k := range failFirst {
		calls[k] = &atomic.Int32{}
	}
	s = oneSlotStack(t, nil, func(key string) (int, string, bool) {
		if key == "k1" {
			held.Add(1)
			<-releaseK
		}
		if n := calls[key]; n != nil && n.Add(1) == 1 {
			return 500, answer500, true
		}
		return 0, "", false
	})
	s.start()
	t.Cleanup(release)
	subj := s.cfg.LowestPriority()
	s.publish(subj, eventJSON(acct, "k1"), "id-k1") // seq 1, call held
	s.waitFor("k1's call held", func() bool { return held.Load() == 1 })
	s.publish(subj, eventJSON(acct, "k2"), "id-k2") // seq 2, waits for the one permit
	s.waitFor("the lane full", func() bool { return testutil.ToFloat64(s.m.Inflight) == 2 })
	return s, release
}

// TestConsumerMadeAgainFromASavedConfiguration: replica B takes event ke,
// stores its call ahead, calls (500) and dies holding it. An operator
// deletes the consumer and makes it again from its saved configuration
// (`nats consumer add --config`, a tool that imported it): its metadata,
// the sequence revoker noted as fresh from, comes back as it was. The
// worker then gets ke numbered 1; its record must count B's call too
// (SPEC §5a, §4 "The proof", point 2).
func TestConsumerMadeAgainFromASavedConfiguration(t *testing.T) {
	var eCalls atomic.Int32
	s := oneSlotStack(t, nil, func(key string) (int, string, bool) {
		if key == "ke" && eCalls.Add(1) == 1 {
			return 500, `{"success":false,"errors":[{"code":10000,"message":"oops"}],"messages":[],"result":null}`, true
		}
		return 0, "", false
	})
	s.ensure()
	ctx := context.Background()
	subj := s.cfg.LowestPriority()
	s.publish(subj, eventJSON(acct, "ke"), "id-ke")

	cons, err := s.js.Consumer(ctx, s.cfg.Stream, s.cfg.Durable(subj))
	if err != nil {
		t.Fatal(err)
	}
	saved := cons.CachedInfo().Config // as `nats consumer info -j` shows it
	got := fetchElsewhere(t, s, subj, 1)
	if len(got) != 1 {
		t.Fatal("B fetched nothing")
	}
	callElsewhere(t, s, got[0], "ke")

	if err := s.js.DeleteConsumer(ctx, s.cfg.Stream, s.cfg.Durable(subj)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.js.CreateConsumer(ctx, s.cfg.Stream, saved); err != nil {
		t.Fatal(err)
	}
	s.start()
	wantEveryCallCounted(t, s, "ke")
}

// TestConsumerRevokerMadeStartsFresh: the consumer revoker makes notes the
// sequence it starts fresh from and its own creation time, so an event
// stored right after it was made (well within a minute) is a first
// delivery, with no read of what is stored.
func TestConsumerRevokerMadeStartsFresh(t *testing.T) {
	s := newStack(t, nil)
	s.ensure()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	subj := s.cfg.LowestPriority()
	cons, err := s.js.Consumer(ctx, s.cfg.Stream, s.cfg.Durable(subj))
	if err != nil {
		t.Fatal(err)
	}
	if md := cons.CachedInfo().Config.Metadata; md[queue.MetaFreshFrom] == "" || md[queue.MetaMadeAt] == "" {
		t.Fatalf("consumer metadata %v: want %s and %s", md, queue.MetaFreshFrom, queue.MetaMadeAt)
	}
	s.publish(subj, eventJSON(acct, "kfresh"), "id-kfresh")
	if _, first := firstDelivery(t, ctx, queue.NewLane(cons, subj, 0, 2, 1, 200*time.Millisecond)); !first {
		t.Fatal("an event stored just after revoker made its consumer is not taken for a first delivery")
	}
}

// callElsewhere plays replica B on the event of meta (key key): its call
// stored ahead in the ledger, made (the stand-in decides), answered 500,
// and the replica gone with the event in hand.
func callElsewhere(t *testing.T, s *stack, meta *jetstream.MsgMetadata, key string) {
	t.Helper()
	ctx := context.Background()
	lb, err := queue.BindLedger(ctx, s.js, s.cfg.Topology(), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	ref := worker.Ref{Stream: s.cfg.Stream, Seq: meta.Sequence.Stream, Account: acct, Key: key, Stored: meta.Timestamp}
	if _, err := lb.Update(ctx, ref, func(e *worker.Entry) error { e.Calls = 1; return nil }); err != nil {
		t.Fatal(err)
	}
	api, err := cloudflare.New(cloudflare.Config{BaseURL: s.cfg.BaseURL, Credential: cloudflare.Token(s.cfg.APIToken), Timeout: 5 * time.Second, UserAgent: "replica-b"})
	if err != nil {
		t.Fatal(err)
	}
	_, _ = api.DeleteSigningKey(ctx, acct, key)
	if _, err := lb.Update(ctx, ref, func(e *worker.Entry) error {
		e.Answered = 1
		e.Last = &worker.Call{Status: 500, At: time.Now()}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// wantEveryCallCounted waits for key's record and fails t unless its
// attempts are the DELETEs the stand-in saw for key.
func wantEveryCallCounted(t *testing.T, s *stack, key string) {
	t.Helper()
	s.waitFor(key+" recorded", func() bool { return len(s.outcomesOf(key)) > 0 })
	var rec event.Record
	for _, o := range s.outcomes() {
		if o.KeyID == key {
			rec = o
		}
	}
	calls := s.deletes(key)
	t.Logf("%s: %d DELETE calls; record outcome=%s attempts=%d unanswered=%d", key, calls, rec.Outcome, rec.Attempts, rec.UnansweredCalls)
	if rec.Attempts != calls {
		t.Fatalf("record says attempts=%d, but %d DELETE calls were made for the event", rec.Attempts, calls)
	}
}

// fetchElsewhere fetches up to n deliveries of subj's consumer as another
// replica would, and keeps them in hand (never settled).
func fetchElsewhere(t *testing.T, s *stack, subj string, n int) []*jetstream.MsgMetadata {
	t.Helper()
	cons, err := s.js.Consumer(context.Background(), s.cfg.Stream, s.cfg.Durable(subj))
	if err != nil {
		t.Fatal(err)
	}
	b, err := cons.Fetch(n, jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var got []*jetstream.MsgMetadata
	for m := range b.Messages() {
		if md, err := m.Metadata(); err == nil {
			got = append(got, md)
		}
	}
	return got
}

// oneSlotStack is a stack of one call slot (its lane holds two events)
// and calls that may take a minute, with more settings from more (if
// set); the stand-in answers a DELETE of key as onDelete says, when it
// says it answers, else as usual.
func oneSlotStack(t *testing.T, more func(*config.Config), onDelete func(key string) (status int, body string, answers bool)) *stack {
	return newStack(t, func(c *config.Config) {
		c.Concurrency = 1
		c.HTTPTimeout = time.Minute
		if more != nil {
			more(c)
		}
	}, cloudflaretest.WithResponder(func(r cloudflaretest.Request) (int, http.Header, string, bool) {
		if r.Method != http.MethodDelete {
			return 0, nil, "", false
		}
		status, body, answers := onDelete(r.KeyID)
		return status, nil, body, answers
	}))
}
