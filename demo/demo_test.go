package demo_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/demo"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/tracing"
)

// fakeWorker stands in for serve: it creates the streams, answers /readyz,
// and for every event in the work stream makes one DELETE on the stand-in
// and records what that one answer means. It is not the worker (cmd's tests
// run the demo with the real one); it lets the demo's own logic be tested
// in a second. record false makes it take events and record nothing.
type fakeWorker struct {
	t      *testing.T
	record bool
	// stop, when closed, makes Serve return errStopped.
	stop chan struct{}
	// calls counts the DELETEs made.
	calls atomic.Int32
}

var errStopped = errors.New("the fake worker stopped")

func (f *fakeWorker) Serve(ctx context.Context, cfg config.Config, ready func(string)) error {
	health := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer health.Close()
	nc, err := nats.Connect(cfg.NATSURL)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if err := queue.Ensure(ctx, js, cfg.Topology(), zap.NewNop()); err != nil {
		return err
	}
	// The lanes' own consumers: the work stream takes no other kind.
	for _, subject := range cfg.Subjects {
		cons, err := js.Consumer(ctx, cfg.Stream, cfg.Durable(subject))
		if err != nil {
			return err
		}
		cc, err := cons.Consume(func(m jetstream.Msg) {
			if f.record {
				f.handle(ctx, nc, cfg, m)
				_ = m.Ack()
			}
		})
		if err != nil {
			return err
		}
		defer cc.Stop()
	}
	ready(strings.TrimPrefix(health.URL, "http://"))
	select {
	case <-ctx.Done():
		return nil
	case <-f.stop:
		return errStopped
	}
}

func (f *fakeWorker) handle(ctx context.Context, nc *nats.Conn, cfg config.Config, m jetstream.Msg) {
	rec := event.Record{EventID: m.Headers().Get(jetstream.MsgIDHeader), Subject: m.Subject(),
		CompletedAt: time.Now().UTC().Format(time.RFC3339Nano)}
	if md, err := m.Metadata(); err == nil {
		rec.PublishedAt = md.Timestamp.UTC().Format(time.RFC3339Nano)
	}
	rec.TraceID = tracing.TraceID(tracing.Extract(ctx, tracing.HeaderGetter(m.Headers())))
	ev, err := event.Decode(m.Data())
	switch {
	case err != nil:
		rec.Outcome, rec.Reason = event.DeadLettered, event.InvalidEvent
	default:
		f.calls.Add(1)
		req, _ := http.NewRequestWithContext(ctx, http.MethodDelete, cfg.BaseURL+"/accounts/"+ev.AccountID+"/stream/keys/"+ev.KeyID, nil)
		req.Header.Set("Authorization", "Bearer "+cfg.APIToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			if ctx.Err() == nil {
				f.t.Errorf("DELETE %s: %v", ev.KeyID, err)
			}
			return
		}
		resp.Body.Close()
		rec.Status, rec.Attempts = resp.StatusCode, 1
		switch {
		case resp.StatusCode == http.StatusOK:
			rec.Outcome = event.Revoked
		case resp.StatusCode == http.StatusNotFound:
			rec.Outcome = event.NotFound
		default:
			rec.Outcome, rec.Reason = event.DeadLettered, event.APIRejected
		}
	}
	b, _ := json.Marshal(rec)
	if err := nc.Publish(cfg.OutcomeSubject+".demoacct.k", b); err != nil && ctx.Err() == nil {
		f.t.Errorf("record: %v", err)
	}
}

// start starts the demo on w and closes it when the test ends.
func start(t *testing.T, w *fakeWorker) *demo.Stack {
	t.Helper()
	st, err := demo.Start(context.Background(), demo.Config{Serve: w.Serve, Log: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

// TestDemoRunAccountsForEverySample: every sample is published on its
// subject with a trace context, the stand-in answers as the sample's script
// says, and the report holds each sample once, with its record, and the
// stand-in's counts.
func TestDemoRunAccountsForEverySample(t *testing.T) {
	w := &fakeWorker{t: t, record: true}
	st := start(t, w)
	samples := demo.Samples()
	rep, err := st.Run(context.Background(), samples, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != len(samples) {
		t.Fatalf("%d results, want %d", len(rep.Results), len(samples))
	}
	cfg := st.WorkerConfig()
	got := map[string]demo.Result{}
	for _, r := range rep.Results {
		if _, dup := got[r.ID]; dup {
			t.Errorf("%s reported twice", r.ID)
		}
		got[r.ID] = r
		if r.Record.EventID != "demo-"+r.ID {
			t.Errorf("%s: record of %q", r.ID, r.Record.EventID)
		}
		want := cfg.LowestPriority()
		if r.Urgent {
			want = cfg.HighestPriority()
		}
		if r.Subject != want || r.Record.Subject != want {
			t.Errorf("%s: subject %q, stored on %q; want %q", r.ID, r.Subject, r.Record.Subject, want)
		}
		if len(r.Record.TraceID) != 32 {
			t.Errorf("%s: published without a trace context (trace id %q)", r.ID, r.Record.TraceID)
		}
		if _, ok := r.TimeToOutcome(); !ok {
			t.Errorf("%s: no time to outcome from %+v", r.ID, r.Record)
		}
	}
	// One DELETE each, so the first scripted answer decides.
	for id, want := range map[string]event.Outcome{
		"rot01": event.Revoked, "rot03": event.DeadLettered, "rot05": event.DeadLettered,
		"rot06": event.NotFound, "rot07": event.DeadLettered, "rot08": event.DeadLettered,
		"bad01": event.DeadLettered, "leak01": event.Revoked,
	} {
		if o := got[id].Record.Outcome; o != want {
			t.Errorf("%s: outcome %q, want %q", id, o, want)
		}
	}
	if rep.APICalls != int(w.calls.Load()) || rep.APICalls != 11 {
		t.Errorf("report says %d API calls, the worker made %d; want 11", rep.APICalls, w.calls.Load())
	}
	if rep.RateLimited != 1 {
		t.Errorf("%d answered 429, want 1 (rot05)", rep.RateLimited)
	}
	if rep.DeadLettersErr != nil || rep.DeadLetterStream != cfg.DLQStream {
		t.Errorf("dead letters of %q: %v", rep.DeadLetterStream, rep.DeadLettersErr)
	}
	if rep.Elapsed <= 0 {
		t.Errorf("elapsed %v", rep.Elapsed)
	}
}

// TestDemoRunTimesOut: a worker that records nothing makes Run give up at
// its timeout, saying how many events it saw.
func TestDemoRunTimesOut(t *testing.T) {
	st := start(t, &fakeWorker{t: t})
	_, err := st.Run(context.Background(), demo.Samples()[:2], 200*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "only 0 of 2 events accounted for") {
		t.Fatalf("Run: %v; want a timeout naming 0 of 2", err)
	}
}

// TestDemoStartNeedsAWorker: a worker that fails at once fails Start with
// its error, and Start without one is refused.
func TestDemoStartNeedsAWorker(t *testing.T) {
	boom := errors.New("no such credential")
	_, err := demo.Start(context.Background(), demo.Config{Serve: func(context.Context, config.Config, func(string)) error { return boom }})
	if err == nil || !strings.Contains(err.Error(), boom.Error()) {
		t.Errorf("Start: %v; want the worker's error", err)
	}
	if _, err := demo.Start(context.Background(), demo.Config{}); err == nil {
		t.Error("Start without Serve: no error")
	}
}

// TestDemoWaitSeesTheWorkerStop: Wait returns nil when its context ends,
// and the worker's error when the worker stops by itself; Run does too.
func TestDemoWaitSeesTheWorkerStop(t *testing.T) {
	w := &fakeWorker{t: t, stop: make(chan struct{})}
	st := start(t, w)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := st.Wait(ctx); err != nil {
		t.Errorf("Wait after cancel: %v", err)
	}
	close(w.stop)
	if err := st.Wait(context.Background()); err == nil || !strings.Contains(err.Error(), errStopped.Error()) {
		t.Errorf("Wait: %v; want the worker's error", err)
	}
	if _, err := st.Run(context.Background(), demo.Samples(), time.Minute); err == nil || !strings.Contains(err.Error(), errStopped.Error()) {
		t.Errorf("Run: %v; want the worker's error", err)
	}
}

// TestDemoTrickle: the trickle publishes one event per tick through a
// whole cycle, reports what it published and the outcomes seen, and ends
// without error when its context does.
func TestDemoTrickle(t *testing.T) {
	st := start(t, &fakeWorker{t: t, record: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var last demo.Progress
	err := st.Trickle(ctx, time.Millisecond, 20*time.Millisecond, func(p demo.Progress) {
		last = p
		// One cycle is 40 events, among them a 404, and a 429, a 400, two
		// invalid ones and a 408 that the fake dead-letters.
		if p.Published >= 40 && p.Outcomes[event.NotFound] > 0 && p.Outcomes[event.DeadLettered] >= 5 {
			cancel()
		}
	})
	if err != nil {
		t.Fatalf("Trickle: %v", err)
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatalf("not every outcome within 30s; last report %+v", last)
	}
	n := 0
	for _, c := range last.Outcomes {
		n += c
	}
	if last.Outcomes[event.Revoked] == 0 || n > last.Published {
		t.Errorf("report %+v: want revoked ones, no more outcomes than events", last)
	}
}
