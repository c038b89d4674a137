package queue_test

// Reading an event's records from its own time on: when nothing is stored
// on the key's subject since the event's time,
// believeIn takes the subject's last sequence from a second request
// (last_by_subj) without reading that message. A record of the same event
// stored between the two requests (another replica racing) is then the
// "last" a write expects, unread: the write succeeds, and the event has two
// final records (SPEC §4, "The proof", point 3: "Two replicas racing to
// record one event end with one record").

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/worker"
)

// hookProxy forwards TCP to target; the first time the client's bytes hold
// mark, hook runs before they are forwarded (the client's request waits).
func hookProxy(t *testing.T, target string, mark []byte, hook func()) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var once sync.Once
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				return
			}
			t.Cleanup(func() { c.Close(); s.Close() })
			go io.Copy(c, s)
			go func() {
				buf := make([]byte, 64<<10)
				var tail []byte
				for {
					n, err := c.Read(buf)
					if n > 0 {
						seen := append(append([]byte(nil), tail...), buf[:n]...)
						if bytes.Contains(seen, mark) {
							once.Do(hook)
						}
						if len(seen) > len(mark) {
							tail = append(tail[:0], seen[len(seen)-len(mark):]...)
						}
						if _, err := s.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func TestRacingRecordBehindLastBySubject(t *testing.T) {
	defer queue.SetRecordClockMargin(0)() // the key's earlier records are well before the event's time
	js, cfg := dlqTSetup(t)
	direct := &queue.Records{JS: js, Log: zap.NewNop(), Timeout: 5 * time.Second,
		DLQStream: cfg.DLQStream, DLQSubject: cfg.DLQSubject, OutcomeStream: cfg.OutcomeStream, OutcomePrefix: cfg.OutcomeSubject}
	ctx := dlqTCtx(t)
	const acct, key = "acct01", "keyRace"
	base := event.Record{AccountID: acct, KeyID: key, Outcome: event.NotFound, Status: 404, CFRay: "ray0", Attempts: 1,
		Subject: "revoke.scheduled", Stream: cfg.Stream, Worker: "w0"}

	// An earlier event of the key, recorded long ago (as far as the margin goes).
	old := base
	old.EventID, old.Sequence = "ev-old", 1
	old.PublishedAt = time.Now().UTC().Add(-time.Hour).Format(time.RFC3339Nano)
	old.CompletedAt = old.PublishedAt
	if _, err := direct.Outcome(ctx, old); err != nil {
		t.Fatal(err)
	}

	// The event both replicas record, stored after that record.
	ev := base
	ev.EventID, ev.Sequence = "ev-race", 2
	ev.PublishedAt = time.Now().UTC().Format(time.RFC3339Nano)
	ev.CompletedAt = ev.PublishedAt
	b := ev // replica B: not_found
	b.Worker = "replica-b"
	a := ev // replica A: revoked (a confirmation heard late)
	a.Worker, a.Outcome, a.Status, a.CFRay = "replica-a", event.Revoked, 200, "ray-a"

	// Replica A's connection: B writes its record just as A asks for the
	// subject's last sequence.
	var bErr error
	addr := hookProxy(t, js.Conn().ConnectedAddr(), []byte(`"last_by_subj"`), func() {
		_, bErr = direct.Outcome(context.Background(), b)
	})
	nc, err := nats.Connect("nats://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	jsA, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	viaA := &queue.Records{JS: jsA, Log: zap.NewNop(), Timeout: 5 * time.Second,
		DLQStream: cfg.DLQStream, DLQSubject: cfg.DLQSubject, OutcomeStream: cfg.OutcomeStream, OutcomePrefix: cfg.OutcomeSubject}
	if _, err := viaA.Outcome(ctx, a); err != nil {
		t.Fatal(err)
	}
	if bErr != nil {
		t.Fatal(bErr)
	}

	s, err := js.Stream(ctx, cfg.OutcomeStream)
	if err != nil {
		t.Fatal(err)
	}
	subject := queue.OutcomeSubject(cfg.OutcomeSubject, acct, key)
	var recs []event.Record
	for seq := uint64(1); ; {
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if err != nil {
			break
		}
		var r event.Record
		if err := json.Unmarshal(m.Data, &r); err == nil && r.Sequence == ev.Sequence {
			recs = append(recs, r)
		}
		seq = m.Sequence + 1
	}
	if len(recs) != 1 && !(len(recs) == 2 && recs[1].Supersedes != 0) {
		t.Errorf("event %s has %d records on its key's subject; want one (or a revoked one superseding): %+v", ev.EventID, len(recs), recs)
	}
}

// TestRecordFoundWhenWorkLeaderClockAhead: the work stream's leader
// stamps events by its clock, the outcome stream's leader stamps records by
// its own (two servers of a cluster). With the work leader's clock 2
// minutes ahead (more than the first margin, a minute), the event's
// revoked record, stored before "published_at - 1m" by the outcome
// leader's clock, was not read: Prior said there was none, and a second
// final record (not_found, no supersedes) was stored beside it. The
// margin is an hour now.
func TestRecordFoundWhenWorkLeaderClockAhead(t *testing.T) {
	js, cfg := dlqTSetup(t)
	recs := &queue.Records{JS: js, Log: zap.NewNop(), Timeout: 5 * time.Second,
		DLQStream: cfg.DLQStream, DLQSubject: cfg.DLQSubject, OutcomeStream: cfg.OutcomeStream, OutcomePrefix: cfg.OutcomeSubject}
	ctx := dlqTCtx(t)
	stored := time.Now().UTC().Add(2 * time.Minute) // the work leader's clock
	rev := event.Record{EventID: "ev-skew", AccountID: "acct01", KeyID: "keySkew", Outcome: event.Revoked, Status: 200, CFRay: "ray-1",
		Attempts: 1, Subject: "revoke.scheduled", Sequence: 7, Stream: cfg.Stream, Worker: "w1",
		PublishedAt: stored.Format(time.RFC3339Nano), CompletedAt: time.Now().UTC().Format(time.RFC3339Nano)}
	if _, err := recs.Outcome(ctx, rev); err != nil {
		t.Fatal(err)
	}
	_, found, err := recs.Prior(ctx, worker.Ref{Stream: cfg.Stream, Seq: 7, Account: "acct01", Key: "keySkew", Stored: stored})
	if err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Errorf("Prior: the event's revoked record (stored by the outcome leader's clock 2m before the event's published_at) was not found")
	}
	nf := rev
	nf.Outcome, nf.Status, nf.CFRay, nf.Worker, nf.Attempts = event.NotFound, 404, "ray-2", "w2", 2
	got, err := recs.Outcome(ctx, nf)
	if err != nil {
		t.Fatal(err)
	}
	if got.Outcome != event.Revoked {
		t.Errorf("Outcome(not_found) after the event's revoked record returned %s; want the revoked record believed, nothing stored", got.Outcome)
	}
}
