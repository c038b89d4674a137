package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue/queuetest"
)

// Several Cloudflare accounts (SPEC §6 "Several Cloudflare accounts", §9):
// the built binary reads REVOKER_CREDENTIALS_FILE and calls a stand-in that
// knows several credentials, each charged to a rate budget of its own, as
// Cloudflare charges each account token and each user. What is asserted is
// what the API sees: its request log, with each request's credential and
// budget.

// The accounts of these tests and the secrets the stand-in accepts. The
// tokens never appear in a log or a record.
const (
	maAccA = "acct0a0a"
	maAccB = "acct0b0b"
	maAccC = "acct0c0c"
	maAccD = "acct0d0d"
	maAccN = "acct0e0e" // the account a reload adds

	maTokA    = "e2eAccountTokenA0123456789abcdef"
	maTokA2   = "e2eAccountTokenA2rotated456789ab" // tok-a after its rotation
	maTokBC   = "e2eUserTokenBC0123456789abcdefgh"
	maTokD    = "e2eAccountTokenD0123456789abcdef"
	maTokN    = "e2eAccountTokenN0123456789abcdef"
	maDLQ     = "REVOCATIONS_DLQ"
	maWatchIn = 5 * time.Second // SPEC §6: a change of the file is seen within 5 s
)

// maSecrets are every secret of these tests, so that a test can check none
// reached a log.
var maSecrets = []string{maTokA, maTokA2, maTokBC, maTokD, maTokN}

// credDir is a directory holding a credentials file and the token files it
// names (relative paths are taken from the file's directory).
type credDir struct {
	t   *testing.T
	dir string
}

func newCredDir(t *testing.T) *credDir {
	t.Helper()
	return &credDir{t: t, dir: t.TempDir()}
}

// path is where the credentials file is.
func (d *credDir) path() string { return filepath.Join(d.dir, "credentials.yaml") }

// write replaces the file name in the directory by content, by a rename,
// as a secret mounted by Kubernetes changes: a reader sees the old content
// or the new, never half of it.
func (d *credDir) write(name, content string) {
	d.t.Helper()
	tmp := filepath.Join(d.dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		d.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(d.dir, name)); err != nil {
		d.t.Fatal(err)
	}
}

// maCred is one entry of a credentials file.
type maCred struct {
	name, tokenFile, budget string
	rate                    int
	accounts                []string
}

// credentialsYAML is the credentials file naming creds.
func credentialsYAML(creds ...maCred) string {
	var b strings.Builder
	b.WriteString("credentials:\n")
	for _, c := range creds {
		fmt.Fprintf(&b, "  - name: %s\n    token_file: %s\n    accounts: [%s]\n    budget: %s\n    rate: %d\n",
			c.name, c.tokenFile, strings.Join(c.accounts, ", "), c.budget, c.rate)
	}
	return b.String()
}

// accountsEnv runs the worker on one JetStream server with the
// credentials file; CLOUDFLARE_API_TOKEN, set by fastEnv, is then ignored.
func accountsEnv(d *credDir, extra ...string) []string {
	return append([]string{
		"REVOKER_STREAM_REPLICAS=1",
		"REVOKER_CREDENTIALS_FILE=" + d.path(),
	}, extra...)
}

// publishFor publishes one event for key of acct on subject and returns
// its sequence in the work stream.
func publishFor(t *testing.T, js jetstream.JetStream, subject, acct, key string) uint64 {
	t.Helper()
	body := []byte(`{"account_id":"` + acct + `","key_id":"` + key + `","requested_by":"e2e"}`)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := js.Publish(ctx, subject, body, jetstream.WithMsgID("e2e:"+acct+":"+key))
	if err != nil {
		t.Fatalf("publish %s/%s: %v", acct, key, err)
	}
	return ack.Sequence
}

// publishEach publishes one event per key of acct.
func publishEach(t *testing.T, js jetstream.JetStream, subject, acct string, ks []string) {
	t.Helper()
	for _, k := range ks {
		publishFor(t, js, subject, acct, k)
	}
}

// allDeleted reports whether the stand-in deleted every key of acct.
func allDeleted(api *cloudflaretest.Server, acct string, ks []string) bool {
	for _, k := range ks {
		if !api.Deleted(acct, k) {
			return false
		}
	}
	return true
}

// mostWithin is the most requests of reqs whose arrivals lie within a span
// shorter than one second: the count a limit of "n calls in any second"
// bounds. The check of queue/budget_test.go, with no slack either.
func mostWithin(reqs []cloudflaretest.Request) (most int, at time.Time) {
	ts := make([]time.Time, 0, len(reqs))
	for _, r := range reqs {
		ts = append(ts, r.At)
	}
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	i := 0
	for j := range ts {
		for ts[j].Sub(ts[i]) >= time.Second {
			i++
		}
		if n := j - i + 1; n > most {
			most, at = n, ts[i]
		}
	}
	return most, at
}

// describeFrom lists the requests of reqs that arrived within the second
// from at, for a failure's message.
func describeFrom(reqs []cloudflaretest.Request, at time.Time) string {
	var b strings.Builder
	for _, r := range reqs {
		if !r.At.Before(at) && r.At.Sub(at) < time.Second {
			fmt.Fprintf(&b, "  +%v %s %s %s budget %s: %d\n", r.At.Sub(at).Round(time.Millisecond), r.At.Format(time.StampMilli), r.Method, r.Path, r.Budget, r.Status)
		}
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// describe429 lists the requests of reqs answered 429 and what the same
// budget sent in the second before each, for a failure's message.
func describe429(reqs []cloudflaretest.Request) string {
	var b strings.Builder
	for _, r := range reqs {
		if r.Status == http.StatusTooManyRequests {
			fmt.Fprintf(&b, "429 at %s; budget %s in the second before:\n%s\n", r.At.Format(time.StampMilli), r.Budget,
				describeFrom(ofBudget(reqs, r.Budget), r.At.Add(-time.Second+time.Millisecond)))
		}
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// spanOf is when the first and last DELETE of reqs arrived, and how many
// there were.
func spanOf(reqs []cloudflaretest.Request) (first, last time.Time, n int) {
	for _, r := range reqs {
		if r.Method != http.MethodDelete {
			continue
		}
		if n == 0 || r.At.Before(first) {
			first = r.At
		}
		if r.At.After(last) {
			last = r.At
		}
		n++
	}
	return first, last, n
}

// ofBudget are the requests of reqs charged to budget.
func ofBudget(reqs []cloudflaretest.Request, budget string) []cloudflaretest.Request {
	var out []cloudflaretest.Request
	for _, r := range reqs {
		if r.Budget == budget {
			out = append(out, r)
		}
	}
	return out
}

// statusCount counts the requests of reqs answered status.
func statusCount(reqs []cloudflaretest.Request, status int) int {
	n := 0
	for _, r := range reqs {
		if r.Status == status {
			n++
		}
	}
	return n
}

// checkCredentials asserts that every record of the trail names the
// credential its account's events must be revoked with, and returns how
// many records each credential has.
func checkCredentials(t *testing.T, recs []event.Record, want map[string]string) map[string]int {
	t.Helper()
	per := map[string]int{}
	for _, r := range recs {
		w, ok := want[r.AccountID]
		if !ok {
			continue
		}
		per[r.Credential]++
		if r.Outcome != event.Revoked || r.Credential != w {
			t.Errorf("record of %s/%s: outcome %s, credential %q; want revoked with credential %q",
				r.AccountID, r.KeyID, r.Outcome, r.Credential, w)
		}
	}
	return per
}

// readyBody is /readyz's status and body.
func (w *worker) readyBody() (int, string) {
	resp, err := http.Get("http://" + w.addr + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// credReady reads revoker_ready{condition="credential:<name>"}; -1 while
// the series is not there.
func (w *worker) credReady(name string) float64 {
	v, ok := w.sample("revoker_ready", `condition="credential:`+name+`"`)
	if !ok {
		return -1
	}
	return v
}

// checkNoSecret fails if a worker's log holds any of the secrets.
func checkNoSecret(t *testing.T, ws ...*worker) {
	t.Helper()
	for _, w := range ws {
		b, err := os.ReadFile(w.log)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range maSecrets {
			if strings.Contains(string(b), s) {
				t.Errorf("the log of %s holds a secret", w.name)
			}
		}
	}
}

// deadLetters reads the dead-letter stream: each record's reason by the
// account and key of its event.
func deadLetters(t *testing.T, js jetstream.JetStream) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, maDLQ)
	if err != nil {
		t.Fatalf("dead-letter stream: %v", err)
	}
	out := map[string]string{}
	for seq := uint64(1); ; {
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(">"))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out
		}
		if err != nil {
			t.Fatalf("dead-letter stream: %v", err)
		}
		var ev struct {
			AccountID string `json:"account_id"`
			KeyID     string `json:"key_id"`
		}
		_ = json.Unmarshal(m.Data, &ev)
		out[ev.AccountID+"/"+ev.KeyID] = m.Header.Get("Revoker-Reason")
		seq = m.Sequence + 1
	}
}

// twoBudgets is a stand-in with account A on its own account token and
// budget, and accounts B and C on one user token sharing the user's
// budget, each budget at rate calls a second (the stand-in refuses what a
// budget's rate would not allow), and a credentials file saying so.
func twoBudgets(t *testing.T, rate int) (*cloudflaretest.Server, *credDir) {
	t.Helper()
	api := cloudflaretest.NewServer(
		cloudflaretest.WithAccountToken("cred-a", maTokA, "acct-a", maAccA),
		cloudflaretest.WithUserToken("cred-bc", maTokBC, "user-bc", maAccB, maAccC),
		cloudflaretest.WithBudgetRate("acct-a", rate),
		cloudflaretest.WithBudgetRate("user-bc", rate),
	)
	t.Cleanup(api.Close)
	d := newCredDir(t)
	d.write("tok-a", maTokA+"\n")
	d.write("tok-bc", maTokBC)
	d.write("credentials.yaml", credentialsYAML(
		maCred{name: "cred-a", tokenFile: "tok-a", budget: "acct-a", rate: rate, accounts: []string{maAccA}},
		maCred{name: "cred-bc", tokenFile: "tok-bc", budget: "user-bc", rate: rate, accounts: []string{maAccB, maAccC}},
	))
	return api, d
}

// TestAccountsOnTwoBudgets: account A on its own account token and budget,
// accounts B and C on one user token sharing the user's budget, each
// budget at 5 calls a second, and an address limit of 8, below their sum.
// Two replicas revoke 40 events of each account. The API must see, in any
// span shorter than a second, at most 5 calls of each budget and at most 8
// in all (no slack: the check of queue/budget_test.go), and never a 429;
// every key is deleted and every record names the credential of its
// account. The two budgets work at once, not one after the other.
func TestAccountsOnTwoBudgets(t *testing.T) {
	skipShort(t)
	const rate, ipLimit, perAccount = 5, 8, 40
	srv := queuetest.Server(t)
	api, d := twoBudgets(t, rate)
	env := accountsEnv(d, fmt.Sprintf("REVOKER_IP_RATE_LIMIT=%d", ipLimit))
	w1 := startWorker(t, "replica-1", srv.ClientURL(), api, env...)
	w2 := startWorker(t, "replica-2", srv.ClientURL(), api, env...)
	w1.waitReady(30 * time.Second)
	w2.waitReady(30 * time.Second)

	_, js := queuetest.ConnectURL(t, srv.ClientURL())
	accts := []string{maAccA, maAccB, maAccC}
	ks := keys("two", perAccount)
	start := time.Now()
	// Interleaved, so both budgets have work all along.
	for _, k := range ks {
		for _, a := range accts {
			publishFor(t, js, "revoke.scheduled", a, k)
		}
	}
	waitUntil(t, 90*time.Second, "every key of every account deleted", func() bool {
		for _, a := range accts {
			if !allDeleted(api, a, ks) {
				return false
			}
		}
		return true
	})
	took := time.Since(start)
	waitSettled(t, js, len(accts)*perAccount, 30*time.Second)

	reqs := api.Requests()
	for _, b := range []string{"acct-a", "user-bc"} {
		got := ofBudget(reqs, b)
		most, at := mostWithin(got)
		t.Logf("budget %s: %d calls, at most %d within a second", b, len(got), most)
		if most > rate {
			t.Errorf("budget %s: %d calls within one second from %s; its rate is %d:\n%s", b, most, at.Format(time.StampMilli), rate, describeFrom(got, at))
		}
		if n := w1.metric("revoker_budget_calls_total", `budget="`+b+`"`) + w2.metric("revoker_budget_calls_total", `budget="`+b+`"`); int(n) != len(got) {
			t.Errorf("revoker_budget_calls_total{budget=%q} is %v over both replicas; the API saw %d calls of the budget", b, n, len(got))
		}
	}
	// Budgets are the credentials file's names (SPEC §8): none is nameless.
	for _, name := range []string{"revoker_budget_calls_total", "revoker_api_paused", "revoker_rate_limit_wait_seconds_count"} {
		if _, found := w1.sample(name, `budget=""`); found {
			t.Errorf(`%s has a series with budget="" beside the file's budgets`, name)
		}
	}
	most, at := mostWithin(reqs)
	t.Logf("all budgets: %d calls, at most %d within a second (REVOKER_IP_RATE_LIMIT=%d)", len(reqs), most, ipLimit)
	if most > ipLimit {
		t.Errorf("%d calls within one second from %s; the address limit is %d:\n%s", most, at.Format(time.StampMilli), ipLimit, describeFrom(reqs, at))
	}
	if n := statusCount(reqs, http.StatusTooManyRequests); n != 0 || api.Throttled() != 0 {
		t.Errorf("%d requests answered 429:\n%s", n, describe429(reqs))
	}
	first, last, deletes := spanOf(reqs)
	for _, r := range reqs {
		if r.Method == http.MethodDelete && r.Credential != map[string]string{maAccA: "cred-a", maAccB: "cred-bc", maAccC: "cred-bc"}[r.AccountID] {
			t.Errorf("DELETE of %s/%s sent with credential %q", r.AccountID, r.KeyID, r.Credential)
		}
	}
	pace := float64(deletes-1) / last.Sub(first).Seconds()
	t.Logf("%d DELETEs in %v at %.2f a second; every key deleted %v after the first publish", deletes, last.Sub(first).Round(time.Millisecond), pace, took.Round(time.Millisecond))
	// Both budgets at work at once, not one after the other: while
	// acct-a's DELETEs went on, user-bc's did too, at about the same
	// pace. Counted, not timed, so a slow machine slows both alike.
	aFirst, aLast, aDeletes := spanOf(ofBudget(reqs, "acct-a"))
	beside := 0
	for _, r := range ofBudget(reqs, "user-bc") {
		if r.Method == http.MethodDelete && !r.At.Before(aFirst) && !r.At.After(aLast) {
			beside++
		}
	}
	t.Logf("while acct-a made its %d DELETEs, user-bc made %d", aDeletes, beside)
	if beside < aDeletes/2 {
		t.Errorf("while acct-a made its %d DELETEs, user-bc made only %d, though it had work all along: the budgets did not work at once", aDeletes, beside)
	}

	per := checkCredentials(t, readTrail(t, js), map[string]string{maAccA: "cred-a", maAccB: "cred-bc", maAccC: "cred-bc"})
	if per["cred-a"] != perAccount || per["cred-bc"] != 2*perAccount {
		t.Errorf("records by credential %v; want cred-a %d, cred-bc %d", per, perAccount, 2*perAccount)
	}
	checkNoSecret(t, w1, w2)
}

// holdResponder answers the first DELETE of key with a 429 asking for
// hold, as Cloudflare does past a budget's limit, and says when it did.
type holdResponder struct {
	key  string
	hold time.Duration

	once sync.Once
	mu   sync.Mutex
	at   time.Time // arrival of the request answered 429
}

func (h *holdResponder) respond(r cloudflaretest.Request) (int, http.Header, string, bool) {
	if r.Method != http.MethodDelete || r.KeyID != h.key {
		return 0, nil, "", false
	}
	answered := false
	h.once.Do(func() {
		h.mu.Lock()
		h.at = r.At
		h.mu.Unlock()
		answered = true
	})
	if !answered {
		return 0, nil, "", false
	}
	hdr := http.Header{"Retry-After": {fmt.Sprint(int(h.hold.Seconds()))}}
	return http.StatusTooManyRequests, hdr,
		`{"success":false,"errors":[{"code":971,"message":"Please wait and consider throttling your request speed"}],"messages":[],"result":null}`, true
}

// heldAt is when the 429 was answered; zero before.
func (h *holdResponder) heldAt() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.at
}

// TestAccountsHoldAndRefusal: three credentials on three budgets, two
// replicas. A 429 with Retry-After on account A's budget holds A's events
// on both replicas, and only them: the events of B and C (another budget)
// are revoked meanwhile, and no call of A's budget starts before the hold
// is over. A credential the API refuses (its token disabled) makes only its
// own account (D) wait: credential:cred-d is 0 in revoker_ready, /readyz
// answers 200 and names it, D's events are neither revoked nor dead-lettered
// while the others are, and once the token works again they are revoked.
func TestAccountsHoldAndRefusal(t *testing.T) {
	skipShort(t)
	const rate, hold = 5, 10 * time.Second
	// holdSlack covers the way of the 429 from the stand-in to the worker:
	// the hold runs from the answer's arrival there, not from the request's
	// here.
	const holdSlack = 250 * time.Millisecond
	holdKey := "hold00000"
	hr := &holdResponder{key: holdKey, hold: hold}
	srv := queuetest.Server(t)
	api := cloudflaretest.NewServer(
		cloudflaretest.WithAccountToken("cred-a", maTokA, "acct-a", maAccA),
		cloudflaretest.WithUserToken("cred-bc", maTokBC, "user-bc", maAccB, maAccC),
		cloudflaretest.WithAccountToken("cred-d", maTokD, "acct-d", maAccD),
		cloudflaretest.WithBudgetRate("acct-a", rate),
		cloudflaretest.WithBudgetRate("user-bc", rate),
		cloudflaretest.WithBudgetRate("acct-d", rate),
		cloudflaretest.WithResponder(hr.respond),
	)
	t.Cleanup(api.Close)
	api.SetTokenStatus("cred-d", "disabled")
	d := newCredDir(t)
	d.write("tok-a", maTokA)
	d.write("tok-bc", maTokBC)
	d.write("tok-d", maTokD)
	d.write("credentials.yaml", credentialsYAML(
		maCred{name: "cred-a", tokenFile: "tok-a", budget: "acct-a", rate: rate, accounts: []string{maAccA}},
		maCred{name: "cred-bc", tokenFile: "tok-bc", budget: "user-bc", rate: rate, accounts: []string{maAccB, maAccC}},
		maCred{name: "cred-d", tokenFile: "tok-d", budget: "acct-d", rate: rate, accounts: []string{maAccD}},
	))
	env := accountsEnv(d)
	ws := []*worker{
		startWorker(t, "replica-1", srv.ClientURL(), api, env...),
		startWorker(t, "replica-2", srv.ClientURL(), api, env...),
	}
	for _, w := range ws {
		w.waitReady(30 * time.Second)
		waitUntil(t, 30*time.Second, w.name+": credential:cred-d not ready, cred-a and cred-bc ready", func() bool {
			return w.credReady("cred-d") == 0 && w.credReady("cred-a") == 1 && w.credReady("cred-bc") == 1
		})
		code, body := w.readyBody()
		t.Logf("%s /readyz: %d %q", w.name, code, body)
		if code != http.StatusOK || !strings.Contains(body, "credential:cred-d") {
			t.Errorf("%s: /readyz answers %d %q; want 200 naming credential:cred-d", w.name, code, body)
		}
	}

	_, js := queuetest.ConnectURL(t, srv.ClientURL())
	dKeys := keys("dee", 4)
	publishEach(t, js, "revoke.urgent", maAccD, dKeys)
	aKeys := append([]string{holdKey}, keys("aaa", 9)...)
	publishEach(t, js, "revoke.urgent", maAccA, aKeys)
	waitUntil(t, 30*time.Second, "the 429 on account A's budget", func() bool { return !hr.heldAt().IsZero() })
	heldAt := hr.heldAt()
	holdEnd := heldAt.Add(hold)

	// B and C, on another budget, go on while A's budget is held.
	bKeys, cKeys := keys("bee", 8), keys("cee", 8)
	for i := range bKeys {
		publishFor(t, js, "revoke.urgent", maAccB, bKeys[i])
		publishFor(t, js, "revoke.urgent", maAccC, cKeys[i])
	}
	// While B and C are revoked, the replicas' revoker_api_paused is
	// sampled (every 200 ms, not to load the machine): acct-a's must show
	// the hold, user-bc's never.
	var pausedA, pausedBC bool
	var sampled time.Time
	samplePaused := func() {
		if time.Since(sampled) < 200*time.Millisecond {
			return
		}
		sampled = time.Now()
		for _, w := range ws {
			pausedA = pausedA || w.metric("revoker_api_paused", `budget="acct-a"`) == 1
			pausedBC = pausedBC || w.metric("revoker_api_paused", `budget="user-bc"`) == 1
		}
	}
	waitUntil(t, 30*time.Second, "every key of B and C deleted", func() bool {
		samplePaused()
		return allDeleted(api, maAccB, bKeys) && allDeleted(api, maAccC, cKeys)
	})
	var lastBC time.Time
	for _, r := range api.Requests() {
		if r.Budget == "user-bc" && r.Status == http.StatusOK && r.At.After(lastBC) {
			lastBC = r.At
		}
	}
	t.Logf("429 on acct-a at %s for %v; B and C done %v after it", heldAt.Format(time.StampMilli), hold, lastBC.Sub(heldAt).Round(time.Millisecond))
	if !lastBC.Before(holdEnd) {
		t.Errorf("B and C were done only %v after A's 429: they waited for a hold of another budget", lastBC.Sub(heldAt))
	}

	for !pausedA && time.Now().Before(holdEnd) {
		samplePaused()
		time.Sleep(10 * time.Millisecond) // polling a condition
	}
	if !pausedA {
		t.Errorf("no replica showed revoker_api_paused{budget=\"acct-a\"} 1 during the hold")
	}
	if pausedBC {
		t.Errorf("revoker_api_paused{budget=\"user-bc\"} was 1 while only acct-a was held")
	}
	waitUntil(t, 60*time.Second, "every key of A deleted after the hold", func() bool { return allDeleted(api, maAccA, aKeys) })
	reqs := api.Requests()
	for _, r := range ofBudget(reqs, "acct-a") {
		if r.At.After(heldAt) && r.At.Before(holdEnd.Add(-holdSlack)) {
			t.Errorf("a %s %s of budget acct-a arrived %v after its 429, inside the hold of %v", r.Method, r.Path, r.At.Sub(heldAt).Round(time.Millisecond), hold)
		}
	}
	// The budgets' own rates are TestAccountsOnTwoBudgets' to check; here,
	// the budget with no hold must have met no 429.
	if n := statusCount(ofBudget(reqs, "user-bc"), http.StatusTooManyRequests); n != 0 {
		t.Errorf("%d requests of budget user-bc answered 429:\n%s", n, describe429(ofBudget(reqs, "user-bc")))
	}
	if n := api.Throttled(); n != 0 {
		t.Logf("besides the scripted one, %d requests answered 429 for a budget's rate:\n%s", n, describe429(reqs))
	}

	// D still waits: not revoked, not dead-lettered, still not ready.
	for _, k := range dKeys {
		if api.Deleted(maAccD, k) {
			t.Errorf("key %s of account D deleted with a refused credential", k)
		}
	}
	for k, reason := range deadLetters(t, js) {
		t.Errorf("dead letter for %s: %s", k, reason)
	}
	for _, w := range ws {
		if v := w.credReady("cred-d"); v != 0 {
			t.Errorf("%s: credential:cred-d = %v while the token is disabled", w.name, v)
		}
		if code, body := w.readyBody(); code != http.StatusOK {
			t.Errorf("%s: /readyz answers %d %q with one of three credentials refused", w.name, code, body)
		}
	}
	dCalls := 0
	for _, r := range reqs {
		if r.AccountID == maAccD && r.Method == http.MethodDelete {
			dCalls++
		}
	}
	t.Logf("while cred-d was refused: %d DELETEs for account D, %d calls charged to acct-d", dCalls, len(ofBudget(reqs, "acct-d")))

	// The token works again: D's events were kept, and are revoked now.
	api.SetTokenStatus("cred-d", "active")
	waitUntil(t, 90*time.Second, "every key of D deleted once its token works", func() bool { return allDeleted(api, maAccD, dKeys) })
	waitSettled(t, js, len(aKeys)+len(bKeys)+len(cKeys)+len(dKeys), 30*time.Second)
	per := checkCredentials(t, readTrail(t, js), map[string]string{maAccA: "cred-a", maAccB: "cred-bc", maAccC: "cred-bc", maAccD: "cred-d"})
	t.Logf("records by credential: %v", per)
	checkNoSecret(t, ws...)
}

// firstOf is the arrival of the first request of reqs at or after since
// that credential (the stand-in's name) made; zero when none did.
func firstOf(reqs []cloudflaretest.Request, credential string, since time.Time) time.Time {
	for _, r := range reqs {
		if r.Credential == credential && !r.At.Before(since) {
			return r.At
		}
	}
	return time.Time{}
}

// waitFirstCall waits until the stand-in sees a request made with
// credential since, and asserts it came within maWatchIn of since (plus
// the slack of the call itself).
func waitFirstCall(t *testing.T, api *cloudflaretest.Server, credential string, since time.Time, what string) {
	t.Helper()
	const slack = 500 * time.Millisecond
	var at time.Time
	waitUntil(t, 30*time.Second, what, func() bool {
		at = firstOf(api.Requests(), credential, since)
		return !at.IsZero()
	})
	took := at.Sub(since)
	t.Logf("%s: %v after the change", what, took.Round(time.Millisecond))
	if took > maWatchIn+slack {
		t.Errorf("%s took %v; a change of the file must take effect within %v", what, took.Round(time.Millisecond), maWatchIn)
	}
}

// TestCredentialsFileReload: one replica, its credentials file changed
// while it runs. An event for an account no credential names is
// dead-lettered account_not_allowed with no call; then a credential for
// that account is added to the file, and a token file is rotated (the API
// refusing the old token from then on): both take effect within 5 s with
// no restart, events of the new account are revoked with the new
// credential, and the calls of the rotated credential send the new token.
// Last, the file is broken (not YAML): the previous set stays in use,
// events of both accounts are still revoked, and the worker says so once.
func TestCredentialsFileReload(t *testing.T) {
	skipShort(t)
	const rate = 10
	srv := queuetest.Server(t)
	// The stand-in knows the rotated token as a credential of its own
	// name, so its log tells which token each call sent.
	api := cloudflaretest.NewServer(
		cloudflaretest.WithAccountToken("cred-a", maTokA, "acct-a", maAccA),
		cloudflaretest.WithAccountToken("cred-a-rotated", maTokA2, "acct-a", maAccA),
		cloudflaretest.WithAccountToken("cred-n", maTokN, "acct-n", maAccN),
	)
	t.Cleanup(api.Close)
	d := newCredDir(t)
	d.write("tok-a", maTokA)
	d.write("tok-n", maTokN)
	credA := maCred{name: "cred-a", tokenFile: "tok-a", budget: "acct-a", rate: rate, accounts: []string{maAccA}}
	credN := maCred{name: "cred-n", tokenFile: "tok-n", budget: "acct-n", rate: rate, accounts: []string{maAccN}}
	d.write("credentials.yaml", credentialsYAML(credA))
	w := startWorker(t, "replica", srv.ClientURL(), api, accountsEnv(d)...)
	w.waitReady(30 * time.Second)
	_, js := queuetest.ConnectURL(t, srv.ClientURL())

	// Before: A is served, N is not allowed.
	a1 := keys("aone", 3)
	publishEach(t, js, "revoke.scheduled", maAccA, a1)
	publishFor(t, js, "revoke.scheduled", maAccN, "early0000")
	waitUntil(t, 30*time.Second, "A's first keys deleted", func() bool { return allDeleted(api, maAccA, a1) })
	waitUntil(t, 30*time.Second, "the event of account N dead-lettered", func() bool { return streamMsgs(js, maDLQ) >= 1 })
	if got := deadLetters(t, js); len(got) != 1 || got[maAccN+"/early0000"] != string(event.AccountNotAllowed) {
		t.Errorf("dead letters %v; want %s/early0000: %s", got, maAccN, event.AccountNotAllowed)
	}
	for _, r := range api.Requests() {
		if r.AccountID == maAccN {
			t.Errorf("a %s of account N before any credential named it", r.Method)
		}
	}

	// A credential added: checked and used within 5 s, no restart.
	added := time.Now()
	d.write("credentials.yaml", credentialsYAML(credA, credN))
	waitFirstCall(t, api, "cred-n", added, "the first call with the added credential")
	waitUntil(t, 10*time.Second, "credential:cred-n ready", func() bool { return w.credReady("cred-n") == 1 })
	n1 := keys("none", 3)
	publishEach(t, js, "revoke.scheduled", maAccN, n1)
	waitUntil(t, 30*time.Second, "N's keys deleted", func() bool { return allDeleted(api, maAccN, n1) })

	// A token file rotated: the API takes only the new token from now on.
	rotated := time.Now()
	api.SetTokenStatus("cred-a", "disabled")
	d.write("tok-a", maTokA2+"\n")
	waitFirstCall(t, api, "cred-a-rotated", rotated, "the first call with the rotated token")
	a2 := keys("atwo", 3)
	publishEach(t, js, "revoke.scheduled", maAccA, a2)
	waitUntil(t, 30*time.Second, "A's keys deleted with the rotated token", func() bool { return allDeleted(api, maAccA, a2) })
	since := firstOf(api.Requests(), "cred-a-rotated", rotated)
	for _, r := range api.Requests() {
		if r.AccountID == maAccA && r.At.After(since) && r.Credential != "cred-a-rotated" {
			t.Errorf("a %s of account A %v after the rotation took effect sent the old token (answered %d)",
				r.Method, r.At.Sub(rotated).Round(time.Millisecond), r.Status)
		}
	}

	// A broken file: the set in use stays, the worker says so once.
	broken := time.Now()
	d.write("credentials.yaml", "credentials:\n  - name: [cred-a\n    token_file: tok-a\n")
	const complaint = "credentials file cannot be used"
	waitUntil(t, 3*maWatchIn, "the worker to report the broken file", func() bool { return w.logContains(complaint) })
	t.Logf("broken file reported %v after the write", time.Since(broken).Round(time.Millisecond))
	a3, n3 := keys("athree", 3), keys("nthree", 3)
	publishEach(t, js, "revoke.scheduled", maAccA, a3)
	publishEach(t, js, "revoke.scheduled", maAccN, n3)
	// Events keep being revoked, and the file is read again and again
	// meanwhile (every watch interval): it must be reported only once.
	waitUntil(t, 60*time.Second, "A's and N's keys deleted with the file broken, for two watch periods", func() bool {
		return allDeleted(api, maAccA, a3) && allDeleted(api, maAccN, n3) && time.Since(broken) > 2*maWatchIn
	})
	if n := w.logCount(complaint); n != 1 {
		t.Errorf("the broken file was reported %d times; want once", n)
	}
	if !w.ready() {
		code, body := w.readyBody()
		t.Errorf("not ready with the previous set in use: %d %q", code, body)
	}
	if n := streamMsgs(js, maDLQ); n != 1 {
		t.Errorf("%d dead letters; want only the event sent before N had a credential", n)
	}

	total := len(a1) + len(a2) + len(a3) + len(n1) + len(n3) + 1
	waitSettled(t, js, total, 30*time.Second)
	recs := readTrail(t, js)
	var kept []event.Record
	for _, r := range recs {
		if r.KeyID == "early0000" {
			if r.Outcome != event.DeadLettered || r.Reason != event.AccountNotAllowed {
				t.Errorf("record of the early event of N: %s %s; want dead_lettered account_not_allowed", r.Outcome, r.Reason)
			}
			continue
		}
		kept = append(kept, r)
	}
	per := checkCredentials(t, kept, map[string]string{maAccA: "cred-a", maAccN: "cred-n"})
	t.Logf("records by credential: %v", per)
	if per["cred-a"] != len(a1)+len(a2)+len(a3) || per["cred-n"] != len(n1)+len(n3) {
		t.Errorf("records by credential %v", per)
	}
	checkNoSecret(t, w)
}

// TestAccountsIncidentNotBehindAnothersBacklog: an incident in account A
// (thirty urgent revocations, on a budget of 2 calls a second) is
// published just before one urgent revocation of account B, on a budget of
// its own. B's must not wait behind A's backlog (SPEC §9: beyond the
// shared concurrency and address limit, which leave room here): A's events
// waiting for their own budget leave their places in hand to B's. Counted,
// not timed: B's DELETE comes before A's fifth.
func TestAccountsIncidentNotBehindAnothersBacklog(t *testing.T) {
	skipShort(t)
	const rate, incident = 2, 30
	srv := queuetest.Server(t)
	api, d := twoBudgets(t, rate)
	// Two calls in flight: the urgent lane holds four events.
	w := startWorker(t, "replica-1", srv.ClientURL(), api, accountsEnv(d, "REVOKER_CONCURRENCY=2")...)
	w.waitReady(30 * time.Second)
	_, js := queuetest.ConnectURL(t, srv.ClientURL())
	publishEach(t, js, "revoke.urgent", maAccA, keys("inc", incident))
	publishFor(t, js, "revoke.urgent", maAccB, "other")
	waitUntil(t, 60*time.Second, "B's key deleted", func() bool { return api.Deleted(maAccB, "other") })

	before := 0
	for _, r := range api.Requests() {
		if r.Method != http.MethodDelete {
			continue
		}
		if r.AccountID == maAccB {
			break
		}
		if r.AccountID == maAccA {
			before++
		}
	}
	t.Logf("%d DELETEs of account A came before B's", before)
	if before >= 5 {
		t.Errorf("%d of A's DELETEs came before B's: B's revocation waited behind A's backlog on A's budget", before)
	}
}
