package ingress

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/queue/queuetest"
)

// TestRepeatPastWindowWhileQueuedStoresOnce: a request's store went
// unanswered (claim marked lost) but the work stream did store the event;
// the workers are behind (an incident's backlog), so there is no record
// yet. The caller repeats with the same Idempotency-Key and body three
// minutes later: past the work stream's 2-minute duplicate window but well
// within the 24 hours SPEC §11 promises. The repeat must answer the event
// already stored, not store a second one.
func TestRepeatPastWindowWhileQueuedStoresOnce(t *testing.T) {
	h := newHarness(t) // no worker: the event waits in the stream
	// The duplicate window made short, so the test need not wait out two
	// minutes: the sequence is the same with the default window.
	st, err := h.js.Stream(context.Background(), h.topo.Stream)
	if err != nil {
		t.Fatal(err)
	}
	sc := st.CachedInfo().Config
	const window = 200 * time.Millisecond
	sc.Duplicates = window
	if _, err := h.js.UpdateStream(context.Background(), sc); err != nil {
		t.Fatal(err)
	}
	const id = "ingress:soar:backlog"
	body := evBody(tAccount, "backlogkey")
	m := nats.NewMsg(h.topo.Subjects[1])
	m.Data = []byte(body)
	m.Header.Set(jetstream.MsgIDHeader, id)
	ack, err := h.js.PublishMsg(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	published := time.Now()
	ctx := context.Background()
	kv, err := h.s.bucket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// What the first request left: its publish stored the event (above),
	// its answer was lost, the claim marked lost.
	long := time.Now().Add(-time.Second)
	claim := entry{Caller: "soar", BodySHA256: bodyDigest([]byte(body)), State: stateStoring, EventID: id,
		Subject: h.topo.Subjects[1], AccountID: tAccount, KeyID: "backlogkey", ClaimedAt: long, Tried: long, Until: long,
		Lost: true, Unsure: true}
	v, _ := json.Marshal(claim)
	if _, err := kv.Create(ctx, entryKey(id), v); err != nil {
		t.Fatal(err)
	}
	// The repeat comes once the stream's window is over (a paging tool's
	// retry minutes later).
	queuetest.Eventually(t, 10*time.Second, "the duplicate window over", func() bool {
		return time.Since(published) > 3*window
	})
	again := h.do(h.post(body, hdrs(bearer(tToken), []string{HeaderIdempotencyKey, "backlog"})...))
	if again.StatusCode != http.StatusAccepted {
		t.Fatalf("repeat answered %d %s, want 202 for the queued event", again.StatusCode, again.body)
	}
	if n := h.msgs(); n != 1 {
		t.Fatalf("the work stream holds %d events after the repeat, want 1: the repeat (same key, same body, minutes later) stored the event a second time; repeat answered %s",
			n, again.body)
	}
	var got struct {
		Sequence uint64 `json:"sequence"`
	}
	if err := json.Unmarshal([]byte(again.body), &got); err != nil || got.Sequence != ack.Sequence {
		t.Fatalf("repeat answered %s, want the stored event's sequence %d", again.body, ack.Sequence)
	}
}
