package verify_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
	"github.com/revoker/revoker/verify"
)

const acct = "023e105f4ecef8ad9ca31a8372d0c353"

// rig is a JetStream server with the outcome stream, and a stand-in API.
type rig struct {
	t   *testing.T
	js  jetstream.JetStream
	api *cloudflaretest.Server
	cfg verify.Config
	seq uint64
}

func newRig(t *testing.T, opts ...cloudflaretest.Option) *rig {
	t.Helper()
	_, _, js := queuetest.JetStream(t)
	ctx := testCtx(t)
	topo := config.Default().Topology()
	if _, err := js.CreateStream(ctx, queue.OutcomeStream(topo)); err != nil {
		t.Fatal(err)
	}
	api := cloudflaretest.NewServer(opts...)
	t.Cleanup(api.Close)
	client, err := cloudflare.New(cloudflare.Config{BaseURL: api.URL, Credential: cloudflare.Token("t")})
	if err != nil {
		t.Fatal(err)
	}
	return &rig{t: t, js: js, api: api, cfg: verify.Config{
		JS: js, Stream: topo.OutcomeStream, Prefix: topo.OutcomePrefix, API: client,
	}}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// record stores an outcome record of key as the worker does.
func (r *rig) record(account, key string, outcome event.Outcome) {
	r.t.Helper()
	r.seq++
	rec := event.Record{
		EventID: "e" + key, AccountID: account, KeyID: key, Outcome: outcome, Status: 200,
		CFRay: "ray-" + key, Attempts: 1, Subject: "revoke.scheduled", Sequence: r.seq, Stream: "REVOCATIONS",
		CompletedAt: time.Now().UTC().Format(time.RFC3339Nano),
	}
	if outcome == event.DeadLettered {
		rec.Reason = event.APIRejected
	}
	m := queue.OutcomeMsg(r.cfg.Prefix, rec)
	if _, err := r.js.PublishMsg(testCtx(r.t), m); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rig) lists() int {
	n := 0
	for _, q := range r.api.Requests() {
		if q.Method == http.MethodGet {
			n++
		}
	}
	return n
}

// TestVerifyClaimsEveryKeyRecordedGone: every key with a revoked or
// not_found record (or a not_found dead-lettered) in the window is a
// claim, whatever came after it; a revoked record is the one shown;
// records of events refused before a call, of keys with no valid id, and
// messages that are not their key's records claim nothing.
func TestVerifyClaimsEveryKeyRecordedGone(t *testing.T) {
	r := newRig(t)
	r.record(acct, "k1", event.NotFound)
	// A later dead letter (say, "404 on delete, but the key is still
	// listed") does not take back the claim: it is what the check is for.
	r.record(acct, "k1", event.DeadLettered)
	r.record(acct, "k2", event.DeadLettered)
	r.record(acct, "k2", event.Revoked) // claimed
	r.record(acct, "k3", event.Revoked)
	r.record(acct, "k3", event.DeadLettered) // a confirmation is never buried
	r.record(acct, "k4", event.NotFound)
	// A later event of k4 refused before any call says nothing of the key.
	refused := queue.OutcomeMsg(r.cfg.Prefix, event.Record{EventID: "ek4b", AccountID: acct, KeyID: "k4",
		Outcome: event.DeadLettered, Reason: event.InvalidEvent, Stream: "REVOCATIONS", Sequence: 99})
	if _, err := r.js.PublishMsg(testCtx(t), refused); err != nil {
		t.Fatal(err)
	}
	r.record("_", "k5", event.Revoked) // no account to list
	// A proven absence dead-lettered (REVOKER_NOT_FOUND=dead-letter) says
	// the key is gone as a not_found does.
	for _, key := range []string{"k7", "k8"} {
		m := queue.OutcomeMsg(r.cfg.Prefix, event.Record{EventID: "e" + key, AccountID: acct, KeyID: key, Outcome: event.DeadLettered,
			Reason: event.ReasonNotFound, Status: 404, CFRay: "ray-" + key, Attempts: 1, Stream: "REVOCATIONS", Sequence: 200})
		if _, err := r.js.PublishMsg(testCtx(t), m); err != nil {
			t.Fatal(err)
		}
	}
	r.record(acct, "k8", event.Revoked) // claimed
	// A revoked record of k1 planted on k6's subject: not believed for
	// either key, and reported.
	planted := queue.OutcomeMsg(r.cfg.Prefix, event.Record{EventID: "x", AccountID: acct, KeyID: "k1", Outcome: event.Revoked})
	planted.Subject = queue.OutcomeSubject(r.cfg.Prefix, acct, "k6")
	if _, err := r.js.PublishMsg(testCtx(t), planted); err != nil {
		t.Fatal(err)
	}

	var strays []queue.Stray
	got, err := verify.Claims(testCtx(t), r.js, r.cfg.Stream, r.cfg.Prefix, "", time.Time{}, func(s queue.Stray) { strays = append(strays, s) })
	if err != nil {
		t.Fatal(err)
	}
	if len(strays) != 1 || strays[0].Subject != planted.Subject {
		t.Errorf("strays %+v, want the record planted on %s", strays, planted.Subject)
	}
	want := map[string]string{"k1": "not_found", "k2": "revoked", "k3": "revoked", "k4": "not_found", "k7": "dead_lettered/not_found", "k8": "revoked"}
	if len(got) != len(want) {
		t.Fatalf("claims %+v, want keys %v", got, want)
	}
	for _, c := range got {
		if want[c.KeyID] != c.Says() || c.AccountID != acct || c.CFRay != "ray-"+c.KeyID {
			t.Errorf("claim %+v says %q, want %q", c, c.Says(), want[c.KeyID])
		}
	}
}

// TestVerifyFindsANotFoundALaterDeadLetterFollowed: the trail says a key
// is gone (not_found), a later event of the key was dead-lettered after a
// call, and the key is still listed: the check prints it and fails (SPEC
// §7), where it once took the dead letter as the key's last word.
func TestVerifyFindsANotFoundALaterDeadLetterFollowed(t *testing.T) {
	r := newRig(t)
	r.api.KeepListed(acct, "alive")
	r.record(acct, "alive", event.NotFound)
	r.record(acct, "alive", event.DeadLettered)
	rep, err := verify.Check(testCtx(t), r.cfg, "", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.StillListed) != 1 || rep.StillListed[0].KeyID != "alive" || rep.Proven() {
		t.Fatalf("report %+v: the not_found record of %s/alive says the key is gone while the list holds it; want it still listed, not proven", rep, acct)
	}
}

func TestVerifyCheckOneListPerAccount(t *testing.T) {
	r := newRig(t)
	const other = "9a7806061c88ada191ed06f989cc3dac"
	r.api.AddKey(acct, "gone1")
	r.api.RemoveKey(acct, "gone1")
	r.record(acct, "gone1", event.Revoked)
	r.record(acct, "gone2", event.NotFound)
	r.api.KeepListed(acct, "alive")
	r.record(acct, "alive", event.NotFound)
	r.record(other, "k", event.Revoked)
	r.api.ScriptList(other, 500)

	rep, err := verify.Check(testCtx(t), r.cfg, "", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Checked != 3 || len(rep.StillListed) != 1 || rep.StillListed[0].KeyID != "alive" {
		t.Errorf("report %+v: want 3 checked, alive still listed", rep)
	}
	if len(rep.Failed) != 1 || rep.Failed[0].AccountID != other || rep.Failed[0].Why == "" {
		t.Errorf("failed %+v: want %s with a reason", rep.Failed, other)
	}
	if rep.Proven() {
		t.Error("Proven() with a key still listed")
	}
	if n := r.lists(); n != 2 {
		t.Errorf("%d key lists, want one per account (2)", n)
	}
}

// schedule is a replica's scheduled check on the rig, with its own gauge.
func (r *rig) schedule(name string, interval time.Duration) (*verify.Schedule, prometheus.Gauge) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "revoker_keys_still_listed"})
	return &verify.Schedule{
		Check: r.cfg, Interval: interval, Create: true, Gauge: g, Log: zaptest.NewLogger(r.t), Replica: name,
	}, g
}

func TestVerifyLeaseOneCheckerAtATime(t *testing.T) {
	started, release := make(chan struct{}, 8), make(chan struct{})
	r := newRig(t, cloudflaretest.WithResponder(func(q cloudflaretest.Request) (int, http.Header, string, bool) {
		if q.Method == http.MethodGet {
			started <- struct{}{}
			<-release // hold the first checker inside its check
		}
		return 0, nil, "", false
	}))
	r.api.KeepListed(acct, "alive")
	r.record(acct, "alive", event.NotFound)
	ctx := testCtx(t)
	a, ga := r.schedule("a", time.Nanosecond)
	b, gb := r.schedule("b", time.Nanosecond)
	// The fleet's first poll only marks when checks began: no check at
	// once. b, started later, finds that mark; its checks are due too.
	if ran, err := a.Tick(ctx); ran || err != nil {
		t.Fatalf("first poll ran a check (%v) or failed (%v)", ran, err)
	}

	done := make(chan error, 1)
	go func() {
		ran, err := a.Tick(ctx)
		if err == nil && !ran {
			t.Error("a: no check run")
		}
		done <- err
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("a did not start its check")
	}
	// a holds the lease: b must not check meanwhile.
	ran, err := b.Tick(ctx)
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err != nil || ran {
		t.Fatalf("b ran a check (%v, %v) while a held the lease", ran, err)
	}
	if n := r.lists(); n != 1 {
		t.Fatalf("%d key lists, want 1", n)
	}
	if v := testutil.ToFloat64(ga); v != 1 {
		t.Errorf("a's gauge %v, want 1", v)
	}
	// b exports the count of a's check; with an hour's interval it does
	// not check again.
	b.Interval = time.Hour
	if ran, err := b.Tick(ctx); ran || err != nil {
		t.Fatalf("b: ran %v, err %v; want no check, the last is recent", ran, err)
	}
	if v := testutil.ToFloat64(gb); v != 1 {
		t.Errorf("b's gauge %v, want a's count 1", v)
	}
	if n := r.lists(); n != 1 {
		t.Errorf("%d key lists, want still 1", n)
	}
}

func TestVerifyLeaseOfADeadReplicaExpires(t *testing.T) {
	r := newRig(t)
	ctx := testCtx(t)
	s, _ := r.schedule("alive", time.Nanosecond)
	if _, err := s.Tick(ctx); err != nil { // makes the bucket
		t.Fatal(err)
	}
	kv, err := r.js.KeyValue(ctx, verify.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	// A replica took the lease and died: it never deletes it.
	if _, err := kv.Create(ctx, "lease", []byte("dead"), jetstream.KeyTTL(time.Second)); err != nil {
		t.Fatal(err)
	}
	if ran, err := s.Tick(ctx); ran || err != nil {
		t.Fatalf("ran %v, err %v while another held the lease", ran, err)
	}
	queuetest.Eventually(t, 10*time.Second, "a check once the dead replica's lease expired", func() bool {
		ran, err := s.Tick(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return ran
	})
}

// TestVerifyBucketOtherSettingsWarned: an existing revoker_verify bucket
// with other replicas than the worker would create is used as it is, with
// a warning, as every stream and bucket is (SPEC §3).
func TestVerifyBucketOtherSettingsWarned(t *testing.T) {
	r := newRig(t)
	if _, err := r.js.CreateKeyValue(testCtx(t), verify.BucketConfig(1)); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.WarnLevel)
	s, _ := r.schedule("a", time.Hour)
	s.Replicas, s.Log = 3, zap.New(core)
	if _, err := s.Tick(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	warned := logs.FilterField(zap.String("bucket", verify.Bucket)).FilterField(zap.String("setting", "replicas")).Len()
	if warned != 1 {
		t.Fatalf("%d warnings about the bucket's replicas, want 1: %v", warned, logs.All())
	}
}

// TestVerifyScheduledCountsAListedKeyRecordedAhead: a worker whose clock
// runs a day ahead wrote a not_found record of a key the account still
// lists. Its completion time is after every list the scheduled check
// fetches, but the record was read, so stored, before: the key is counted
// in revoker_keys_still_listed and named at error level, not left
// "unjudged" to a next check that would judge it no better.
func TestVerifyScheduledCountsAListedKeyRecordedAhead(t *testing.T) {
	r := newRig(t)
	r.api.KeepListed(acct, "alive")
	rec := event.Record{EventID: "e1", AccountID: acct, KeyID: "alive", Outcome: event.NotFound, Status: 404,
		Stream: "REVOCATIONS", Sequence: 1, CompletedAt: time.Now().Add(25 * time.Hour).UTC().Format(time.RFC3339Nano)}
	if _, err := r.js.PublishMsg(testCtx(t), queue.OutcomeMsg(r.cfg.Prefix, rec)); err != nil {
		t.Fatal(err)
	}
	s, g := r.schedule("a", time.Nanosecond)
	core, logs := observer.New(zap.ErrorLevel)
	s.Log = zap.New(core)
	ctx := testCtx(t)
	ran := 0
	for i := 0; i < 3; i++ {
		ok, err := s.Tick(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			ran++
		}
	}
	if ran == 0 || r.lists() == 0 {
		t.Fatalf("setup: no check ran (%d) or no list (%d)", ran, r.lists())
	}
	if v := testutil.ToFloat64(g); v != 1 || logs.Len() == 0 {
		t.Fatalf("%d checks, %d lists: revoker_keys_still_listed %v and %d errors logged, while %s/alive has a not_found record and is still listed",
			ran, r.lists(), v, logs.Len(), acct)
	}
}

// TestCheckOutOfTimeReportsWhatItJudged: a scheduled check that runs out
// of its lease's time before every account's list still reports the keys
// it found still listed (logged, counted in revoker_keys_still_listed),
// and counts the accounts it did not reach as failed, rather than
// dropping all it learned, again at every tick (SPEC §7, §8).
func TestCheckOutOfTimeReportsWhatItJudged(t *testing.T) {
	// Accounts are listed in order: acct, then slow (answered too late),
	// then last (never reached).
	const slow, last = "9a7806061c88ada191ed06f989cc3dac", "ffffffffffffffffffffffffffffffff"
	held := make(chan struct{})
	r := newRig(t, cloudflaretest.WithResponder(func(q cloudflaretest.Request) (int, http.Header, string, bool) {
		if q.Method == http.MethodGet && q.AccountID == slow {
			<-held
		}
		return 0, nil, "", false
	}))
	t.Cleanup(func() { close(held) }) // before the stand-in closes, which waits for its handlers
	r.api.KeepListed(acct, "alive")
	r.record(acct, "alive", event.NotFound)
	r.record(slow, "k", event.Revoked)
	r.record(last, "k", event.Revoked)
	s, g := r.schedule("a", time.Nanosecond)
	s.LeaseTTL = 3 * time.Second // the check has 2.7 s; slow's list never answers in them
	core, logs := observer.New(zap.InfoLevel)
	s.Log = zap.New(core)
	var ran bool
	var err error
	for i := 0; i < 3 && !ran && err == nil; i++ { // the first tick only notes when checks began
		ran, err = s.Tick(testCtx(t))
	}
	if !ran || err != nil {
		t.Fatalf("ran %v, err %v; want the check run and its findings reported", ran, err)
	}
	if v := testutil.ToFloat64(g); v != 1 {
		t.Errorf("revoker_keys_still_listed %v, want 1: alive was found still listed before the time ran out", v)
	}
	if n := logs.FilterMessageSnippet("still lists it").Len(); n != 1 {
		t.Errorf("%d lines naming the key still listed, want 1", n)
	}
	var failed []any
	for _, e := range logs.FilterMessageSnippet("could not be fetched").All() {
		failed = append(failed, e.ContextMap()["account"])
	}
	if len(failed) != 2 || failed[0] != slow || failed[1] != last {
		t.Errorf("failed accounts logged: %v; want %s (too late) and %s (not reached)", failed, slow, last)
	}
}

// TestLeaseOutlivingItsTTLIsTakenOver: a lease entry older than any a
// replica writes (each is written with the lease's TTL, and expires by
// then) — one made by hand, or restored, without a TTL — does not stop
// the scheduled check for ever: it is removed, by the server's clock, and
// the check runs (SPEC §4, "The proof", point 8).
func TestLeaseOutlivingItsTTLIsTakenOver(t *testing.T) {
	r := newRig(t)
	r.api.KeepListed(acct, "alive")
	r.record(acct, "alive", event.NotFound)
	ctx := testCtx(t)
	s, g := r.schedule("a", time.Nanosecond)
	s.LeaseTTL = time.Second
	if _, err := s.Tick(ctx); err != nil { // makes the bucket, notes when checks began
		t.Fatal(err)
	}
	kv, err := r.js.KeyValue(ctx, verify.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, "lease", []byte("stale")); err != nil { // no TTL
		t.Fatal(err)
	}
	queuetest.Eventually(t, 15*time.Second, "the stale lease taken over and a check run", func() bool {
		ran, err := s.Tick(ctx)
		return err == nil && ran
	})
	if v := testutil.ToFloat64(g); v != 1 {
		t.Errorf("revoker_keys_still_listed %v after the check, want 1 (alive is still listed)", v)
	}
}

// TestVerifyBucketLostIsMadeAgain: the lease's bucket is lost while serve
// runs (deleted by hand, lost with its only replica). The tick that finds
// it gone fails; a later one makes it again and checks, instead of every
// tick failing until a restart.
func TestVerifyBucketLostIsMadeAgain(t *testing.T) {
	r := newRig(t)
	ctx := testCtx(t)
	s, _ := r.schedule("alive", time.Nanosecond)
	if _, err := s.Tick(ctx); err != nil { // makes the bucket
		t.Fatal(err)
	}
	if err := r.js.DeleteKeyValue(ctx, verify.Bucket); err != nil {
		t.Fatal(err)
	}
	queuetest.Eventually(t, 10*time.Second, "a check once the bucket is made again", func() bool {
		ran, err := s.Tick(ctx)
		return err == nil && ran
	})
}
