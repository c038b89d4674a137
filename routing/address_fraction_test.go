package routing

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/credentials"
	"github.com/revoker/revoker/metrics"
	"github.com/revoker/revoker/queue/queuetest"
	"github.com/revoker/revoker/throttle"
	"github.com/revoker/revoker/worker"
)

// TestAddressLimitWithFractionalCuts: REVOKER_IP_RATE_LIMIT=10 and
// three credentials with budgets of their own and no rate of their own
// (each counted at the whole address limit): each is cut to 10/3 a
// second. SPEC §9: all of them together stay under REVOKER_IP_RATE_LIMIT,
// i.e. at most 10 calls start in any one second. Spaced at 1/3.33 s, each
// budget would start 4 in under a second, and the three together 12.
func TestAddressLimitWithFractionalCuts(t *testing.T) {
	body := "credentials:\n" + credential("a", "acct1", 0) + credential("b", "acct2", 0) + credential("c", "acct3", 0)
	r, _ := reloading(t, 10, body, zap.NewNop())
	most, span := startsInOneSecond(t, r, func(rt worker.Route) (*throttle.Permit, error) {
		t.Logf("budget rate %.3f", rt.Rate)
		return rt.Gate.Acquire(context.Background(), 0)
	})
	if most > 10 {
		t.Errorf("%d calls started within one second across the budgets (first to last: %v); REVOKER_IP_RATE_LIMIT=10", most, span)
	}
}

// TestAddressLimitWithFractionalCutsShared is the test above with
// the budgets kept in JetStream, as serve makes them (RoutesOn).
func TestAddressLimitWithFractionalCutsShared(t *testing.T) {
	cfg := config.Default()
	cfg.IPRateLimit = 10
	body := "credentials:\n" + credential("a", "acct1", 0) + credential("b", "acct2", 0) + credential("c", "acct3", 0)
	r, shared := jetStreamRoutes(t, cfg, body, nil, "a", "b", "c")
	most, span := startsInOneSecond(t, r, func(rt worker.Route) (throttle.Pair, error) {
		return throttle.AcquirePair(context.Background(), rt.Gate, shared, 1)
	})
	if most > 10 {
		t.Errorf("%d calls started within one second across the JetStream budgets (first to last: %v); REVOKER_IP_RATE_LIMIT=10", most, span)
	}
}

// jetStreamRoutes is the routes serve makes (RoutesOn) on a server of the
// test's own, from the credentials file body, with secrets as named (file
// name to content), cfg and the budgets' names; and its shared gate.
func jetStreamRoutes(t *testing.T, cfg config.Config, body string, secrets map[string]string, budgets ...string) (*Routes, *throttle.Gate) {
	t.Helper()
	srv := queuetest.Server(t)
	_, js := queuetest.Connect(t, srv)
	dir := t.TempDir()
	for name, content := range secrets {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeTokens(t, dir, body)
	file := filepath.Join(dir, "credentials.yaml")
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	set, err := credentials.Load(file, credentials.Options{BaseURL: "http://127.0.0.1:1", Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, metrics.Labels{Subjects: cfg.Subjects, Budgets: budgets}, metrics.Build{})
	shared := throttle.New(throttle.Config{Priorities: len(cfg.Subjects), Concurrency: cfg.Concurrency})
	t.Cleanup(shared.Close)
	f := &File{router: credentials.NewRouter(set), log: zap.NewNop(), recheck: make(chan string, 1)}
	r := f.RoutesOn(js, cfg, m, shared, metrics.NewReadiness(reg), zap.NewNop())
	t.Cleanup(r.Close)
	return r, shared
}

// startsInOneSecond takes 4 permits (acquire) for each of acct1, acct2 and
// acct3 at once, and returns the most that started within any one second,
// and the time from the first to the last.
func startsInOneSecond[P interface{ Release() }](t *testing.T, r *Routes, acquire func(worker.Route) (P, error)) (most int, span time.Duration) {
	t.Helper()
	var (
		mu    sync.Mutex
		times []time.Time
		wg    sync.WaitGroup
	)
	for _, acct := range []string{"acct1", "acct2", "acct3"} {
		rt, ok := r.Route(acct)
		if !ok || rt.Gate == nil {
			t.Fatalf("no route for %s", acct)
		}
		wg.Go(func() {
			for range 4 {
				pm, err := acquire(rt)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				times = append(times, time.Now())
				mu.Unlock()
				pm.Release()
			}
		})
	}
	wg.Wait()
	if len(times) == 0 {
		return 0, 0
	}
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	for i := range times {
		n := 0
		for j := i; j < len(times) && times[j].Sub(times[i]) < time.Second; j++ {
			n++
		}
		most = max(most, n)
	}
	return most, times[len(times)-1].Sub(times[0])
}
