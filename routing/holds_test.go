package routing

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/credentials"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/metrics"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/verify"
)

// TestReviewCheck429HoldsTheBudget: a credential's token check is an API
// call of its budget (SPEC §6); answered 429 with Retry-After, it must hold
// that budget's calls (SPEC §4, §9: a 429 holds every credential of that
// principal), as a DELETE's 429 does.
// A 429 on a credential's token check holds the credential's budget, as a
// DELETE's 429 does (SPEC §4, §9: a token check is a call of the budget).
func TestCheck429HoldsTheBudget(t *testing.T) {
	rt := routeChecked(t, 4, func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Retry-After", "120")
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = io.WriteString(w, `{"success":false,"errors":[{"code":971,"message":"Please wait and consider throttling your request speed"}],"messages":[],"result":null}`)
	})
	if p := rt.Gate.PausedFor(); p < time.Minute {
		t.Errorf("budget of cred-a paused for %v after its check got 429 Retry-After: 120; want it held ~2m", p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if pm, err := rt.Gate.Acquire(ctx, 0); err == nil {
		pm.Release()
		t.Errorf("a DELETE of cred-a's budget got a permit at once, right after the API answered its check 429 Retry-After: 120")
	}
}

// TestCheckWithNothingLeftHoldsTheBudget: a credential's check is
// accepted, and its answer's Ratelimit header says nothing is left of the
// budget for 30 s. The budget's calls wait for the reset, as after a
// DELETE's answer saying so (SPEC §4: a Ratelimit header with nothing left
// is a hold the API asks for).
func TestCheckWithNothingLeftHoldsTheBudget(t *testing.T) {
	rt := routeChecked(t, 4, func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Ratelimit", `"default";r=0;t=30`)
		_, _ = io.WriteString(w, `{"success":true,"errors":[],"messages":[],"result":{"id":"t1","status":"active"}}`)
	})
	if p := rt.Gate.PausedFor(); p < 20*time.Second {
		t.Errorf("budget of cred-a held for %v after its accepted check said r=0;t=30; want it held ~30s", p)
	}
}

// TestReviewPeriodicList429HoldsTheBudget: serve's periodic check (SPEC §7
// verify) lists an account's keys through its credential, charged to its
// budget (Turn). The API answers the list 429 with Retry-After: that
// principal is past its limit, and every call of it should wait (SPEC §4,
// §9), yet the budget is not held: its next DELETE goes out at once.
// A 429 on a key list of the periodic check holds the list's budget, as a
// DELETE's 429 does: the list is a call of the budget (SPEC §6).
func TestPeriodicList429HoldsTheBudget(t *testing.T) {
	_, _, js := queuetest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	topo := config.Default().Topology()
	if _, err := js.CreateStream(ctx, queue.OutcomeStream(topo)); err != nil {
		t.Fatal(err)
	}
	const acct = "023e105f4ecef8ad9ca31a8372d0c353"
	api := cloudflaretest.NewServer()
	t.Cleanup(api.Close)
	api.ScriptList(acct, http.StatusTooManyRequests)
	rec := event.Record{EventID: "e1", AccountID: acct, KeyID: "k1", Outcome: event.Revoked, Status: 200, CFRay: "r",
		Attempts: 1, Subject: "revoke.scheduled", Sequence: 1, Stream: "REVOCATIONS", CompletedAt: time.Now().UTC().Format(time.RFC3339Nano)}
	if _, err := js.PublishMsg(ctx, queue.OutcomeMsg(topo.OutcomePrefix, rec)); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.token"), []byte("token-a"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "credentials.yaml")
	if err := os.WriteFile(file, []byte("credentials:\n  - name: cred-a\n    token_file: a.token\n    accounts: ["+acct+"]\n    rate: 4\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	set, err := credentials.Load(file, credentials.Options{BaseURL: api.URL, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(prometheus.NewRegistry(), metrics.Labels{Budgets: []string{"cred-a"}}, metrics.Build{})
	router := credentials.NewRouter(set)
	r := &Routes{router: router, log: zap.NewNop(), budgets: map[string]*BudgetGate{}, checking: map[string]*recheck{}, metrics: m.Budget,
		make: func(name string, rate float64) (*BudgetGate, error) {
			return &BudgetGate{gate: throttle.New(throttle.Config{Priorities: 1, Concurrency: throttle.Unbounded, Rate: rate}), m: m.Budget(name), rate: rate}, nil
		}}
	t.Cleanup(r.Close)
	shared := throttle.New(throttle.Config{Priorities: 1, Concurrency: 4})
	t.Cleanup(shared.Close)

	rep, err := verify.Check(ctx, verify.Config{JS: js, Stream: topo.OutcomeStream, Prefix: topo.OutcomePrefix, API: router,
		Acquire: r.Turn(shared, 0)}, "", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Failed) != 1 {
		t.Fatalf("report %+v: want the list failed (429)", rep)
	}
	rt, _ := r.Route(acct)
	if p := rt.Gate.PausedFor(); p == 0 {
		t.Errorf("budget of cred-a not held after its key list got 429 with Retry-After (failed: %s)", rep.Failed[0].Why)
	}
}
