package routing

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/credentials"
	"github.com/revoker/revoker/metrics"
	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/worker"
)

// TestBudgetRate: budgets are cut in one proportion so that together they
// stay under the address limit; one with no limit of its own counts at the
// whole limit.
func TestBudgetRate(t *testing.T) {
	for _, tc := range []struct {
		name     string
		rate, ip float64
		all      map[string]float64
		want     float64
	}{
		{"under the limit: unchanged", 4, 150, map[string]float64{"a": 4, "b": 4}, 4},
		{"no address limit", 0, 0, map[string]float64{"a": 0}, 0},
		{"two of 5 under 8: 4 each", 5, 8, map[string]float64{"a": 5, "b": 5}, 4},
		{"no limit of its own: the address limit", 0, 150, map[string]float64{"a": 0}, 150},
		{"no limit beside another: a share", 0, 150, map[string]float64{"a": 0, "b": 50}, 112.5},
		{"single credential above the limit", 400, 150, map[string]float64{"": 400}, 150},
	} {
		if got := Rate(tc.rate, tc.all, tc.ip); got != tc.want {
			t.Errorf("%s: Rate(%v, %v, %v) = %v, want %v", tc.name, tc.rate, tc.all, tc.ip, got, tc.want)
		}
	}
}

// TestTurnChargesTheAccountsBudget: a call outside an event (a key list of
// the periodic check) is charged to its account's budget, not another's;
// an account no credential serves gets no turn.
func TestTurnChargesTheAccountsBudget(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"a", "b"} {
		if err := os.WriteFile(filepath.Join(dir, n+".token"), []byte("token-"+n), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	file := filepath.Join(dir, "credentials.yaml")
	body := "credentials:\n" +
		"  - name: cred-a\n    token_file: a.token\n    accounts: [acct1]\n    budget: a\n" +
		"  - name: cred-b\n    token_file: b.token\n    accounts: [acct2]\n    budget: b\n"
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	set, err := credentials.Load(file, credentials.Options{BaseURL: "http://127.0.0.1:1", Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(prometheus.NewRegistry(), metrics.Labels{Budgets: []string{"a", "b"}}, metrics.Build{})
	r := &Routes{router: credentials.NewRouter(set), log: zap.NewNop(), budgets: map[string]*BudgetGate{}, metrics: m.Budget,
		make: func(name string, rate float64) (*BudgetGate, error) {
			return &BudgetGate{gate: throttle.New(throttle.Config{Priorities: 1, Concurrency: 1, Rate: rate}), m: m.Budget(name), rate: rate}, nil
		}}
	t.Cleanup(r.Close)
	shared := throttle.New(throttle.Config{Priorities: 1, Concurrency: 1})
	t.Cleanup(shared.Close)

	turn := r.Turn(shared, 0)
	release, err := turn(context.Background(), "acct2")
	if err != nil {
		t.Fatal(err)
	}
	release(nil)
	if a, b := testutil.ToFloat64(m.Budget("a").Calls), testutil.ToFloat64(m.Budget("b").Calls); a != 0 || b != 1 {
		t.Errorf("calls charged: a %v, b %v; want 0 and 1", a, b)
	}
	if _, err := turn(context.Background(), "acct9"); !errors.Is(err, credentials.ErrAccountNotAllowed) {
		t.Errorf("turn for an account none serves: %v", err)
	}
}

// reloading is Routes over a credentials file that reload rewrites, the
// way the file's watch stores a set it has read, with budgets made as
// test gates at the rate asked for.
func reloading(t *testing.T, ip float64, body string, log *zap.Logger) (r *Routes, reload func(body string)) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "t"), []byte("token"), 0o600); err != nil {
		t.Fatal(err)
	}
	load := func(body string) *credentials.Set {
		writeTokens(t, dir, body)
		file := filepath.Join(dir, "credentials.yaml")
		if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		set, err := credentials.Load(file, credentials.Options{BaseURL: "http://127.0.0.1:1", Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return set
	}
	m := metrics.New(prometheus.NewRegistry(), metrics.Labels{Budgets: []string{"a", "b"}}, metrics.Build{})
	router := credentials.NewRouter(load(body))
	r = &Routes{router: router, log: log, budgets: map[string]*BudgetGate{}, metrics: m.Budget, ipLimit: ip,
		make: func(name string, rate float64) (*BudgetGate, error) {
			return &BudgetGate{gate: throttle.New(throttle.Config{Priorities: 1, Concurrency: 1, Rate: rate}), m: m.Budget(name), rate: rate}, nil
		}}
	t.Cleanup(r.Close)
	return r, func(body string) { router.Store(load(body)) }
}

// credential is one credential of a credentials file, a budget of its own
// with a token of its own (writeTokens).
func credential(name, account string, rate int) string {
	return fmt.Sprintf("  - name: %s\n    token_file: t-%s\n    accounts: [%s]\n    rate: %d\n", name, name, account, rate)
}

// writeTokens writes, into dir, a token file of its own for each relative
// token_file of body not there yet: one token charged to two budgets is
// refused.
func writeTokens(t *testing.T, dir, body string) {
	t.Helper()
	for _, m := range regexp.MustCompile(`token_file: ([^/\s]+)\n`).FindAllStringSubmatch(body, -1) {
		path := filepath.Join(dir, m[1])
		if _, err := os.Stat(path); err == nil {
			continue
		}
		if err := os.WriteFile(path, []byte("token-"+m[1]), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// permitsTake is how long n permits of rt's gate take, one after another.
func permitsTake(t *testing.T, rt worker.Route, n int) time.Duration {
	t.Helper()
	start := time.Now()
	for range n {
		pm, err := rt.Gate.Acquire(context.Background(), 0)
		if err != nil {
			t.Fatal(err)
		}
		pm.Release()
	}
	return time.Since(start)
}

// TestReloadedBudgetKeepsTheAddressLimit: a budget added by a reload is
// cut from the credentials in use, and the budgets made before it are cut
// again, as a replica started after the reload cuts them: 100 + 100 under
// 150 is 75 + 75 on every replica, whatever each made before (SPEC §9:
// together they stay under the address limit).
func TestReloadedBudgetKeepsTheAddressLimit(t *testing.T) {
	one := "credentials:\n" + credential("a", "acct1", 100)
	r, reload := reloading(t, 150, one, zap.NewNop())
	a, ok := r.Route("acct1")
	if !ok || a.Rate != 100 {
		t.Fatalf("budget a at %v, want 100 (alone under 150)", a.Rate)
	}
	reload(one + credential("b", "acct2", 100))
	b, ok := r.Route("acct2")
	a, _ = r.Route("acct1")
	if !ok || a.Rate != 75 || b.Rate != 75 {
		t.Errorf("budgets at %v and %v after the reload, want 75 and 75: the share of 150 of each", a.Rate, b.Rate)
	}
	// The gate made at 100 keeps to its cut.
	if d, want := permitsTake(t, a, 11), 10*throttle.Interval(75); d < want {
		t.Errorf("11 calls of budget a within %v after it was cut to 75/s, want at least %v", d, want)
	}
}

// TestReloadedBudgetRateFollowsTheFile: a rate changed in the credentials
// file, and a share of the address limit freed by a budget removed, apply
// when the file is read again (SPEC §6), higher as well as lower; without
// an address limit a rate can be lowered and raised back while revoker
// runs, and one raised beyond the rate the budget started at applies at
// the next start, which the log says.
func TestReloadedBudgetRateFollowsTheFile(t *testing.T) {
	head := "credentials:\n"
	r, reload := reloading(t, 150, head+credential("a", "acct1", 4), zap.NewNop())
	a, _ := r.Route("acct1")
	if a.Rate != 4 {
		t.Fatalf("budget a at %v, want 4", a.Rate)
	}
	if d, want := permitsTake(t, a, 3), 2*throttle.Interval(4); d < want {
		t.Errorf("3 calls of budget a within %v at 4/s, want at least %v", d, want)
	}

	reload(head + credential("a", "acct1", 100))
	if a, _ = r.Route("acct1"); a.Rate != 100 {
		t.Errorf("budget a at %v after its rate was raised to 100, want 100", a.Rate)
	}
	permitsTake(t, a, 1) // the slot spaced at 4/s
	// At 100/s, not 4/s: well within the time 9 calls take at 4/s.
	if d, slow := permitsTake(t, a, 10), 9*throttle.Interval(4); d >= slow {
		t.Errorf("10 calls of budget a took %v after its rate was raised to 100/s: still at 4/s", d)
	}

	reload(head + credential("a", "acct1", 100) + credential("b", "acct2", 150))
	b, _ := r.Route("acct2")
	if a, _ = r.Route("acct1"); a.Rate != 60 || b.Rate != 90 {
		t.Errorf("budgets at %v and %v, want 60 and 90: 100 and 150 cut to 150 together", a.Rate, b.Rate)
	}
	if d, want := permitsTake(t, a, 7), 6*throttle.Interval(60); d < want {
		t.Errorf("7 calls of budget a within %v at its share of 60/s, want at least %v", d, want)
	}
	reload(head + credential("a", "acct1", 100))
	if a, _ = r.Route("acct1"); a.Rate != 100 {
		t.Errorf("budget a at %v once b was removed, want its own 100 back", a.Rate)
	}

	core, logs := observer.New(zapcore.WarnLevel)
	r, reload = reloading(t, 0, head+credential("a", "acct1", 8), zap.New(core))
	if a, _ = r.Route("acct1"); a.Rate != 8 {
		t.Fatalf("budget a at %v without an address limit, want 8", a.Rate)
	}
	reload(head + credential("a", "acct1", 2))
	if a, _ = r.Route("acct1"); a.Rate != 2 {
		t.Errorf("budget a at %v after its rate was lowered to 2 without an address limit, want 2", a.Rate)
	}
	if d, want := permitsTake(t, a, 4), 3*throttle.Interval(2); d < want {
		t.Errorf("4 calls of budget a within %v after its rate was lowered to 2/s, want at least %v", d, want)
	}
	reload(head + credential("a", "acct1", 8))
	if a, _ = r.Route("acct1"); a.Rate != 8 {
		t.Errorf("budget a at %v after its rate was raised back to 8, want 8", a.Rate)
	}
	if logs.Len() != 0 {
		t.Errorf("warnings for rates the budget can keep: %v", logs.All())
	}
	reload(head + credential("a", "acct1", 16))
	if a, _ = r.Route("acct1"); a.Rate != 8 {
		t.Errorf("budget a at %v after its rate was raised to 16 beyond the 8 it started at, without an address limit: want 8 until the next start", a.Rate)
	}
	if logs.FilterMessageSnippet("applies when revoker starts again").Len() != 1 {
		t.Errorf("a raise that applies at the next start, not logged once as such: %v", logs.All())
	}

	// A budget that started with no limit at all takes one only at the
	// next start, and says so.
	core, logs = observer.New(zapcore.WarnLevel)
	r, reload = reloading(t, 0, head+credential("a", "acct1", 0), zap.New(core))
	r.Route("acct1")
	reload(head + credential("a", "acct1", 2))
	if a, _ = r.Route("acct1"); a.Rate != 0 || logs.FilterMessageSnippet("not at all if it started with none").Len() != 1 {
		t.Errorf("budget a at %v after a rate was set on a budget that started with none, logs %v; want 0 until the next start, logged", a.Rate, logs.All())
	}
}

// TestCredentialCheckAnswersApplyInOrder: of two checks of one credential
// (its token file changed twice), an answer to the first that comes after
// the second's is dropped; one that comes when the second got no answer
// (a 503 says nothing of the credential) still counts. The first check's
// answer is held until the second's is in.
func TestCredentialCheckAnswersApplyInOrder(t *testing.T) {
	const (
		active  = `{"success":true,"errors":[],"messages":[],"result":{"id":"t1","status":"active"}}`
		invalid = `{"success":false,"errors":[{"code":1000,"message":"Invalid API Token"}],"messages":[],"result":null}`
		down    = `{"success":false,"errors":[{"code":10000,"message":"try again"}],"messages":[],"result":null}`
	)
	type answer struct {
		status int
		body   string
	}
	for _, tc := range []struct {
		name          string
		first, second answer // the first check's (every request of it), the second's
		refusedBefore bool
		wantMet       bool
	}{
		{"a late refusal does not undo a newer acceptance",
			answer{http.StatusUnauthorized, invalid}, answer{http.StatusOK, active}, false, true},
		{"a late acceptance counts when the newer check got no answer",
			answer{http.StatusOK, active}, answer{http.StatusServiceUnavailable, down}, true, true},
		{"a late refusal counts when the newer check got no answer",
			answer{http.StatusUnauthorized, invalid}, answer{http.StatusServiceUnavailable, down}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			firstIn, releaseFirst := make(chan struct{}), make(chan struct{})
			var requests atomic.Int32
			api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
				// The second request is the second check's; every other
				// one is the first check's (it may ask the account
				// endpoint too).
				a := tc.first
				switch requests.Add(1) {
				case 1:
					close(firstIn)
					<-releaseFirst
				case 2:
					a = tc.second
				}
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(a.status)
				_, _ = io.WriteString(w, a.body)
			}))
			t.Cleanup(api.Close)
			released := false
			t.Cleanup(func() {
				if !released {
					close(releaseFirst)
				}
			})
			r, c, ready := checkedRoutes(t, api.URL, 0)
			cond := worker.ReadyCredentialOf(c.Name)
			ready.Declare(cond)
			if tc.refusedBefore {
				ready.Set(cond, "refused before")
			}
			all := throttle.New(throttle.Config{Priorities: 1, Concurrency: 4})
			t.Cleanup(all.Close)

			ctx := context.Background()
			firstDone := make(chan struct{})
			go func() {
				defer close(firstDone)
				r.verify(ctx, c, all, 0, ready)
			}()
			<-firstIn
			r.verify(ctx, c, all, 0, ready)
			released = true
			close(releaseFirst)
			<-firstDone
			if got := ready.Met(cond); got != tc.wantMet {
				t.Fatalf("credential accepted: %v, want %v", got, tc.wantMet)
			}
		})
	}
}

// checkedRoutes are the routes of one token credential, cred-a, whose
// checks go to base, with a budget of rate calls a second (0: none).
func checkedRoutes(t *testing.T, base string, rate float64) (*Routes, *credentials.Credential, *metrics.Readiness) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.token"), []byte("token-a"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "credentials.yaml")
	body := "credentials:\n  - name: cred-a\n    token_file: a.token\n    accounts: [acct1]\n"
	if rate > 0 {
		body += fmt.Sprintf("    rate: %v\n", rate)
	}
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	set, err := credentials.Load(file, credentials.Options{BaseURL: base, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := set.Credential("cred-a")
	m := metrics.New(prometheus.NewRegistry(), metrics.Labels{Budgets: []string{"cred-a"}}, metrics.Build{})
	ready := metrics.NewReadiness(prometheus.NewRegistry())
	r := &Routes{router: credentials.NewRouter(set), log: zap.NewNop(), budgets: map[string]*BudgetGate{}, checking: map[string]*recheck{},
		metrics: m.Budget, ready: ready,
		make: func(name string, rate float64) (*BudgetGate, error) {
			return &BudgetGate{gate: throttle.New(throttle.Config{Priorities: 1, Concurrency: throttle.Unbounded, Rate: rate}), m: m.Budget(name), rate: rate}, nil
		}}
	t.Cleanup(r.Close)
	return r, c, ready
}

// TestLoadLogLineStaysShort: a credentials file of 600 credentials is
// named in a start-up line of at most 16 KiB (SPEC §10), with its count.
func TestLoadLogLineStaysShort(t *testing.T) {
	dir := t.TempDir()
	var b strings.Builder
	b.WriteString("credentials:\n")
	for i := range 600 {
		fmt.Fprintf(&b, "  - name: credential-with-a-long-name-%04d\n    token_file: t%04d\n    accounts: [acct%04d]\n    budget: budget-with-a-long-name-%04d\n", i, i, i, i)
	}
	writeTokens(t, dir, b.String())
	file := filepath.Join(dir, "credentials.yaml")
	if err := os.WriteFile(file, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&out), zap.InfoLevel))
	cfg := config.Default()
	cfg.CredentialsFile, cfg.BaseURL = file, "http://127.0.0.1:1"
	f, err := Load(cfg, "test", log)
	if err != nil {
		t.Fatal(err)
	}
	f.Announce(cfg)
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if len(line) > 16<<10 {
			t.Errorf("a log line of %d bytes: %.200s…", len(line), line)
		}
	}
	if !strings.Contains(out.String(), `"count":600`) || !strings.Contains(out.String(), "and 550 more") {
		t.Errorf("the start-up line does not say how many credentials there are:\n%.600s", out.String())
	}
}

// TestBudgetGatesLeaveTheCallsInFlightToTheSharedGate: with one call
// slot in all (REVOKER_CONCURRENCY=1), a scheduled call of a budget holds
// a rate slot of it while it waits for the shared slot, busy with another
// budget's call; an urgent call of the same budget comes. The other call
// ends after the scheduled call's rate slot went by, so that call keeps
// the shared slot and waits for the budget's next slot, which the urgent
// call, first by priority, takes. A budget's gate bounds only its rate:
// had it bounded the calls in flight too, the urgent call would wait for
// the budget's only permit, held by the scheduled call, which waits for
// the shared slot the urgent call... and every call of every budget would
// stop (SPEC §9).
func TestBudgetGatesLeaveTheCallsInFlightToTheSharedGate(t *testing.T) {
	cfg := config.Default()
	cfg.Concurrency = 1
	body := "credentials:\n  - name: cred-a\n    token_file: a.token\n    accounts: [acct1]\n    rate: 10\n"
	r, shared := jetStreamRoutes(t, cfg, body, map[string]string{"a.token": "token-a"}, "cred-a")
	rt, ok := r.Route("acct1")
	if !ok {
		t.Fatal("no route for acct1")
	}

	other, err := shared.Acquire(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	done := make(chan error, 2)
	call := func(p int) {
		pm, err := throttle.AcquirePair(ctx, rt.Gate, shared, p)
		if err == nil {
			pm.Release()
		}
		done <- err
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 10 s", what)
			}
			time.Sleep(time.Millisecond)
		}
	}
	go call(1)
	waitFor("the scheduled call waiting for the shared slot", func() bool { return shared.Queued(1) == 1 })
	go call(0)
	waitFor("the urgent call waiting", func() bool { return shared.Queued(0)+rt.Gate.Queued(0) == 1 })
	time.Sleep(150 * time.Millisecond) // the other call, longer than a rate slot may wait
	other.Release()
	for range 2 {
		if err := <-done; err != nil {
			t.Errorf("a call got no permits: %v", err)
		}
	}
}

// routeChecked is acct1's route once its credential (at rate) was
// checked against an API answering with h.
func routeChecked(t *testing.T, rate float64, h http.HandlerFunc) worker.Route {
	t.Helper()
	api := httptest.NewServer(h)
	t.Cleanup(api.Close)
	r, c, ready := checkedRoutes(t, api.URL, rate)
	all := throttle.New(throttle.Config{Priorities: 1, Concurrency: 4})
	t.Cleanup(all.Close)
	r.verify(context.Background(), c, all, 0, ready)
	rt, _ := r.Route("acct1")
	return rt
}

// TestCheckQuotaLowersTheBudgetsRate: a credential's check answers with
// Ratelimit-Policy q=1;w=1 for a budget configured at 10/s: every call of
// the budget after it is spaced to the quota, not only the next (SPEC §6:
// token checks are calls of the budget, and the budget follows a stated
// quota lower than its rate).
func TestCheckQuotaLowersTheBudgetsRate(t *testing.T) {
	const active = `{"success":true,"errors":[],"messages":[],"result":{"id":"t1","status":"active"}}`
	rt := routeChecked(t, 10, func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Ratelimit-Policy", `"default";q=1;w=1`)
		_, _ = io.WriteString(w, active)
	})
	if d, want := fourCalls(t, rt.Gate), 2*throttle.Interval(1); d < want {
		t.Errorf("4 calls of the budget within %v after its check stated a quota of 1 a second, want them %v apart at least", d, want)
	}
}

// fourCalls is how long four permits of g took, from the first.
func fourCalls(t *testing.T, g *throttle.Gate) time.Duration {
	t.Helper()
	var at []time.Time
	for range 4 {
		pm, err := g.Acquire(context.Background(), 0)
		if err != nil {
			t.Fatal(err)
		}
		at = append(at, time.Now())
		pm.Release()
	}
	return at[3].Sub(at[0])
}

// TestEveryAnswersQuotaLowersTheBudgetsRate: the quota stated by any
// answer charged to a budget lowers it, not only an accepted check's: a
// refused check's (it is an answer of the API all the same) and the key
// list of the periodic verify (SPEC §6).
func TestEveryAnswersQuotaLowersTheBudgetsRate(t *testing.T) {
	quota := cloudflare.RatePolicy{Known: true, Quota: 1, Window: time.Second}
	t.Run("refused check", func(t *testing.T) {
		rt := routeChecked(t, 10, func(w http.ResponseWriter, req *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Ratelimit-Policy", `"default";q=1;w=1`)
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"success":false,"errors":[{"code":1000,"message":"Invalid API Token"}],"messages":[],"result":null}`)
		})
		if d, want := fourCalls(t, rt.Gate), 2*throttle.Interval(1); d < want {
			t.Errorf("4 calls within %v after a refused check stated a quota of 1 a second, want them %v apart at least", d, want)
		}
	})
	t.Run("periodic key list", func(t *testing.T) {
		r, _, _ := checkedRoutes(t, "http://127.0.0.1:1", 10)
		shared := throttle.New(throttle.Config{Priorities: 1, Concurrency: 4})
		t.Cleanup(shared.Close)
		release, err := r.Turn(shared, 0)(context.Background(), "acct1")
		if err != nil {
			t.Fatal(err)
		}
		release(&cloudflare.Response{Status: 200, Policy: quota})
		rt, _ := r.Route("acct1")
		if d, want := fourCalls(t, rt.Gate), 2*throttle.Interval(1); d < want {
			t.Errorf("4 calls within %v after a key list stated a quota of 1 a second, want them %v apart at least", d, want)
		}
	})
}

// TestRouteIdentityFollowsTheSecret: a reload that gives a credential
// another secret, or another budget, makes its routes another identity
// (the key lists proving its 404s are not shared across them), and one
// that changes neither keeps it; the identity holds no secret.
func TestRouteIdentityFollowsTheSecret(t *testing.T) {
	head := "credentials:\n"
	r, reload := reloading(t, 0, head+credential("a", "acct1", 4), zap.NewNop())
	first, _ := r.Route("acct1")
	reload(head + credential("a", "acct1", 4))
	if again, _ := r.Route("acct1"); again.Identity != first.Identity {
		t.Errorf("identity %q after a reload that changed nothing, was %q", again.Identity, first.Identity)
	}
	t2 := filepath.Join(t.TempDir(), "t2")
	if err := os.WriteFile(t2, []byte("another-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	reload(head + "  - name: a\n    token_file: " + t2 + "\n    accounts: [acct1]\n    rate: 4\n")
	other, _ := r.Route("acct1")
	reload(head + "  - name: a\n    token_file: t\n    accounts: [acct1]\n    rate: 4\n    budget: b\n")
	budget, _ := r.Route("acct1")
	for _, rt := range []worker.Route{other, budget} {
		if rt.Credential != "a" || rt.Identity == first.Identity {
			t.Errorf("route %q identity %q, the same as before the reload (%q)", rt.Credential, rt.Identity, first.Identity)
		}
		if strings.Contains(rt.Identity, "another-token") {
			t.Errorf("identity %q holds the secret", rt.Identity)
		}
	}
}
