package demo_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/credentials"
	"github.com/revoker/revoker/demo"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/tracing"
)

// fakeWorker stands in for serve: it creates the streams, answers /readyz,
// and for every event in the work stream makes one DELETE on the stand-in,
// with the account's credential from the demo's credentials file (read by
// the real loader), and records what that one answer means. It is not the
// worker (cmd's tests run the demo with the real one); it lets the demo's
// own logic be tested in a second. record false makes it take events and
// record nothing.
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
	set, err := credentials.Load(cfg.CredentialsFile, credentials.Options{BaseURL: cfg.BaseURL, Timeout: 10 * time.Second})
	if err != nil {
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
				f.handle(ctx, nc, cfg, set, m)
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

func (f *fakeWorker) handle(ctx context.Context, nc *nats.Conn, cfg config.Config, set *credentials.Set, m jetstream.Msg) {
	rec := event.Record{EventID: m.Headers().Get(jetstream.MsgIDHeader), Subject: m.Subject(),
		CompletedAt: time.Now().UTC().Format(time.RFC3339Nano)}
	if md, err := m.Metadata(); err == nil {
		rec.PublishedAt = md.Timestamp.UTC().Format(time.RFC3339Nano)
	}
	rec.TraceID = tracing.TraceID(tracing.Extract(ctx, tracing.HeaderGetter(m.Headers())))
	ev, err := event.Decode(m.Data())
	cred, served := set.For(ev.AccountID)
	switch {
	case err != nil:
		rec.Outcome, rec.Reason = event.DeadLettered, event.InvalidEvent
	case !served:
		rec.Outcome, rec.Reason = event.DeadLettered, event.AccountNotAllowed
	default:
		f.calls.Add(1)
		rec.Credential = cred.Name
		resp, err := cred.Client.DeleteSigningKey(ctx, ev.AccountID, ev.KeyID)
		if err != nil {
			if ctx.Err() == nil {
				f.t.Errorf("DELETE %s: %v", ev.KeyID, err)
			}
			return
		}
		rec.Status, rec.Attempts = resp.Status, 1
		switch {
		case resp.Status == http.StatusOK:
			rec.Outcome = event.Revoked
		case resp.Status == http.StatusNotFound:
			rec.Outcome = event.NotFound
		default:
			rec.Outcome, rec.Reason = event.DeadLettered, event.APIRejected
		}
	}
	rec.AccountID, rec.KeyID = ev.AccountID, ev.KeyID
	b, _ := json.Marshal(rec)
	if err := nc.Publish(cfg.OutcomeSubject+".acct.k", b); err != nil && ctx.Err() == nil {
		f.t.Errorf("record: %v", err)
	}
}

// unlimited lifts the stand-in's rate limits: the fake worker makes its
// calls as fast as events come, with no budget of its own.
var unlimited = func() []cloudflaretest.Option {
	var opts []cloudflaretest.Option
	for _, a := range demo.Accounts() {
		opts = append(opts, cloudflaretest.WithBudgetRate(a.Credential, 0))
	}
	return opts
}()

// start starts the demo on w, with the stand-in's other options opts, and
// closes it when the test ends.
func start(t *testing.T, w *fakeWorker, opts ...cloudflaretest.Option) *demo.Stack {
	t.Helper()
	st, err := demo.Start(context.Background(), demo.Config{Serve: w.Serve, Log: zaptest.NewLogger(t), StandIn: opts})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

// TestDemoRunAccountsForEverySample: every sample is published on its
// subject with a trace context, the stand-in answers as the sample's script
// says, and the report holds each sample once, with its record, and the
// stand-in's counts, by budget.
func TestDemoRunAccountsForEverySample(t *testing.T) {
	w := &fakeWorker{t: t, record: true}
	st := start(t, w, unlimited...)
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
		"rot10": event.DeadLettered, "bad01": event.DeadLettered, "leak01": event.Revoked, "leak02": event.Revoked,
	} {
		if o := got[id].Record.Outcome; o != want {
			t.Errorf("%s: outcome %q, want %q", id, o, want)
		}
	}
	if r := got["rot10"]; r.Account != demo.Unserved || r.Record.Reason != event.AccountNotAllowed {
		t.Errorf("rot10: account %q, reason %q; want %q, %q", r.Account, r.Record.Reason, demo.Unserved, event.AccountNotAllowed)
	}
	if rep.APICalls != int(w.calls.Load()) || rep.APICalls != 11 {
		t.Errorf("report says %d API calls, the worker made %d; want 11", rep.APICalls, w.calls.Load())
	}
	if rep.RateLimited != 1 {
		t.Errorf("%d answered 429, want 1 (rot05)", rep.RateLimited)
	}
	// rot01, 03, 05, 07, leak01, 03 on the first account; rot02, 04, 06,
	// 09, leak02 on the second.
	want := []demo.BudgetCalls{
		{Budget: "media", Credentials: []string{"media"}, Calls: 6, Deletes: 6, RateLimited: 1},
		{Budget: "news", Credentials: []string{"news"}, Calls: 5, Deletes: 5},
	}
	if !reflect.DeepEqual(rep.Budgets, want) {
		t.Errorf("calls by budget %+v, want %+v", rep.Budgets, want)
	}
	checkCharges(t, st.APIRequests())
	if rep.DeadLettersErr != nil || rep.DeadLetterStream != cfg.DLQStream {
		t.Errorf("dead letters of %q: %v", rep.DeadLetterStream, rep.DeadLettersErr)
	}
	if rep.Elapsed <= 0 {
		t.Errorf("elapsed %v", rep.Elapsed)
	}
}

// checkCharges fails unless every request was made with the credential of
// its account and charged to that credential's budget, and none names the
// account no credential serves.
func checkCharges(t *testing.T, reqs []cloudflaretest.Request) {
	t.Helper()
	budgets := map[string]bool{}
	for _, q := range reqs {
		want := demo.CredentialOf(q.AccountID)
		if q.AccountID == demo.Unserved {
			t.Errorf("%s %s: a call for the account no credential serves", q.Method, q.Path)
		}
		if q.Credential == "" || q.Budget != q.Credential || q.AccountID != "" && q.Credential != want || !q.TokenOK {
			t.Errorf("%s %s: credential %q (accepted %v), budget %q; want %q, its own budget", q.Method, q.Path, q.Credential, q.TokenOK, q.Budget, want)
		}
		budgets[q.Budget] = true
	}
	for _, a := range demo.Accounts() {
		if !budgets[a.Credential] {
			t.Errorf("no call charged to budget %q", a.Credential)
		}
	}
}

// TestDemoCredentialsArePrivate: the worker is given a credentials file,
// not a token; the file names each account's credential and token file,
// holds no secret itself, and loads with the real loader; it and the token
// files are this user's only, in a directory of this user's only, and all
// of it is gone once the demo is closed.
func TestDemoCredentialsArePrivate(t *testing.T) {
	st, err := demo.Start(context.Background(), demo.Config{Serve: (&fakeWorker{t: t}).Serve, Log: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cfg := st.WorkerConfig()
	if cfg.CredentialsFile == "" || cfg.APIToken != "" || cfg.APITokenFile != "" {
		t.Fatalf("worker given credentials file %q, token set %v, token file %q; want only the file",
			cfg.CredentialsFile, cfg.APIToken != "", cfg.APITokenFile)
	}
	dir := filepath.Dir(cfg.CredentialsFile)
	for _, p := range []string{dir, filepath.Dir(dir)} {
		if fi, err := os.Lstat(p); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v; want a directory, mode 0700", p, modeOf(fi, err))
		}
	}
	set, err := credentials.Load(cfg.CredentialsFile, credentials.Options{BaseURL: cfg.BaseURL})
	if err != nil {
		t.Fatalf("the demo's credentials file does not load: %v", err)
	}
	body, err := os.ReadFile(cfg.CredentialsFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range demo.Accounts() {
		c, ok := set.For(a.ID)
		if !ok || c.Name != a.Credential || c.Budget != a.Credential || c.Rate != demo.Rate {
			t.Errorf("account %s: served by %+v, want credential %q, its own budget at %d/s", a.ID, c, a.Credential, demo.Rate)
		} else if _, ok := c.Auth.(*cloudflare.TokenFile); !ok {
			t.Errorf("credential %s: %T, want a token file", c.Name, c.Auth)
		}
	}
	if _, ok := set.For(demo.Unserved); ok {
		t.Errorf("account %s is served; want no credential for it", demo.Unserved)
	}
	// The directory holds the credentials file and a token file for each
	// account, nothing else.
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1+len(demo.Accounts()) {
		t.Errorf("%d files in %s, want the credentials file and %d token files", len(ents), dir, len(demo.Accounts()))
	}
	tokens := 0
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if fi, err := os.Lstat(p); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v; want a regular file, mode 0600", p, modeOf(fi, err))
		}
		if p == cfg.CredentialsFile {
			continue
		}
		tokens++
		tok, err := os.ReadFile(p)
		switch {
		case err != nil || len(strings.TrimSpace(string(tok))) < 20:
			t.Errorf("token file %s: %d bytes, %v", e.Name(), len(tok), err)
		case strings.Contains(string(body), strings.TrimSpace(string(tok))):
			t.Errorf("the credentials file holds the token of %s", e.Name())
		}
	}
	if tokens != len(demo.Accounts()) {
		t.Errorf("%d token files, want %d", tokens, len(demo.Accounts()))
	}
	st.Close()
	if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after Close, %s: %v; want it removed", dir, err)
	}
}

// modeOf is what Lstat said: the mode, or the error.
func modeOf(fi fs.FileInfo, err error) string {
	if err != nil {
		return err.Error()
	}
	return "mode " + fi.Mode().String()
}

// TestDemoStandInLocksOut: the demo's stand-in limits each token to Rate
// calls a second with Cloudflare's lockout: a burst over it is refused
// with a Retry-After of the whole lockout, while the other token's calls
// still go through.
func TestDemoStandInLocksOut(t *testing.T) {
	st := start(t, &fakeWorker{t: t})
	cfg := st.WorkerConfig()
	set, err := credentials.Load(cfg.CredentialsFile, credentials.Options{BaseURL: cfg.BaseURL, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	accts := demo.Accounts()
	first, _ := set.For(accts[0].ID)
	second, _ := set.For(accts[1].ID)
	ctx := context.Background()
	var refused *cloudflare.Response
	for i := 0; i < 5*demo.Rate && refused == nil; i++ {
		resp, err := first.Client.DeleteSigningKey(ctx, accts[0].ID, fmt.Sprintf("burst%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if resp.Status == http.StatusTooManyRequests {
			refused = resp
		}
	}
	if refused == nil {
		t.Fatalf("%d calls of one token in a burst, none refused; want a 429 past %d a second", 5*demo.Rate, demo.Rate)
	}
	if refused.RetryAfter < demo.Lockout-time.Second {
		t.Errorf("the 429 asks for %v; want the lockout, %v", refused.RetryAfter, demo.Lockout)
	}
	resp, err := second.Client.DeleteSigningKey(ctx, accts[1].ID, "other")
	if err != nil || resp.Status != http.StatusOK {
		t.Errorf("the other token during the lockout: %v, %v; want 200", resp.Status, err)
	}
	checkCharges(t, st.APIRequests())
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
	st := start(t, &fakeWorker{t: t, record: true}, unlimited...)
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
	// Both accounts, each with its own token, and none for the account no
	// credential serves.
	checkCharges(t, st.APIRequests())
}
