package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/ingress"
	"github.com/revoker/revoker/queue/queuetest"
)

// The ingress caller of these tests.
const (
	ingCaller = "e2e"
	ingToken  = "e2e-ingress-token"
)

// ingCallersFile writes a callers file with one bearer caller, unlimited.
func ingCallersFile(t *testing.T) string {
	t.Helper()
	sum := sha256.Sum256([]byte(ingToken))
	body := "callers:\n" +
		"  - name: " + ingCaller + "\n" +
		"    token_sha256: " + hex.EncodeToString(sum[:]) + "\n" +
		"    accounts: [\"*\"]\n" +
		"    rate: 0\n"
	path := filepath.Join(t.TempDir(), "callers.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// ingIdem is the Idempotency-Key the test sends for key, and ingID the
// event id the ingress makes of it (namespaced by caller, SPEC §11).
func ingIdem(key string) string { return "kill-" + key }
func ingID(key string) string   { return "ingress:" + ingCaller + ":" + ingIdem(key) }

// ingAnswer is one answer of the ingress: a record (200) or the event's
// state (202).
type ingAnswer struct {
	code   int
	err    error
	record event.Record
	queued ingress.Queued
	raw    string
}

// eventID is the event the answer names.
func (a ingAnswer) eventID() string {
	if a.code == http.StatusOK {
		return a.record.EventID
	}
	return a.queued.EventID
}

// sequence is the work-stream sequence of the event the answer names.
func (a ingAnswer) sequence() uint64 {
	if a.code == http.StatusOK {
		return a.record.Sequence
	}
	return a.queued.Sequence
}

func (a ingAnswer) String() string {
	if a.err != nil {
		return "no answer: " + a.err.Error()
	}
	return fmt.Sprintf("%d %s", a.code, strings.TrimSpace(a.raw))
}

// ingDo sends req with the caller's token and reads the answer.
func ingDo(client *http.Client, req *http.Request) ingAnswer {
	req.Header.Set("Authorization", "Bearer "+ingToken)
	resp, err := client.Do(req)
	if err != nil {
		return ingAnswer{err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	a := ingAnswer{code: resp.StatusCode, err: err, raw: string(body)}
	switch {
	case err != nil:
	case a.code == http.StatusOK:
		a.err = json.Unmarshal(body, &a.record)
	case a.code == http.StatusAccepted:
		a.err = json.Unmarshal(body, &a.queued)
	}
	return a
}

// ingPost asks the ingress at base to revoke key, waiting up to wait
// seconds for the outcome when wait > 0.
func ingPost(client *http.Client, base, key string, wait int) ingAnswer {
	body := `{"account_id":"` + account + `","key_id":"` + key + `","requested_by":"e2e"}`
	req, err := http.NewRequest(http.MethodPost, base+"/v1/revocations", strings.NewReader(body))
	if err != nil {
		return ingAnswer{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(ingress.HeaderIdempotencyKey, ingIdem(key))
	if wait > 0 {
		req.Header.Set(ingress.HeaderPrefer, "wait="+strconv.Itoa(wait))
	}
	return ingDo(client, req)
}

// ingGet asks the ingress at base for the event of key.
func ingGet(client *http.Client, base, key string) ingAnswer {
	req, err := http.NewRequest(http.MethodGet, base+"/v1/revocations/"+url.PathEscape(ingID(key)), nil)
	if err != nil {
		return ingAnswer{err: err}
	}
	return ingDo(client, req)
}

// ingListening waits until the ingress at base answers.
func ingListening(t *testing.T, base string) {
	t.Helper()
	waitUntil(t, 30*time.Second, "the ingress listening at "+base, func() bool {
		resp, err := http.Get(base + "/v1/openapi.json")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// heardRecords notes when each key's first outcome record reached this
// process.
type heardRecords struct {
	mu sync.Mutex
	at map[string]time.Time
}

func hearRecords(t *testing.T, nc *nats.Conn) *heardRecords {
	t.Helper()
	h := &heardRecords{at: map[string]time.Time{}}
	sub, err := nc.Subscribe(config.DefaultOutcomeSubject+".>", func(m *nats.Msg) {
		now := time.Now()
		key := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
		h.mu.Lock()
		if _, ok := h.at[key]; !ok {
			h.at[key] = now
		}
		h.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return h
}

// before reports whether key's record was heard before at.
func (h *heardRecords) before(key string, at time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	t, ok := h.at[key]
	return ok && t.Before(at)
}

// A worker killed (SIGKILL) while HTTP callers wait for outcomes loses
// nothing the ingress accepted (SPEC §11: a stored event is never lost
// because the caller hung up, or the worker died). Every key whose POST
// got a 2xx ends revoked on the trail and at the stand-in; every POST cut
// by the kill, repeated on a new worker with the same Idempotency-Key, is
// answered with the same event (same id, same sequence), never a new one;
// and no key is called twice unless its call was in flight at the kill.
func TestIngressKillLosesNothing(t *testing.T) {
	skipShort(t)
	c := queuetest.Cluster(t, 3)
	// Each answer takes a while, so calls are in flight when the kill
	// lands.
	api := cloudflaretest.NewServer(cloudflaretest.WithToken(token), cloudflaretest.WithLatency(300*time.Millisecond))
	t.Cleanup(api.Close)
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	base := "http://" + addr
	env := []string{
		"REVOKER_INGRESS_ADDR=" + addr,
		"REVOKER_INGRESS_CALLERS_FILE=" + ingCallersFile(t),
		// 5 calls a second: the waiting requests outlast the kill.
		"REVOKER_RATE_LIMIT=5",
		"REVOKER_IP_RATE_LIMIT=0",
		// 4×16 = 64 requests may wait at once.
		"REVOKER_CONCURRENCY=4",
	}
	w1 := startWorker(t, "worker-1", c.URLs(), api, env...)
	w1.waitReady(30 * time.Second)
	ingListening(t, base)
	nc, js := queuetest.ConnectURL(t, c.URLs())
	heard := hearRecords(t, nc)

	waitKeys := keys("ingw", 40)
	queuedKeys := keys("ingq", 10)
	all := append(append([]string{}, waitKeys...), queuedKeys...)

	// One connection per request: a connection the kill cuts is never
	// reused, so the client library repeats nothing behind the test's back.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: time.Minute}
	first := make([]ingAnswer, len(waitKeys))
	refused := make([][]ingAnswer, len(waitKeys)) // answers before the last, logged after
	var posts sync.WaitGroup
	for i, k := range waitKeys {
		posts.Add(1)
		go func() {
			defer posts.Done()
			a := ingPost(client, base, k, 10)
			// A store refused on a loaded machine (an answer, not a cut
			// connection) is sent again, as a paging tool retries a
			// 5xx, and waits again: it stays a request the kill may cut.
			for a.err == nil && (a.code >= 500 || a.code == http.StatusTooManyRequests) {
				refused[i] = append(refused[i], a)
				time.Sleep(100 * time.Millisecond) // the client's pace, not a wait for anything
				a = ingPost(client, base, k, 10)
			}
			first[i] = a
		}()
	}
	queuedFirst := map[string]ingAnswer{}
	for _, k := range queuedKeys {
		a := ingPost(client, base, k, 0)
		// Refused on a loaded machine (an answer, not a cut connection):
		// sent again, as the waiting POSTs above are.
		for deadline := time.Now().Add(30 * time.Second); a.err == nil && (a.code >= 500 || a.code == http.StatusTooManyRequests) && time.Now().Before(deadline); {
			t.Logf("POST %s without Prefer: %v; sent again", k, a)
			time.Sleep(100 * time.Millisecond) // the client's pace, not a wait for anything
			a = ingPost(client, base, k, 0)
		}
		if a.err != nil || a.code != http.StatusAccepted || a.queued.EventID != ingID(k) || a.queued.State != ingress.StateQueued {
			t.Fatalf("POST %s without Prefer: %v; want 202 naming %s, queued", k, a, ingID(k))
		}
		queuedFirst[k] = a
	}

	// The kill waits until every event is stored (the ingress says
	// queued, or has its record), some waits have ended 200, and a call
	// is in flight: a key called whose record has not been heard.
	seq := map[string]uint64{}
	waitUntil(t, 60*time.Second, "every request stored, some answered 200, a call in flight", func() bool {
		for _, k := range all {
			if seq[k] != 0 {
				continue
			}
			a := ingGet(http.DefaultClient, base, k)
			switch {
			case a.err == nil && a.code == http.StatusOK:
				seq[k] = a.record.Sequence
			case a.err == nil && a.code == http.StatusAccepted && a.queued.State == ingress.StateQueued:
				seq[k] = a.queued.Sequence
			default:
				return false // not stored yet
			}
		}
		now := time.Now()
		answered := 0
		for _, k := range waitKeys {
			if heard.before(k, now) && api.Deleted(account, k) {
				answered++
			}
		}
		inFlight := false
		for _, q := range api.Requests() {
			if q.Method == http.MethodDelete && !heard.before(q.KeyID, now) {
				inFlight = true
			}
		}
		return answered >= 5 && inFlight
	})
	killed := time.Now()
	w1.kill()
	posts.Wait()
	for i, as := range refused {
		for _, a := range as {
			t.Logf("POST %s failed before the kill (%v); sent again", waitKeys[i], a)
		}
	}

	// What the kill left: answered POSTs, cut ones, calls in flight.
	answered, cut := map[string]ingAnswer{}, map[string]ingAnswer{}
	for i, k := range waitKeys {
		a := first[i]
		switch {
		case a.err == nil && (a.code == http.StatusOK || a.code == http.StatusAccepted):
			if a.eventID() != ingID(k) || a.sequence() != seq[k] {
				t.Errorf("POST %s: %v; want event %s at sequence %d", k, a, ingID(k), seq[k])
			}
			if a.code == http.StatusOK && (a.record.Outcome != event.Revoked || a.record.KeyID != k) {
				t.Errorf("POST %s answered 200 with %v; want the key's revoked record", k, a)
			}
			answered[k] = a
		case a.err != nil:
			cut[k] = a
		default:
			t.Errorf("POST %s: %v before the kill; want 200, 202, or no answer", k, a)
		}
	}
	for k, a := range queuedFirst {
		answered[k] = a
	}
	w2start := time.Now()
	inFlight := map[string]bool{}
	for _, q := range api.Requests() {
		// Every DELETE before the second worker started was the first's.
		if q.Method == http.MethodDelete && q.At.Before(w2start) && !heard.before(q.KeyID, killed) {
			inFlight[q.KeyID] = true
		}
	}
	ok200 := 0
	for _, a := range answered {
		if a.code == http.StatusOK {
			ok200++
		}
	}
	t.Logf("SIGKILL with %d POSTs answered (%d of them 200), %d waiting POSTs cut, calls in flight for %v",
		len(answered), ok200, len(cut), sortedKeys(inFlight))
	if len(cut) == 0 {
		t.Fatal("no waiting request was cut by the kill: the test proves nothing about them")
	}

	w2 := startWorker(t, "worker-2", c.URLs(), api, env...)
	w2.waitReady(30 * time.Second)
	ingListening(t, base)

	// The cut POSTs, repeated as a client would: same key, same body.
	retried := map[string]ingAnswer{}
	var mu sync.Mutex
	var repeats sync.WaitGroup
	for k := range cut {
		repeats.Add(1)
		go func() {
			defer repeats.Done()
			var a ingAnswer
			// 409 (still storing) and 503 are for repeating; the kill
			// came after every event was stored, so neither should last.
			for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); {
				a = ingPost(client, base, k, 10)
				if a.err == nil && a.code != http.StatusConflict && a.code != http.StatusServiceUnavailable {
					break
				}
				time.Sleep(200 * time.Millisecond) // a client's pause between attempts, not a synchronisation
			}
			mu.Lock()
			retried[k] = a
			mu.Unlock()
		}()
	}
	repeats.Wait()
	codes := map[int]int{}
	for k, a := range retried {
		codes[a.code]++
		switch {
		case a.err != nil || (a.code != http.StatusOK && a.code != http.StatusAccepted):
			t.Errorf("repeat of %s: %v; want 200 or 202", k, a)
		case a.eventID() != ingID(k) || a.sequence() != seq[k]:
			t.Errorf("repeat of %s answered event %s at sequence %d; want the first request's, %s at %d", k, a.eventID(), a.sequence(), ingID(k), seq[k])
		}
	}
	t.Logf("%d cut POSTs repeated on %s: answers by status %v", len(retried), w2.name, codes)

	// Every event accepted, before or after the kill, ends on the trail
	// and at the stand-in.
	waitSettled(t, js, len(all), 90*time.Second)
	final := map[string]ingAnswer{}
	waitUntil(t, 30*time.Second, "a record for every event at GET /v1/revocations/{id}", func() bool {
		for _, k := range all {
			if _, ok := final[k]; ok {
				continue
			}
			a := ingGet(http.DefaultClient, base, k)
			if a.err != nil || a.code != http.StatusOK {
				return false
			}
			final[k] = a
		}
		return true
	})
	deletes := map[string]int{}
	for _, q := range api.Requests() {
		if q.Method == http.MethodDelete && q.AccountID == account {
			deletes[q.KeyID]++
		}
	}
	outcomes := map[event.Outcome]int{}
	for _, k := range all {
		rec := final[k].record
		outcomes[rec.Outcome]++
		if rec.EventID != ingID(k) || rec.KeyID != k || rec.Sequence != seq[k] {
			t.Errorf("key %s: GET answered event %s of key %s at sequence %d; want %s at %d", k, rec.EventID, rec.KeyID, rec.Sequence, ingID(k), seq[k])
		}
		if !api.Deleted(account, k) {
			t.Errorf("key %s: the stand-in never deleted it", k)
		}
		switch {
		case rec.Outcome == event.Revoked:
		case rec.Outcome == event.NotFound && inFlight[k] && rec.UnansweredCalls >= 1:
			// The first worker's call deleted the key and died before it
			// heard so: the next call met a 404 and the list proved it gone.
		default:
			t.Errorf("key %s: outcome %s (unanswered_calls %d, in flight at the kill: %v); want revoked", k, rec.Outcome, rec.UnansweredCalls, inFlight[k])
		}
		if rec.Attempts != deletes[k] {
			t.Errorf("key %s: the record counts %d attempts; the stand-in saw %d DELETEs", k, rec.Attempts, deletes[k])
		}
		switch {
		case deletes[k] == 1:
		case deletes[k] == 2 && inFlight[k]:
		default:
			t.Errorf("key %s: %d DELETEs (in flight at the kill: %v); want 1, or 2 when in flight", k, deletes[k], inFlight[k])
		}
		recs, err := keyRecords(js, k)
		if err != nil {
			t.Fatalf("key %s: %v", k, err)
		}
		evRecs := eventRecords(recs, seq[k])
		if len(evRecs) != len(recs) || len(recs) == 0 || len(recs) > 2 || (len(recs) == 2 && recs[1].Supersedes != recs[0].seq) {
			t.Errorf("key %s: want one record of event %d (or a not_found and the revoked one that supersedes it), the trail holds:\n%s", k, seq[k], describe(recs))
		}
	}
	// No repeat stored a second event: the work stream took exactly one
	// per key.
	if last := workLastSeq(t, js); last != uint64(len(all)) {
		t.Errorf("the work stream stored %d events for %d keys", last, len(all))
	}
	t.Logf("every one of %d keys revoked; outcomes %v; DELETEs per key %v", len(all), outcomes, ingDeleteCounts(deletes))
}

// ingDeleteCounts is how many keys had each number of DELETEs.
func ingDeleteCounts(deletes map[string]int) map[int]int {
	out := map[int]int{}
	for _, n := range deletes {
		out[n]++
	}
	return out
}
