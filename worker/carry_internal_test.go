package worker

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/event"
)

// carryTrail is a trail whose writes fail with err (nil: stored).
type carryTrail struct {
	Records
	err    error
	stored []event.Record
}

func (r *carryTrail) Outcome(_ context.Context, rec event.Record) (event.Record, error) {
	if r.err != nil {
		return event.Record{}, r.err
	}
	r.stored = append(r.stored, rec)
	return rec, nil
}

// carryLedger is a ledger that keeps one entry and the records handed to
// its sweep.
type carryLedger struct {
	Ledger
	entry      Entry
	unrecorded []event.Record
}

func (l *carryLedger) Update(_ context.Context, _ Ref, change func(*Entry) error) (Entry, error) {
	err := change(&l.entry)
	return l.entry, err
}

func (l *carryLedger) Unrecorded(_ context.Context, rec event.Record) error {
	l.unrecorded = append(l.unrecorded, rec)
	return nil
}

// TestCarriedConfirmationStoredWhereItCanBe: a confirmation carried over
// from a closed connection is stored in the trail; while the trail alone
// refuses, in the ledger with its record for the sweep, so that fetching
// (which waits for Store) is not held up; with records off, in the ledger.
func TestCarriedConfirmationStoredWhereItCanBe(t *testing.T) {
	hit := &Call{Status: 200, CFRay: "ray-1"}
	rec := event.Record{EventID: "e1", AccountID: "a", KeyID: "k", Outcome: event.Revoked, Status: 200, CFRay: "ray-1", Attempts: 2}
	for _, tc := range []struct {
		name        string
		trailErr    error
		inTrail     bool
		toSweep     bool
		confirmedIn bool
	}{
		{"trail takes it", nil, true, false, false},
		{"trail refuses", errors.New("no responders"), false, true, true},
		{"records off", ErrNoTrail, false, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			trail, ledger := &carryTrail{err: tc.trailErr}, &carryLedger{}
			w := &Worker{Deps: Deps{Records: trail, Ledger: ledger, Log: zap.NewNop()}}
			c := &Carryover{}
			if !c.carry(Ref{Stream: "S", Seq: 1, Account: "a", Key: "k"}, rec, hit) {
				t.Fatal("not carried")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := c.Store(ctx, w); err != nil {
				t.Fatalf("Store: %v", err)
			}
			if got := len(trail.stored) == 1; got != tc.inTrail {
				t.Errorf("in the trail: %v, want %v", got, tc.inTrail)
			}
			if got := len(ledger.unrecorded) == 1; got != tc.toSweep {
				t.Errorf("handed to the sweep: %v, want %v", got, tc.toSweep)
			}
			if got := ledger.entry.Confirmed == hit && ledger.entry.Calls == 2; got != tc.confirmedIn {
				t.Errorf("ledger entry %+v; confirmed there: %v, want %v", ledger.entry, got, tc.confirmedIn)
			}
		})
	}
}

// TestCarryoverClosedLosesWhatItHolds: once the process stops, what is
// still carried is logged as lost and counted, and nothing more is taken.
func TestCarryoverClosedLosesWhatItHolds(t *testing.T) {
	c := &Carryover{}
	rec := event.Record{EventID: "e1", AccountID: "a", KeyID: "k", Outcome: event.Revoked, Status: 200, CFRay: "ray-1"}
	c.carry(Ref{}, rec, &Call{Status: 200})
	core, logs := observer.New(zapcore.ErrorLevel)
	lost := prometheus.NewCounter(prometheus.CounterOpts{Name: "lost"})
	c.Close(zap.New(core), lost)
	if n := testutil.ToFloat64(lost); n != 1 {
		t.Errorf("counted %v lost, want 1", n)
	}
	if l := logs.FilterMessageSnippet("CONFIRMATION LOST").All(); len(l) != 1 || l[0].ContextMap()["cf_ray"] != "ray-1" {
		t.Errorf("logged %v, want one line naming ray-1", logs.All())
	}
	if c.carry(Ref{}, rec, nil) {
		t.Error("carried after Close")
	}
}
