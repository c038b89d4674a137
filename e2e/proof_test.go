package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// The proof under hostile timing (SPEC §4 "The proof", §5a): a replica cut
// off from NATS without a reset, a replica killed while its calls are
// answered, a work stream made again, a 404 from something that is not the
// API. Each test runs the built binary against one JetStream server and
// the Cloudflare stand-in: a cluster would tell a replica behind the
// blackhole proxy the other nodes' addresses, and it would reconnect around
// the cut.

// proofEnv runs the worker on a single server with no rate limit, so calls
// are in flight when the faults land.
var proofEnv = []string{
	"REVOKER_STREAM_REPLICAS=1",
	"REVOKER_RATE_LIMIT=0",
	"REVOKER_IP_RATE_LIMIT=0",
}

// A replica (A) reaches NATS through a proxy that goes silent while A's
// DELETE is in flight: the API confirms it, A hears the 200 but cannot
// record it, and the other replica (B) gets the event after the ack wait.
// Once A can reach NATS again, the trail must believe A's confirmation
// (SPEC §4 "The proof" point 3), and meanwhile A must have started no call
// more than half an ack wait after it last heard from the server (point 4):
// A holds other events that the API keeps answering 503, so it has every
// reason to call.
func TestProofSilentCut(t *testing.T) {
	skipShort(t)
	const ackWait = 6 * time.Second
	srv := queuetest.Server(t)
	api := cloudflaretest.NewServer(cloudflaretest.WithToken(token))
	t.Cleanup(api.Close)
	tapA, tapB := newTap(t, api), newTap(t, api)
	hole := queuetest.NewBlackhole(t, srv.Addr().String())
	env := append([]string{"REVOKER_ACK_WAIT=" + ackWait.String()}, proofEnv...)

	key := "cut00001"
	busy := keys("busy", 3)
	arrived := make(chan tapCall, 1)
	release := releaser(t)
	var first sync.Once
	tapA.setHold(func(c tapCall) <-chan struct{} {
		if c.Method != http.MethodDelete || c.Key != key {
			return nil
		}
		var ch <-chan struct{}
		first.Do(func() {
			arrived <- c
			ch = release.ch
		})
		return ch
	})

	a := startWorker(t, "replica-a", hole.URL(), api, append(env, "CLOUDFLARE_BASE_URL="+tapA.URL)...)
	a.waitReady(30 * time.Second)
	_, js := queuetest.ConnectURL(t, srv.ClientURL())
	for _, k := range busy {
		api.Script(k, repeat(http.StatusServiceUnavailable, 100)...)
		publishEvent(t, js, "revoke.scheduled", k)
	}
	seq := publishEvent(t, js, "revoke.scheduled", key)

	var held tapCall
	select {
	case held = <-arrived:
	case <-time.After(30 * time.Second):
		t.Fatal("replica A never called for the key")
	}
	waitUntil(t, 30*time.Second, "replica A calling for every busy key", func() bool {
		for _, k := range busy {
			if tapA.deletes(k) == 0 {
				return false
			}
		}
		return true
	})
	hole.Cut()
	cut := time.Now()
	release.release() // A hears the stand-in's answer only now, cut off
	if held.Status != http.StatusOK {
		t.Fatalf("the stand-in answered A's DELETE with %d, want 200", held.Status)
	}
	t.Logf("NATS cut silently under replica A; A's DELETE for %s answered 200, CF-Ray %s", key, held.CFRay)

	b := startWorker(t, "replica-b", srv.ClientURL(), api, append(env, "CLOUDFLARE_BASE_URL="+tapB.URL)...)
	b.waitReady(30 * time.Second)
	// The cut lasts until the event has a record (B's, after the ack
	// wait), or three ack waits at most: short of the 30 s in which A's
	// client would give the connection up as stale.
	for time.Since(cut) < 3*ackWait {
		if recs, err := keyRecords(js, key); err == nil && len(eventRecords(recs, seq)) > 0 {
			break
		}
		time.Sleep(50 * time.Millisecond) // polling a condition
	}
	hole.Heal()
	healed := time.Now()
	t.Logf("healed %v after the cut; replica B made %d DELETEs for the key", healed.Sub(cut).Round(time.Millisecond), tapB.deletes(key))

	var final []storedRecord
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("records of the event:\n%s", describe(final))
		}
	})
	waitUntil(t, 45*time.Second, "the trail to believe A's confirmation (a revoked record with its CF-Ray)", func() bool {
		recs, err := keyRecords(js, key)
		if err != nil {
			return false
		}
		final = eventRecords(recs, seq)
		r, ok := believed(final)
		return ok && r.Outcome == event.Revoked && r.CFRay == held.CFRay
	})
	checkCorrection(t, final)
	// Whoever wrote them, the records know of A's call: a not_found written
	// while its answer was unheard counts it as unanswered, and the
	// correction counts every call of both replicas (SPEC §5a).
	r, _ := believed(final)
	if calls := tapA.deletes(key) + tapB.deletes(key); r.Attempts != calls {
		t.Errorf("the revoked record counts %d attempts; the replicas made %d DELETEs of the key", r.Attempts, calls)
	}
	for _, o := range final {
		if o.Outcome == event.NotFound && o.UnansweredCalls < 1 {
			t.Errorf("the not_found record (outcome-stream sequence %d) says unanswered_calls %d; A's confirmed call was unheard then", o.seq, o.UnansweredCalls)
		}
	}

	// A last heard from the server at the cut at the latest: no call of
	// A's may start later than half an ack wait after it. The slack covers
	// the way from A's call to the proxy's clock, not a second call.
	const slack = 500 * time.Millisecond
	limit := cut.Add(ackWait/2 + slack)
	for _, c := range tapA.calls() {
		if c.At.After(limit) && c.At.Before(healed) {
			t.Errorf("replica A, cut off from NATS at %s, started a %s for %s at %s (%v after the cut; ack wait %v)",
				cut.Format(time.StampMilli), c.Method, c.Key, c.At.Format(time.StampMilli), c.At.Sub(cut).Round(time.Millisecond), ackWait)
		}
	}
}

// checkCorrection asserts that the records of one event are a revoked
// record alone, or a not_found and the revoked record that corrects it,
// naming its outcome-stream sequence in supersedes (SPEC §4 point 3, §5a).
func checkCorrection(t *testing.T, recs []storedRecord) {
	t.Helper()
	r, _ := believed(recs)
	var revoked, notFound []storedRecord
	for _, o := range recs {
		switch o.Outcome {
		case event.Revoked:
			revoked = append(revoked, o)
		case event.NotFound:
			notFound = append(notFound, o)
		default:
			t.Errorf("the event has a %s record (outcome-stream sequence %d) beside its revoked one", o.Outcome, o.seq)
		}
	}
	if len(revoked) != 1 {
		t.Errorf("the event has %d revoked records, want one", len(revoked))
	}
	switch len(notFound) {
	case 0:
		if r.Supersedes != 0 {
			t.Errorf("the revoked record supersedes %d, but the event has no not_found record", r.Supersedes)
		}
	case 1:
		nf := notFound[0]
		if r.Supersedes != nf.seq {
			t.Errorf("the revoked record (outcome-stream sequence %d) supersedes %d; the not_found record it corrects is %d",
				r.seq, r.Supersedes, nf.seq)
		}
		if nf.seq > r.seq {
			t.Errorf("the not_found record (%d) follows the revoked one (%d): the correction must come after", nf.seq, r.seq)
		}
	default:
		t.Errorf("the event has %d not_found records, at most one may be corrected", len(notFound))
	}
}

// A replica killed (SIGKILL) while the API answers 200 to its calls never
// hears them; the replica that takes its events over must count those
// calls: every event's one record has attempts equal to the DELETEs the
// API saw for its key, and unanswered_calls says that a confirmation may
// have gone unheard (SPEC §4 point 2, §5a).
func TestProofKill9Attempts(t *testing.T) {
	skipShort(t)
	const inFlight = 3
	srv := queuetest.Server(t)
	url := srv.ClientURL()
	api := cloudflaretest.NewServer(cloudflaretest.WithToken(token))
	t.Cleanup(api.Close)
	tp := newTap(t, api)
	// Every answer to the first replica waits here: the stand-in decides
	// it (the key is deleted), the replica dies before it hears it.
	release := releaser(t)
	tp.setHold(func(tapCall) <-chan struct{} { return release.ch })
	env := append([]string{"REVOKER_CONCURRENCY=" + strconv.Itoa(inFlight)}, proofEnv...)

	w1 := startWorker(t, "worker-1", url, api, append(env, "CLOUDFLARE_BASE_URL="+tp.URL)...)
	w1.waitReady(30 * time.Second)
	_, js := queuetest.ConnectURL(t, url)
	ks := keys("nine", 8)
	for _, k := range ks {
		publishEvent(t, js, "revoke.scheduled", k)
	}
	waitUntil(t, 30*time.Second, "the stand-in answering the calls in flight", func() bool {
		n := 0
		for _, c := range tp.calls() {
			if c.Method == http.MethodDelete && c.Status != 0 {
				n++
			}
		}
		return n >= inFlight
	})
	w1.kill()
	release.release()
	unheard := map[string]bool{}
	for _, c := range tp.calls() {
		if c.Method == http.MethodDelete && c.Status >= 200 && c.Status < 300 {
			unheard[c.Key] = true
		}
	}
	if len(unheard) == 0 {
		t.Fatal("no call was answered 200 before the kill")
	}
	t.Logf("SIGKILL with %d calls answered 200 and never heard: %v", len(unheard), sortedKeys(unheard))

	startWorker(t, "worker-2", url, api, env...)
	waitSettled(t, js, len(ks), 60*time.Second)

	deletes := map[string]int{}
	for _, q := range api.Requests() {
		if q.Method == http.MethodDelete && q.AccountID == account {
			deletes[q.KeyID]++
		}
	}
	perEvent := map[uint64]int{}
	perKey := map[string]event.Record{}
	for _, rec := range readTrail(t, js) {
		perEvent[rec.Sequence]++
		if perEvent[rec.Sequence] == 2 {
			t.Errorf("event %d (key %s) has more than one record", rec.Sequence, rec.KeyID)
		}
		perKey[rec.KeyID] = rec
	}
	for _, k := range ks {
		rec, ok := perKey[k]
		if !ok {
			t.Errorf("key %s has no record", k)
			continue
		}
		t.Logf("key %s: %s, attempts %d, unanswered_calls %d; the stand-in saw %d DELETEs", k, rec.Outcome, rec.Attempts, rec.UnansweredCalls, deletes[k])
		if rec.Outcome != event.Revoked && rec.Outcome != event.NotFound {
			t.Errorf("key %s: outcome %s, want revoked or not_found", k, rec.Outcome)
		}
		if rec.Attempts != deletes[k] {
			t.Errorf("key %s: the record counts %d attempts; the stand-in saw %d DELETEs", k, rec.Attempts, deletes[k])
		}
		switch {
		case unheard[k] && rec.UnansweredCalls < 1:
			t.Errorf("key %s: a 200 went unheard at the kill, but the record says unanswered_calls %d", k, rec.UnansweredCalls)
		case !unheard[k] && rec.UnansweredCalls != 0:
			t.Errorf("key %s: every call was heard, but the record says unanswered_calls %d", k, rec.UnansweredCalls)
		}
	}
}

// A work stream deleted and made again reuses its sequences: a new event
// at the sequence of an old, revoked one must be revoked by a DELETE of its
// own, never by the old event's confirmation, and count only its own calls
// (SPEC §4 point 5). Its first call fails, so that a second delivery reads
// what is kept for its sequence too.
func TestProofStreamRecreated(t *testing.T) {
	skipShort(t)
	srv := queuetest.Server(t)
	url := srv.ClientURL()
	api := cloudflaretest.NewServer(cloudflaretest.WithToken(token))
	t.Cleanup(api.Close)
	tp := newTap(t, api)
	// A delivery's retry budget is spent by one failure: the event goes
	// back to the stream and comes again.
	env := append([]string{"CLOUDFLARE_BASE_URL=" + tp.URL, "REVOKER_RETRY_MAX_ELAPSED=100ms"}, proofEnv...)
	const old, fresh = "reuse00001", "reuse00002"

	w1 := startWorker(t, "worker-1", url, api, env...)
	w1.waitReady(30 * time.Second)
	_, js := queuetest.ConnectURL(t, url)
	seq := publishEvent(t, js, "revoke.scheduled", old)
	waitUntil(t, 30*time.Second, "the first event revoked", func() bool {
		recs, err := keyRecords(js, old)
		r, ok := believed(eventRecords(recs, seq))
		return err == nil && ok && r.Outcome == event.Revoked
	})
	w1.stop()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := js.DeleteStream(ctx, workStream); err != nil {
		t.Fatalf("delete the work stream: %v", err)
	}
	w2 := startWorker(t, "worker-2", url, api, env...)
	w2.waitReady(30 * time.Second)
	api.Script(fresh, http.StatusServiceUnavailable)
	if again := publishEvent(t, js, "revoke.scheduled", fresh); again != seq {
		t.Fatalf("the new event is at sequence %d of the new stream, not %d: the premise of the test does not hold", again, seq)
	}

	var recs []storedRecord
	waitUntil(t, 45*time.Second, "a record for the new event", func() bool {
		all, err := keyRecords(js, fresh)
		recs = eventRecords(all, seq)
		return err == nil && len(recs) > 0
	})
	var confirmed []tapCall
	calls := 0
	for _, c := range tp.calls() {
		if c.Method != http.MethodDelete || c.Key != fresh {
			continue
		}
		calls++
		if c.Status >= 200 && c.Status < 300 {
			confirmed = append(confirmed, c)
		}
	}
	t.Logf("new event: %d DELETEs, %d confirmed; records:\n%s", calls, len(confirmed), describe(recs))
	if len(confirmed) != 1 {
		t.Fatalf("the stand-in confirmed %d DELETEs of the new event's key, want one: it must be revoked by a call of its own", len(confirmed))
	}
	if len(recs) != 1 {
		t.Errorf("the new event has %d records, want one", len(recs))
	}
	r, _ := believed(recs)
	if r.Outcome != event.Revoked || r.Status != confirmed[0].Status || r.CFRay != confirmed[0].CFRay {
		t.Errorf("the new event's record says %s status %d CF-Ray %q; its own confirming call answered %d, CF-Ray %q",
			r.Outcome, r.Status, r.CFRay, confirmed[0].Status, confirmed[0].CFRay)
	}
	if r.Attempts != calls {
		t.Errorf("the new event's record counts %d attempts; the stand-in saw %d DELETEs of its key", r.Attempts, calls)
	}
}

// A 404 from something that is not the API (a base URL with the wrong
// path, a host that is not Cloudflare's) proves nothing: the event is
// never recorded not_found, and the replica says it is not ready, with
// revoker_ready{condition="api"} at 0 (SPEC §4 table and point 1, §8).
func TestProofHTML404(t *testing.T) {
	skipShort(t)
	good := cloudflaretest.NewServer(cloudflaretest.WithToken(token))
	t.Cleanup(good.Close)
	notAPI := cloudflaretest.NewServer(cloudflaretest.WithoutAPI())
	t.Cleanup(notAPI.Close)
	cases := []struct {
		name string
		api  *cloudflaretest.Server
		base string
	}{
		// The API's host under a path it does not serve: 404s with the
		// envelope (no route), for the DELETE and for the key list alike.
		{"wrong base path", good, strings.TrimSuffix(good.URL, cloudflaretest.APIPrefix) + "/v4"},
		// Not the API at all: a 404 page in HTML.
		{"not the API", notAPI, notAPI.URL},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := queuetest.Server(t)
			url := srv.ClientURL()
			key := fmt.Sprintf("astray%05d", i)
			w := startWorker(t, "worker", url, tc.api, append([]string{"CLOUDFLARE_BASE_URL=" + tc.base}, proofEnv...)...)
			if err := newPublisher(t, url).publish("revoke.scheduled", key); err != nil {
				t.Fatal(err)
			}
			deletes := func() int {
				n := 0
				for _, q := range tc.api.Requests() {
					if q.Method == http.MethodDelete && strings.HasSuffix(q.Path, "/"+key) {
						n++
					}
				}
				return n
			}
			_, js := queuetest.ConnectURL(t, url)
			records := func() []storedRecord {
				recs, err := keyRecords(js, key)
				if err != nil {
					return nil
				}
				return recs
			}
			// A second DELETE shows the first 404 settled nothing.
			waitUntil(t, 30*time.Second, "a second DELETE of the key, or a record for it", func() bool {
				return deletes() >= 2 || len(records()) > 0
			})
			checkNoRecord := func() {
				t.Helper()
				for _, r := range records() {
					if r.Outcome == event.NotFound {
						t.Errorf("a 404 that is not the API's was recorded as not_found:\n%s", describe([]storedRecord{r}))
					} else {
						t.Errorf("the event has a %s record; it must be retried:\n%s", r.Outcome, describe([]storedRecord{r}))
					}
				}
			}
			checkNoRecord()
			waitUntil(t, 20*time.Second, `/readyz not 200 and revoker_ready{condition="api"} 0`, func() bool {
				v, ok := w.sample("revoker_ready", `condition="api"`)
				return ok && v == 0 && !w.ready()
			})
			checkNoRecord()
			t.Logf("%d DELETEs answered 404, no record, the replica not ready", deletes())
		})
	}
}

// tap is a reverse proxy in front of the stand-in for one replica: it
// records each request the replica makes, when it arrived and what the
// stand-in answered (with the answer's CF-Ray), so a test knows which
// replica made which call; and it can hold an answer back after the
// stand-in has decided it.
type tap struct {
	// URL is the base URL to give the replica (CLOUDFLARE_BASE_URL).
	URL string

	root   string // the stand-in's address, without the API's path
	client *http.Client

	mu   sync.Mutex
	log  []tapCall
	hold func(tapCall) <-chan struct{}
}

// tapCall is one request through a tap.
type tapCall struct {
	At     time.Time // arrival at the tap
	Method string
	Key    string // the key of a DELETE, "" otherwise
	Status int    // the stand-in's answer; 0 until it came (or if none did)
	CFRay  string
}

// newTap starts a tap in front of api, closed when the test ends.
func newTap(t *testing.T, api *cloudflaretest.Server) *tap {
	t.Helper()
	tr := &http.Transport{}
	p := &tap{
		root: strings.TrimSuffix(api.URL, cloudflaretest.APIPrefix),
		client: &http.Client{
			Transport: tr,
			// The replica decides what a redirect means, not the tap.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
	srv := httptest.NewServer(p)
	p.URL = srv.URL + cloudflaretest.APIPrefix
	t.Cleanup(func() {
		srv.Close()
		tr.CloseIdleConnections()
	})
	return p
}

// setHold makes f decide, for each answer, a channel to wait on before
// passing it on (nil: at once).
func (p *tap) setHold(f func(tapCall) <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hold = f
}

func (p *tap) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c := tapCall{At: time.Now(), Method: r.Method}
	if r.Method == http.MethodDelete {
		c.Key = path.Base(r.URL.Path)
	}
	p.mu.Lock()
	i := len(p.log)
	p.log = append(p.log, c)
	hold := p.hold
	p.mu.Unlock()

	req, err := http.NewRequestWithContext(r.Context(), r.Method, p.root+r.URL.RequestURI(), r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	req.Header = r.Header.Clone()
	resp, err := p.client.Do(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	c.Status, c.CFRay = resp.StatusCode, resp.Header.Get("Cf-Ray")
	p.mu.Lock()
	p.log[i] = c
	p.mu.Unlock()

	if hold != nil {
		if ch := hold(c); ch != nil {
			select {
			case <-ch:
			case <-r.Context().Done():
				return
			}
		}
	}
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(body)
}

// calls returns the tap's log, in arrival order.
func (p *tap) calls() []tapCall {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]tapCall(nil), p.log...)
}

// deletes counts the DELETEs of key through the tap.
func (p *tap) deletes(key string) int {
	n := 0
	for _, c := range p.calls() {
		if c.Method == http.MethodDelete && c.Key == key {
			n++
		}
	}
	return n
}

// gate is a channel closed once, by the test or when it ends, so that no
// held answer outlives the test.
type gate struct {
	ch   chan struct{}
	once sync.Once
}

// releaser makes a gate; its cleanup runs before the taps made earlier
// are closed (cleanups run last first), so their handlers can return.
func releaser(t *testing.T) *gate {
	g := &gate{ch: make(chan struct{})}
	t.Cleanup(g.release)
	return g
}

func (g *gate) release() { g.once.Do(func() { close(g.ch) }) }

// publishEvent publishes one event for key on subject and returns its
// sequence in the work stream.
func publishEvent(t *testing.T, js jetstream.JetStream, subject, key string) uint64 {
	t.Helper()
	body := []byte(`{"account_id":"` + account + `","key_id":"` + key + `","requested_by":"e2e"}`)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := js.Publish(ctx, subject, body, jetstream.WithMsgID("e2e:"+key))
	if err != nil {
		t.Fatalf("publish %s: %v", key, err)
	}
	if ack.Stream != workStream {
		t.Fatalf("publish %s: stored in %s, not %s", key, ack.Stream, workStream)
	}
	return ack.Sequence
}

// storedRecord is an outcome record and its sequence in the outcome stream.
type storedRecord struct {
	seq uint64
	event.Record
}

// keyRecords reads the records on key's own subject, oldest first, as the
// worker's readers do (SPEC §4 point 8): only those that name the key.
func keyRecords(js jetstream.JetStream, key string) ([]storedRecord, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, outcomeStream)
	if err != nil {
		return nil, err
	}
	subject := queue.OutcomeSubject(config.DefaultOutcomeSubject, account, key)
	var out []storedRecord
	for seq := uint64(1); ; {
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		var rec event.Record
		if json.Unmarshal(m.Data, &rec) == nil && rec.AccountID == account && rec.KeyID == key {
			out = append(out, storedRecord{seq: m.Sequence, Record: rec})
		}
		seq = m.Sequence + 1
	}
}

// eventRecords are the records of the event at seq of the work stream.
func eventRecords(recs []storedRecord, seq uint64) []storedRecord {
	var out []storedRecord
	for _, r := range recs {
		if r.Stream == workStream && r.Sequence == seq {
			out = append(out, r)
		}
	}
	return out
}

// believed is the record readers believe of one event's records: the last
// revoked one if any, else the last (SPEC §4 point 3).
func believed(recs []storedRecord) (storedRecord, bool) {
	for i := len(recs) - 1; i >= 0; i-- {
		if recs[i].Outcome == event.Revoked {
			return recs[i], true
		}
	}
	if len(recs) == 0 {
		return storedRecord{}, false
	}
	return recs[len(recs)-1], true
}

func describe(recs []storedRecord) string {
	if len(recs) == 0 {
		return "  (none)"
	}
	var b strings.Builder
	for _, r := range recs {
		fmt.Fprintf(&b, "  #%d %s status %d cf_ray %q attempts %d unanswered_calls %d supersedes %d absence_checked_at %q worker %q\n",
			r.seq, r.Outcome, r.Status, r.CFRay, r.Attempts, r.UnansweredCalls, r.Supersedes, r.AbsenceCheckedAt, r.Worker)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// sample reads one series of /metrics: the sum of the samples of name
// whose labels hold every one of labels, and whether there was any (a
// series that is missing is not a 0).
func (w *worker) sample(name string, labels ...string) (float64, bool) {
	v, found, err := w.read(name, labels...)
	return v, found && err == nil
}

// read sums the samples of name whose labels hold every one of labels,
// and says whether any matched.
func (w *worker) read(name string, labels ...string) (sum float64, found bool, err error) {
	resp, err := http.Get("http://" + w.addr + "/metrics")
	if err != nil {
		return 0, false, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		match := true
		for _, l := range labels {
			if !strings.Contains(line, l) {
				match = false
			}
		}
		if !match {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
			found = true
		}
	}
	return sum, found, sc.Err()
}
