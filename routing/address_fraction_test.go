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
		t.Logf("%s: budget rate %.3f", acct, rt.Rate)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 4 {
				pm, err := rt.Gate.Acquire(context.Background(), 0)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				times = append(times, time.Now())
				mu.Unlock()
				pm.Release()
			}
		}()
	}
	wg.Wait()
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	most := 0
	for i := range times {
		n := 0
		for j := i; j < len(times) && times[j].Sub(times[i]) < time.Second; j++ {
			n++
		}
		most = max(most, n)
	}
	if most > 10 {
		t.Errorf("%d calls started within one second across the budgets (first to last: %v); REVOKER_IP_RATE_LIMIT=10", most, times[len(times)-1].Sub(times[0]))
	}
}

// TestAddressLimitWithFractionalCutsShared is the test above with
// the budgets kept in JetStream, as serve makes them (RoutesOn).
func TestAddressLimitWithFractionalCutsShared(t *testing.T) {
	srv := queuetest.Server(t)
	_, js := queuetest.Connect(t, srv)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "t"), []byte("token"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "credentials.yaml")
	body := "credentials:\n" + credential("a", "acct1", 0) + credential("b", "acct2", 0) + credential("c", "acct3", 0)
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	set, err := credentials.Load(file, credentials.Options{BaseURL: "http://127.0.0.1:1", Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.IPRateLimit = 10
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, metrics.Labels{Subjects: cfg.Subjects, Budgets: []string{"a", "b", "c"}}, metrics.Build{})
	shared := throttle.New(throttle.Config{Priorities: len(cfg.Subjects), Concurrency: cfg.Concurrency})
	t.Cleanup(shared.Close)
	f := &File{router: credentials.NewRouter(set), log: zap.NewNop(), recheck: make(chan string, 1)}
	r := f.RoutesOn(js, cfg, m, shared, metrics.NewReadiness(reg), zap.NewNop())
	t.Cleanup(r.Close)
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
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 4 {
				pm, err := throttle.AcquirePair(context.Background(), rt.Gate, shared, 1)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				times = append(times, time.Now())
				mu.Unlock()
				pm.Release()
			}
		}()
	}
	wg.Wait()
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	most := 0
	for i := range times {
		n := 0
		for j := i; j < len(times) && times[j].Sub(times[i]) < time.Second; j++ {
			n++
		}
		most = max(most, n)
	}
	if most > 10 {
		t.Errorf("%d calls started within one second across the JetStream budgets (first to last: %v); REVOKER_IP_RATE_LIMIT=10", most, times[len(times)-1].Sub(times[0]))
	}
}
