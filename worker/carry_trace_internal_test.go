package worker

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/event"
)

// flakyTrail refuses the first write, then stores.
type flakyTrail struct {
	Records
	tries int
}

func (r *flakyTrail) Outcome(_ context.Context, rec event.Record) (event.Record, error) {
	r.tries++
	if r.tries == 1 {
		return event.Record{}, errors.New("no responders")
	}
	return rec, nil
}

// failingLedger refuses every write.
type failingLedger struct{ Ledger }

func (failingLedger) Update(context.Context, Ref, func(*Entry) error) (Entry, error) {
	return Entry{}, errors.New("no responders")
}

// TestCarriedConfirmationLogsNameItsTrace: the log lines about a
// confirmation carried over from a closed connection (not stored yet,
// then stored) are about the event, so they carry its trace id (SPEC §13:
// "the trace id goes into ... every log line about the event"), as the
// CONFIRMATION LOST line of Close does.
func TestCarriedConfirmationLogsNameItsTrace(t *testing.T) {
	const tid = "4bf92f3577b34da6a3ce929d0e0e4736"
	core, logs := observer.New(zapcore.InfoLevel)
	w := &Worker{Deps: Deps{Records: &flakyTrail{}, Ledger: failingLedger{}, Log: zap.New(core)}}
	c := &Carryover{}
	rec := event.Record{EventID: "e1", AccountID: "a", KeyID: "k", Outcome: event.Revoked, Status: 200, CFRay: "ray-1", Attempts: 1, TraceID: tid}
	if !c.carry(Ref{Stream: "S", Seq: 1, Account: "a", Key: "k"}, rec, &Call{Status: 200, CFRay: "ray-1"}) {
		t.Fatal("not carried")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Store(ctx, w); err != nil {
		t.Fatalf("Store: %v", err)
	}
	lines := logs.FilterMessageSnippet("carried over").All()
	if len(lines) != 2 {
		t.Fatalf("logged %d lines about the carried confirmation, want 2 (not stored yet, stored): %v", len(lines), logs.All())
	}
	for _, l := range lines {
		if got := l.ContextMap()["trace_id"]; got != tid {
			t.Errorf("%q: trace_id %v, want %s", l.Message, got, tid)
		}
	}
}
