package worker_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/worker"
)

// loadFailsOnce is a ledger whose next read (only) gets no answer: a
// moment of silence from the server, after which it answers again.
type loadFailsOnce struct {
	*fakeLedger
	mu       sync.Mutex
	failNext int
	failed   int
}

func (l *loadFailsOnce) Load(ctx context.Context, ref worker.Ref) (worker.Entry, error) {
	l.mu.Lock()
	if l.failNext > 0 {
		l.failNext--
		l.failed++
		l.mu.Unlock()
		return worker.Entry{}, errors.New("no answer")
	}
	l.mu.Unlock()
	return l.fakeLedger.Load(ctx, ref)
}

// TestCallStoredAheadNotMadeIsNotCounted: a first delivery stores its
// call ahead (the journal), then, held past half its ack wait by a slow
// answer and a slow trail read, asks the server for its word before the
// call and gets no answer once (errNoWord): no DELETE goes out. The same
// delivery then retries, its write-ahead is answered, and it makes exactly
// one DELETE, answered 200. The record counts one attempt and no
// unanswered call (SPEC §4 "The proof" point 2: attempts counts every
// call; §5a: unanswered_calls counts calls made whose answer was never
// heard): the call stored ahead and not made is the one the retry makes.
// Given back instead, the delivery takes it back.
func TestCallStoredAheadNotMadeIsNotCounted(t *testing.T) {
	for _, givenBack := range []bool{false, true} {
		h := newHarness(t, nil, answer(200, revoked, 0))
		// The write-ahead's answer and the trail's read each take 60 ms:
		// with an ack wait of 100 ms the delivery is late after the first,
		// and the server's word is older than half the ack wait after the
		// second, so the worker asks again (hasWord). Latencies, not
		// synchronisation.
		h.ledger.slowWrite = func(worker.Ref) time.Duration { return 60 * time.Millisecond }
		h.records.slowPrior = 60 * time.Millisecond
		l := &loadFailsOnce{fakeLedger: h.ledger, failNext: 1}
		budget := 10 * time.Second
		if givenBack {
			budget = time.Millisecond // spent by the time the call is not made
		}
		h.w = worker.New(worker.Config{Subjects: []string{"revoke.urgent", "revoke.scheduled"}, RetryInitial: time.Millisecond,
			RetryMaxInterval: 5 * time.Millisecond, RetryMaxElapsed: budget, HandBackDelay: time.Millisecond, Name: "test"},
			worker.Deps{API: h.api, Gate: h.gate, Records: h.records, Ledger: l, Metrics: h.m, Ready: h.ready, Log: zap.NewNop()})
		d := &fakeDelivery{body: goodEvent, ackWait: 100 * time.Millisecond, maxDeliver: 10}
		h.handle(d)
		if l.failed != 1 {
			t.Fatalf("the silent read was not reached (%d failed reads); the test's timing is off", l.failed)
		}
		e := h.ledger.entry(ref7)
		if givenBack {
			if len(d.settled) != 1 || d.settled[0] != "giveback" || h.api.calls != 0 || e.Calls != 0 {
				t.Fatalf("settled %v, %d DELETEs, ledger counts %d calls; want a give-back taking back the call never made",
					d.settled, h.api.calls, e.Calls)
			}
			continue
		}
		if len(d.settled) != 1 || d.settled[0] != "ack" {
			t.Fatalf("settled %v, want [ack]", d.settled)
		}
		o := onlyRecord(t, h)
		if o.Outcome != event.Revoked {
			t.Fatalf("record %+v, want revoked", o)
		}
		if o.Attempts != h.api.calls || o.UnansweredCalls != 0 || e.Calls != h.api.calls {
			t.Errorf("%d DELETE made and answered, but the record says attempts=%d unanswered_calls=%d and the ledger counts %d calls",
				h.api.calls, o.Attempts, o.UnansweredCalls, e.Calls)
		}
	}
}

// TestAnswersStoredMeanwhileCount: a later delivery (replica B)
// finds one earlier call counted and unanswered (replica A's, in flight).
// While B's own DELETE is out, A hears its answer (a 503) and gives the
// event back, storing that its call was answered. B gets 200 and, before
// writing the record, reads the ledger again (writeOutcome), which now
// says the other call was answered: the record counts no call unanswered,
// though no call was counted since B's (SPEC §5a: unanswered_calls counts
// calls whose answer was never heard).
func TestAnswersStoredMeanwhileCount(t *testing.T) {
	h := newHarness(t, nil, answer(200, revoked, 0))
	h.ledger.entries[7] = worker.Entry{Account: "acct1", Key: "key1", Calls: 1, Replica: "A"}
	h.api.onCall = func() {
		// Replica A's giveBack, as worker.giveBack writes it: its one call
		// was answered (heard = 1).
		h.ledger.mu.Lock()
		e := h.ledger.entries[7]
		e.Answered = min(e.Answered+1, e.Calls)
		h.ledger.entries[7] = e
		h.ledger.mu.Unlock()
	}
	d := &fakeDelivery{body: goodEvent, delivered: 2, maxDeliver: 10}
	h.handle(d)
	o := onlyRecord(t, h)
	e := h.ledger.entry(ref7)
	t.Logf("ledger at record time: calls=%d answered=%d; record attempts=%d unanswered_calls=%d", e.Calls, e.Answered, o.Attempts, o.UnansweredCalls)
	if o.Outcome != event.Revoked || o.Attempts != 2 {
		t.Fatalf("record %+v, want revoked with 2 attempts", o)
	}
	if o.UnansweredCalls != 0 {
		t.Errorf("record says %d unanswered calls; the ledger it read before writing says the other call was answered (answered=%d), and this delivery heard its own 200",
			o.UnansweredCalls, e.Answered)
	}
}
