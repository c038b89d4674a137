package ingress

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestRequestStoredWhenAnotherEventHoldsItsID: a publisher stored a decoy
// for another key under the id a caller's idempotency key makes. The
// caller's request is still stored, for its own key, under an id of its
// own, and answered as usual (a 409 would be dropped by a paging tool,
// and the incident's key would stay alive); its repeat answers the same
// event, and stores nothing more.
func TestRequestStoredWhenAnotherEventHoldsItsID(t *testing.T) {
	h := newHarness(t)
	const id = "ingress:soar:INC-2"
	decoy := nats.NewMsg(h.topo.Subjects[1])
	decoy.Data = []byte(evBody(tAccount, "decoy"))
	decoy.Header.Set(jetstream.MsgIDHeader, id)
	if _, err := h.js.PublishMsg(context.Background(), decoy); err != nil {
		t.Fatal(err)
	}

	post := func() resp {
		return h.do(h.post(evBody(tAccount, "incident", `"urgent":true`), hdrs(bearer(tToken), []string{HeaderIdempotencyKey, "INC-2"})...))
	}
	r := post()
	r.want(t, http.StatusAccepted)
	q := r.queued(t)
	if q.EventID != id || q.KeyID != "incident" || q.Subject != h.topo.Subjects[0] || q.Sequence != 2 {
		t.Fatalf("answer %+v, want the request's id %s, its key on %s, at sequence 2", q, id, h.topo.Subjects[0])
	}
	st, err := h.js.Stream(context.Background(), h.topo.Stream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetMsg(context.Background(), q.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	stored := m.Header.Get(jetstream.MsgIDHeader)
	if !strings.HasPrefix(stored, id+":") || len(stored) < len(id)+20 || !bytes.Contains(m.Data, []byte(`"incident"`)) {
		t.Fatalf("stored under %q with body %s, want the incident's event under %s and a colon and a suffix nobody could guess", stored, m.Data, id)
	}
	if again := post(); again.StatusCode != http.StatusAccepted || again.queued(t).Sequence != q.Sequence {
		t.Fatalf("repeat answered %d %s, want 202 for sequence %d", again.StatusCode, again.body, q.Sequence)
	}
	h.do(h.get(r.Header.Get("Location"), bearer(tToken)...)).want(t, http.StatusAccepted)
	if n := h.msgs(); n != 2 {
		t.Fatalf("the work stream holds %d events, want 2: the decoy and the request, once", n)
	}
}

// TestLostStoreAnswerIsNeitherNotStoredNorStoredTwice: the work stream
// stores the event, and its answer is lost on the way back (the connection
// drops). Where NATS is back within the request's store time, the event is
// published again under its id, the stream drops the copy as a duplicate,
// and the request is answered for the one event. Where it is not, the
// ingress does not say nothing was stored (SPEC §11): it answers
// store-unknown, a lookup meanwhile is "storing", never a 404, and the
// repeat the answer asks for finds the event stored once.
func TestLostStoreAnswerIsNeitherNotStoredNorStoredTwice(t *testing.T) {
	t.Run("back within the request", func(t *testing.T) {
		h, p, _, post := lostAnswer(t)
		r := post()
		r.want(t, http.StatusAccepted)
		if !p.Ate.Load() {
			t.Fatal("the proxy never dropped the stream's answer")
		}
		if q := r.queued(t); q.Sequence != 1 || h.msgs() != 1 {
			t.Fatalf("answered %+v with %d events stored, want the one event at sequence 1", q, h.msgs())
		}
	})
	t.Run("away for the whole request", func(t *testing.T) {
		defer func(d time.Duration) { storeTimeout = d }(storeTimeout)
		storeTimeout = 4 * time.Second
		h, p, nc, post := lostAnswer(t)
		p.Away.Store(true)
		post().want(t, http.StatusGatewayTimeout, KindStoreUnknown)
		if !p.Ate.Load() || h.msgs() != 1 {
			t.Fatalf("the proxy dropped the answer: %v; the work stream holds %d events, want the one whose answer was lost", p.Ate.Load(), h.msgs())
		}
		p.Away.Store(false)
		queuetest.Eventually(t, 10*time.Second, "the ingress's connection back", nc.IsConnected)
		h.do(h.get("/v1/revocations/ingress:soar:lost-ack", bearer(tToken)...)).want(t, http.StatusAccepted)
		// Its claim could not be marked while NATS was away: a repeat is
		// told 409 until the first request's store time is over, then
		// takes the claim over.
		var again resp
		queuetest.Eventually(t, 10*time.Second, "the repeat taking the claim over", func() bool {
			again = post()
			return again.StatusCode != http.StatusConflict
		})
		again.want(t, http.StatusAccepted)
		if q := again.queued(t); q.Sequence != 1 || h.msgs() != 1 {
			t.Fatalf("the repeat answered %+v with %d events stored, want the one event at sequence 1", q, h.msgs())
		}
	})
}

// lostAnswer is an ingress whose connection to NATS runs through an
// queuetest.AnswerEater, its client as tweak leaves it, and its POST of one event
// under one idempotency key.
func lostAnswer(t *testing.T, tweak ...func(*queue.Client)) (*harness, *queuetest.AnswerEater, *nats.Conn, func() resp) {
	t.Helper()
	return lostAnswerWith(t, nil, tweak...)
}

// lostAnswerWith is lostAnswer whose proxy loses the publish itself, after
// calling lose, where that is not nil.
func lostAnswerWith(t *testing.T, lose func(*harness), tweak ...func(*queue.Client)) (*harness, *queuetest.AnswerEater, *nats.Conn, func() resp) {
	t.Helper()
	h := newHarness(t)
	return lostAnswerOn(t, h, []byte(h.topo.Subjects[1]+" _INBOX"), func() bool {
		st, err := h.js.Stream(context.Background(), h.topo.Stream)
		return err == nil && st.CachedInfo().State.Msgs == 1
	}, lose, tweak...)
}

// lostAnswerOn is lostAnswerWith on h, its proxy eating the answer to the
// first publish holding pattern once stored says it is stored.
func lostAnswerOn(t *testing.T, h *harness, pattern []byte, stored func() bool, lose func(*harness), tweak ...func(*queue.Client)) (*harness, *queuetest.AnswerEater, *nats.Conn, func() resp) {
	t.Helper()
	p := &queuetest.AnswerEater{Target: h.ns.Addr().String(), Publish: pattern, Stored: stored}
	if lose != nil {
		p.Lose = func() { lose(h) }
	}
	addr := p.Listen(t)
	nc, js := queuetest.ConnectURL(t, "nats://"+addr)
	client := queue.ClientOn(nc, js, h.topo)
	client.Timeout = time.Second
	for _, f := range tweak {
		f(client)
	}
	s, err := Start(context.Background(), js, Config{
		Addr: "127.0.0.1:0", Callers: tCallers(), Client: client, Subjects: h.topo.Subjects,
		Replicas: 1, Create: true, Log: zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	h.base = "http://" + s.Addr()
	return h, p, nc, func() resp {
		return h.do(h.post(evBody(tAccount, "ackkey"), hdrs(bearer(tToken), []string{HeaderIdempotencyKey, "lost-ack"})...))
	}
}

// TestLostStoreAnswerOutlivesTheDuplicateWindow: a request's store went
// unanswered longer ago than the work stream remembers its ids, and the
// worker has since recorded the event. A lookup answers that record, and
// a repeat is answered for that event without storing it again: the
// trail shows it stored.
func TestLostStoreAnswerOutlivesTheDuplicateWindow(t *testing.T) {
	h := newHarness(t)
	h.startWorker()
	const id = "ingress:soar:old"
	body := evBody(tAccount, "oldkey")
	m := nats.NewMsg(h.topo.Subjects[1])
	m.Data = []byte(body)
	m.Header.Set(jetstream.MsgIDHeader, id)
	if _, err := h.js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	kv, err := h.s.bucket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// First tried just past the window in which a repeat may publish it
	// again, and stored then (as far as the record's time can tell).
	long := time.Now().Add(-(queue.DuplicateWindow - queue.RepublishMargin) - 10*time.Second)
	claim := entry{Caller: "soar", BodySHA256: bodyDigest([]byte(body)), State: stateStoring, EventID: id,
		Subject: h.topo.Subjects[1], AccountID: tAccount, KeyID: "oldkey", ClaimedAt: long, Tried: long, Until: long, Lost: true}
	v, _ := json.Marshal(claim)
	if _, err := kv.Create(ctx, entryKey(id), v); err != nil {
		t.Fatal(err)
	}
	var got resp
	queuetest.Eventually(t, 10*time.Second, "the lookup answering the event's record", func() bool {
		got = h.do(h.get("/v1/revocations/"+id, bearer(tToken)...))
		return got.StatusCode == http.StatusOK
	})
	if rec := got.record(t); rec.EventID != id || rec.Sequence != 1 {
		t.Fatalf("lookup answered %+v, want the record of %s at sequence 1", rec, id)
	}
	again := h.do(h.post(body, hdrs(bearer(tToken), []string{HeaderIdempotencyKey, "old"})...))
	if again.StatusCode != http.StatusOK || again.record(t).Sequence != 1 {
		t.Fatalf("repeat answered %d %s, want the record of the event at sequence 1", again.StatusCode, again.body)
	}
	st, err := h.js.Stream(ctx, h.topo.Stream)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := st.Info(ctx); err != nil || info.State.LastSeq != 1 {
		t.Fatalf("the work stream's last sequence %d (%v), want 1: the event stored again", info.State.LastSeq, err)
	}
}

// TestLostStoreAnswerUncheckableDuplicate: the repeat of a request whose
// store went unanswered finds its id a duplicate it cannot check (the
// event done, no outcome records to show it): it answers store-unknown
// and keeps the claim, never "nothing was stored", and a lookup is not a
// 404.
func TestLostStoreAnswerUncheckableDuplicate(t *testing.T) {
	defer func(d time.Duration) { storeTimeout = d }(storeTimeout)
	storeTimeout = 4 * time.Second
	h, p, nc, post := lostAnswer(t, func(c *queue.Client) { c.OutcomePrefix = "" })
	p.Away.Store(true)
	post().want(t, http.StatusGatewayTimeout, KindStoreUnknown)
	p.Away.Store(false)
	queuetest.Eventually(t, 10*time.Second, "the ingress's connection back", nc.IsConnected)
	st, err := h.js.Stream(context.Background(), h.topo.Stream)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteMsg(context.Background(), 1); err != nil { // done, as a worker acks it
		t.Fatal(err)
	}
	var again resp
	queuetest.Eventually(t, 10*time.Second, "the repeat taking the claim over", func() bool {
		again = post()
		return again.StatusCode != http.StatusConflict
	})
	again.want(t, http.StatusGatewayTimeout, KindStoreUnknown)
	h.do(h.get("/v1/revocations/ingress:soar:lost-ack", bearer(tToken)...)).want(t, http.StatusAccepted)
}

// TestLostPublishThenAnotherEventTakesItsID: the first publish never
// reaches the server, and meanwhile a decoy for another key is stored under
// the request's id. The publish made again finds the id taken, and stores
// the request under an id of its own, as a first publish would: never a
// 409, which a paging tool drops.
func TestLostPublishThenAnotherEventTakesItsID(t *testing.T) {
	h, p, _, post := lostAnswerWith(t, func(h *harness) {
		decoy := nats.NewMsg(h.topo.Subjects[1])
		decoy.Data = []byte(evBody(tAccount, "decoy"))
		decoy.Header.Set(jetstream.MsgIDHeader, "ingress:soar:lost-ack")
		if _, err := h.js.PublishMsg(context.Background(), decoy); err != nil {
			h.t.Error(err)
		}
	})
	r := post()
	r.want(t, http.StatusAccepted)
	if q := r.queued(t); !p.Ate.Load() || q.Sequence != 2 || h.msgs() != 2 {
		t.Fatalf("answered %+v (publish lost: %v), %d events stored; want the request stored at sequence 2 beside the decoy", q, p.Ate.Load(), h.msgs())
	}
}

// TestLostStoreAnswerIgnoresAnOlderEventsRecord: an idempotency key used
// again after the bucket forgot it is a new event, even where the trail
// holds a record of the old one under the same id and key. A request of
// it whose store went unanswered is neither looked up as that record nor,
// when repeated, answered with it: it is stored.
func TestLostStoreAnswerIgnoresAnOlderEventsRecord(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	const id, key = "ingress:soar:INC-7", "reused"
	week := time.Now().UTC().Add(-7 * 24 * time.Hour)
	old := queue.OutcomeMsg(h.topo.OutcomePrefix, event.Record{EventID: id, AccountID: tAccount, KeyID: key,
		Outcome: event.DeadLettered, Reason: event.APIRejected, Status: 403, Attempts: 1, Subject: h.topo.Subjects[1],
		Sequence: 1, Stream: h.topo.Stream, PublishedAt: week.Format(time.RFC3339Nano), CompletedAt: week.Add(time.Minute).Format(time.RFC3339Nano)})
	if _, err := h.js.PublishMsg(ctx, old); err != nil {
		t.Fatal(err)
	}
	kv, err := h.s.bucket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tried := time.Now().Add(-(queue.DuplicateWindow - queue.RepublishMargin) - 10*time.Second)
	claim := entry{Caller: "soar", BodySHA256: bodyDigest([]byte(evBody(tAccount, key))), State: stateStoring, EventID: id,
		Subject: h.topo.Subjects[1], AccountID: tAccount, KeyID: key, ClaimedAt: tried, Tried: tried, Until: tried.Add(storeTimeout), Lost: true}
	v, _ := json.Marshal(claim)
	if _, err := kv.Create(ctx, entryKey(id), v); err != nil {
		t.Fatal(err)
	}
	h.do(h.get("/v1/revocations/"+id, bearer(tToken)...)).want(t, http.StatusAccepted)
	r := h.do(h.post(evBody(tAccount, key), hdrs(bearer(tToken), []string{HeaderIdempotencyKey, "INC-7"})...))
	r.want(t, http.StatusAccepted)
	if q := r.queued(t); q.Sequence != 1 || h.msgs() != 1 {
		t.Fatalf("repeat answered %+v with %d events stored, want the new event stored", q, h.msgs())
	}
}

// refuseOnceStored makes the work stream refuse the normal lane's subject
// from the moment p's event is stored: a try made again is refused. The
// caller gives the subject back.
func refuseOnceStored(h *harness, p *queuetest.AnswerEater) {
	stored, once := p.Stored, sync.Once{}
	p.Stored = func() bool {
		if !stored() {
			return false
		}
		once.Do(func() { setSubjects(h.t, h, h.topo.Subjects[:1]) })
		return true
	}
}

// setSubjects gives the work stream these subjects.
func setSubjects(t testing.TB, h *harness, subjects []string) {
	setStreamSubjects(t, h.js, h.topo.Stream, subjects)
}

// TestLostAnswerThenRefusedStaysUnknown: the first publish is stored and
// its answer lost; the publish made again is refused (for a moment no
// stream takes the subject). A refusal then proves nothing of the first:
// the answer is store-unknown and the claim is kept, never "not stored"
// and a lookup that is a 404.
func TestLostAnswerThenRefusedStaysUnknown(t *testing.T) {
	h, p, nc, post := lostAnswer(t)
	refuseOnceStored(h, p)
	r := post()
	setSubjects(t, h, h.topo.Subjects)
	r.want(t, http.StatusGatewayTimeout, KindStoreUnknown)
	if !p.Ate.Load() || h.msgs() != 1 {
		t.Fatalf("answer lost: %v; %d events stored, want the first publish's", p.Ate.Load(), h.msgs())
	}
	queuetest.Eventually(t, 10*time.Second, "the ingress's connection back", nc.IsConnected)
	h.do(h.get("/v1/revocations/ingress:soar:lost-ack", bearer(tToken)...)).want(t, http.StatusAccepted)
}

// lostClaim writes the claim a request leaves whose store went
// unanswered, first tried at tried, its last request over at until, and
// publishes the event under its id (as that store did) unless told not to.
func lostClaim(t *testing.T, h *harness, id, key string, tried, until time.Time, publish bool) {
	t.Helper()
	ctx := context.Background()
	body := evBody(tAccount, key)
	if publish {
		m := nats.NewMsg(h.topo.Subjects[1])
		m.Data = []byte(body)
		m.Header.Set(jetstream.MsgIDHeader, id)
		if _, err := h.js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	kv, err := h.s.bucket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	claim := entry{Caller: "soar", BodySHA256: bodyDigest([]byte(body)), State: stateStoring, EventID: id,
		Subject: h.topo.Subjects[1], AccountID: tAccount, KeyID: key, ClaimedAt: tried, Tried: tried, Until: until, Lost: true}
	v, _ := json.Marshal(claim)
	if _, err := kv.Create(ctx, entryKey(id), v); err != nil {
		t.Fatal(err)
	}
}

// TestLostStoreFoundAfterATakeoverStoredIt: the first try of an event went
// unanswered long ago; a request that took its claim over later stored it
// (its answer lost too), and the worker recorded it. A lookup finds that
// record: the range of the trail looked at runs to the last request's end,
// not the first try's.
func TestLostStoreFoundAfterATakeoverStoredIt(t *testing.T) {
	h := newHarness(t)
	h.startWorker()
	const id = "ingress:soar:late"
	lostClaim(t, h, id, "latekey", time.Now().Add(-10*time.Minute), time.Now().Add(-5*time.Second), true)
	queuetest.Eventually(t, 10*time.Second, "the lookup answering the event's record", func() bool {
		return h.do(h.get("/v1/revocations/"+id, bearer(tToken)...)).StatusCode == http.StatusOK
	})
}

// TestLostTakeoverAnswerIsUnknown: a repeat takes over the claim of a
// request whose store went unanswered, and the bucket's answer to the
// takeover is lost. The event may be stored (it is): the answer is
// store-unknown, not "the event was not stored".
func TestLostTakeoverAnswerIsUnknown(t *testing.T) {
	defer func(d time.Duration) { storeTimeout = d }(storeTimeout)
	storeTimeout = 3 * time.Second
	h := newHarness(t)
	const id = "ingress:soar:lost-ack"
	lostClaim(t, h, id, "ackkey", time.Now().Add(-10*time.Second), time.Now().Add(-5*time.Second), true)
	kv, err := h.s.bucket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	first, err := kv.Get(context.Background(), entryKey(id))
	if err != nil {
		t.Fatal(err)
	}
	// The takeover's write, not the create that finds the claim there.
	update := fmt.Sprintf("%s: %d\r\n", jetstream.ExpectedLastSubjSeqHeader, first.Revision())
	_, p, _, post := lostAnswerOn(t, h, []byte(update), func() bool {
		e, err := kv.Get(context.Background(), entryKey(id))
		return err == nil && e.Revision() > first.Revision()
	}, nil)
	post().want(t, http.StatusGatewayTimeout, KindStoreUnknown)
	if !p.Ate.Load() || h.msgs() != 1 {
		t.Fatalf("takeover's answer lost: %v; %d events stored, want the first request's", p.Ate.Load(), h.msgs())
	}
}

// TestClaimFromAClockAheadHoldsNoLonger: a replica whose clock is an hour
// ahead claimed an id and died while storing. What the claim says of its
// own times is bounded by when the server stored it: a repeat takes it
// over once a store time has passed, not in an hour.
func TestClaimFromAClockAheadHoldsNoLonger(t *testing.T) {
	defer func(d time.Duration) { storeTimeout = d }(storeTimeout)
	storeTimeout = time.Second
	h := newHarness(t)
	ctx := context.Background()
	const id = "ingress:soar:ahead"
	body := evBody(tAccount, "aheadkey")
	kv, err := h.s.bucket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ahead := time.Now().Add(time.Hour)
	claim := entry{Caller: "soar", BodySHA256: bodyDigest([]byte(body)), State: stateStoring, EventID: id,
		Subject: h.topo.Subjects[1], AccountID: tAccount, KeyID: "aheadkey", ClaimedAt: ahead, Tried: ahead, Until: ahead.Add(15 * time.Second)}
	v, _ := json.Marshal(claim)
	if _, err := kv.Create(ctx, entryKey(id), v); err != nil {
		t.Fatal(err)
	}
	var r resp
	queuetest.Eventually(t, 10*time.Second, "the repeat taking the claim over", func() bool {
		r = h.do(h.post(body, hdrs(bearer(tToken), []string{HeaderIdempotencyKey, "ahead"})...))
		return r.StatusCode != http.StatusConflict
	})
	r.want(t, http.StatusAccepted)
	if h.msgs() != 1 {
		t.Fatalf("%d events stored, want 1", h.msgs())
	}
}

// TestLostClaimFromASkewedClock: a replica whose clock is half an hour
// off stored an event, its answer lost, and marked its claim so; the
// worker recorded the event. The claim's times are that replica's clock's,
// the record's the server's: a lookup still finds the record, and a repeat
// is answered with it rather than publishing again.
func TestLostClaimFromASkewedClock(t *testing.T) {
	for _, skew := range []time.Duration{30 * time.Minute, -30 * time.Minute} {
		t.Run(skew.String(), func(t *testing.T) {
			h := newHarness(t)
			h.startWorker()
			const id = "ingress:soar:skewed"
			at := time.Now().Add(skew)
			lostClaim(t, h, id, "skewkey", at, at, true)
			queuetest.Eventually(t, 10*time.Second, "the lookup answering the event's record", func() bool {
				return h.do(h.get("/v1/revocations/"+id, bearer(tToken)...)).StatusCode == http.StatusOK
			})
			r := h.do(h.post(evBody(tAccount, "skewkey"), hdrs(bearer(tToken), []string{HeaderIdempotencyKey, "skewed"})...))
			if r.StatusCode != http.StatusOK || r.record(t).Sequence != 1 {
				t.Fatalf("repeat answered %d %s, want the event's record at sequence 1", r.StatusCode, r.body)
			}
		})
	}
}

// TestRepeatRightAfterStoreUnknown: the first request answered
// store-unknown (its store unanswered, a try made again refused) and
// marked its claim so. A repeat sent at once is not told 409: nobody is
// storing the event any more, and a paging tool drops a 409.
func TestRepeatRightAfterStoreUnknown(t *testing.T) {
	h, p, nc, post := lostAnswer(t)
	refuseOnceStored(h, p)
	post().want(t, http.StatusGatewayTimeout, KindStoreUnknown)
	setSubjects(t, h, h.topo.Subjects)
	queuetest.Eventually(t, 10*time.Second, "the ingress's connection back", nc.IsConnected)
	again := post()
	again.want(t, http.StatusAccepted)
	if q := again.queued(t); q.Sequence != 1 || h.msgs() != 1 {
		t.Fatalf("repeat answered %+v with %d events stored, want the one event at sequence 1", q, h.msgs())
	}
}

// TestTakeoverKeepsTheFirstsSubject: a replica with another set of
// subjects (a rolling change of REVOKER_SUBJECTS) takes over the claim of
// a request whose store went unanswered. It publishes on the subject the
// first request chose, where the stream drops the copy, not on its own
// lowest, where it would be a second event.
func TestTakeoverKeepsTheFirstsSubject(t *testing.T) {
	h := newHarness(t)
	subjects := append(append([]string{}, h.topo.Subjects...), "revoke.low")
	setSubjects(t, h, subjects)
	const id = "ingress:soar:subj"
	lostClaim(t, h, id, "subjkey", time.Now().Add(-10*time.Second), time.Now().Add(-5*time.Second), true)
	s, err := Start(context.Background(), h.js, Config{Addr: "127.0.0.1:0", Callers: tCallers(), Client: h.client,
		Subjects: subjects, Replicas: 1, Create: true, Log: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	h.base = "http://" + s.Addr()
	r := h.do(h.post(evBody(tAccount, "subjkey"), hdrs(bearer(tToken), []string{HeaderIdempotencyKey, "subj"})...))
	r.want(t, http.StatusAccepted)
	if q := r.queued(t); q.Sequence != 1 || q.Subject != h.topo.Subjects[1] || h.msgs() != 1 {
		t.Fatalf("repeat answered %+v with %d events stored, want the one event at sequence 1 on %s", q, h.msgs(), h.topo.Subjects[1])
	}
}

// setStreamSubjects gives stream these subjects.
func setStreamSubjects(t testing.TB, js jetstream.JetStream, stream string, subjects []string) {
	ctx := context.Background()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Error(err)
		return
	}
	cfg := st.CachedInfo().Config
	cfg.Subjects = subjects
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Error(err)
	}
}

// TestNotStoredThenRetryIsNoConflict: a NATS leader election (modelled as
// no stream taking the work subject nor the bucket's subjects for a
// moment) refuses the publish and the claim's release. The caller is told
// 503 "not stored: try again" with Retry-After; its retry, sent after
// Retry-After, is told 409, which a paging tool drops.
func TestNotStoredThenRetryIsNoConflict(t *testing.T) {
	h := newHarness(t)
	kvStream := "KV_" + Bucket
	work := h.topo.Subjects
	setSubjects(t, h, work[:1]) // the normal lane: no responders
	// The publish is sent as HPUB (it has headers).
	p := &queuetest.AnswerEater{Target: h.ns.Addr().String(), Publish: []byte("PUB " + work[1] + " "), Hook: func() {
		setStreamSubjects(h.t, h.js, kvStream, []string{"$KV.elsewhere.>"}) // the bucket's leader gone too
	}}
	addr := p.Listen(t)
	nc, js := queuetest.ConnectURL(t, "nats://"+addr)
	client := queue.ClientOn(nc, js, h.topo)
	client.Timeout = time.Second
	s, err := Start(context.Background(), js, Config{Addr: "127.0.0.1:0", Callers: tCallers(), Client: client,
		Subjects: h.topo.Subjects, Replicas: 1, Create: true, Log: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	h.base = "http://" + s.Addr()
	post := func() resp {
		return h.do(h.post(evBody(tAccount, "electkey"), hdrs(bearer(tToken), []string{HeaderIdempotencyKey, "elect"})...))
	}
	r := post()
	setStreamSubjects(t, h.js, kvStream, []string{"$KV." + Bucket + ".>"})
	setSubjects(t, h, work)
	r.want(t, http.StatusServiceUnavailable, KindUnavailable)
	if h.msgs() != 0 {
		t.Fatalf("%d events stored, want none", h.msgs())
	}
	// The caller honours Retry-After: the server's clock moves on so.
	after, err := strconv.Atoi(r.Header.Get("Retry-After"))
	if err != nil {
		t.Fatal(err)
	}
	s.now = func() time.Time { return time.Now().Add(time.Duration(after) * time.Second) }
	again := post()
	if again.StatusCode != http.StatusAccepted || h.msgs() != 1 {
		t.Fatalf("the retry of a request answered 'not stored: try again', after its Retry-After, answered %d %s with %d events stored; want it stored", again.StatusCode, again.body, h.msgs())
	}
}

// TestUnmarkedClaimTakenOverFromTheTrail: the first request's store is
// stored, its answer lost, and NATS stays away for the rest of the request,
// so its claim cannot be marked lost or unsure. The worker records the
// event once NATS is back. A repeat after the work stream's duplicate
// window (shrunk here to 1 s for the test; 2 min in production) takes the
// claim over without looking in the trail and stores the event again.
func TestUnmarkedClaimTakenOverFromTheTrail(t *testing.T) {
	defer func(d time.Duration) { storeTimeout = d }(storeTimeout)
	storeTimeout = 4 * time.Second
	h, p, nc, post := lostAnswer(t)
	ctx := context.Background()
	st, err := h.js.Stream(ctx, h.topo.Stream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	cfg.Duplicates = time.Second
	if _, err := h.js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	h.startWorker()
	p.Away.Store(true)
	post().want(t, http.StatusGatewayTimeout, KindStoreUnknown)
	p.Away.Store(false)
	queuetest.Eventually(t, 10*time.Second, "the ingress's connection back", nc.IsConnected)
	queuetest.Eventually(t, 10*time.Second, "the lookup answering the event's record", func() bool {
		return h.do(h.get("/v1/revocations/ingress:soar:lost-ack", bearer(tToken)...)).StatusCode == http.StatusOK
	})
	// The stream has forgotten the event's id once it has forgotten a
	// probe's stored after it: a copy of the probe is then stored anew.
	probe := nats.NewMsg(h.topo.Subjects[0])
	probe.Data = []byte(evBody(tAccount, "probe"))
	probe.Header.Set(jetstream.MsgIDHeader, "probe")
	if _, err := h.js.PublishMsg(ctx, probe); err != nil {
		t.Fatal(err)
	}
	queuetest.Eventually(t, 30*time.Second, "the stream forgetting the ids", func() bool {
		ack, err := h.js.PublishMsg(ctx, probe)
		return err == nil && !ack.Duplicate
	})
	var again resp
	queuetest.Eventually(t, 10*time.Second, "the repeat taking the claim over", func() bool {
		again = post()
		return again.StatusCode != http.StatusConflict
	})
	if again.StatusCode != http.StatusAccepted || again.queued(t).Sequence != 1 {
		t.Fatalf("repeat answered %d %s: want the event at sequence 1, not stored again", again.StatusCode, again.body)
	}
}

// TestEntriesLiveAsLongAsRecords: GET /v1/revocations/{id} answers the
// event's record once there is one (SPEC §11), and the trail keeps records
// 90 days: the entry that finds the event must live as long, or a caller
// polling its Location after a day is told no such event exists.
func TestEntriesLiveAsLongAsRecords(t *testing.T) {
	if got := BucketConfig(1).TTL; got < queue.OutcomeMaxAge {
		t.Fatalf("ingress entries live %v, records %v", got, queue.OutcomeMaxAge)
	}
}
