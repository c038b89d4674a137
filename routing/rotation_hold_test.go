package routing

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/metrics"
	"github.com/revoker/revoker/queue/queuetest"
)

// SPEC §9: "A 429 or any other hold the API asks for holds every replica"
// and the budget "belongs to the credential"; §6: the token file may be
// rotated while running. Two replicas read one CLOUDFLARE_API_TOKEN_FILE
// (serve wires budgetID = cred.ID). Replica A is answered 429 Retry-After
// 60 s; the token file is then rotated (same principal). Replica B, having
// read the new token, must still be held: the hold the API asked for has
// not ended.
func TestHoldSurvivesTokenRotation(t *testing.T) {
	srv := queuetest.Server(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	if err := os.WriteFile(path, []byte("old-token-value"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	replica := func() (*BudgetGate, *cloudflare.TokenFile) {
		_, js := queuetest.Connect(t, srv)
		tf, err := cloudflare.NewTokenFile(path, 0) // checked on every use
		if err != nil {
			t.Fatal(err)
		}
		m := metrics.New(prometheus.NewRegistry(), metrics.Labels{Subjects: cfg.Subjects}, metrics.Build{})
		bg, err := NewBudgetGate(js, cfg, tf.ID, "", 4, cfg.Concurrency, m.Budget(""), zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(bg.Close)
		return bg, tf
	}
	a, _ := replica()
	b, tfB := replica()
	// Both take a permit first, so both budgets are bound.
	for _, g := range []*BudgetGate{a, b} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		pm, err := g.Gate().Acquire(ctx, 0)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		pm.Release()
	}
	a.Gate().Pause(time.Minute) // replica A's call got 429, Retry-After: 60

	// B sees the hold (deadline, no sleep).
	held := func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		pm, err := b.Gate().Acquire(ctx, 0)
		if err == nil {
			pm.Release()
			return false
		}
		return true
	}
	deadline := time.Now().Add(10 * time.Second)
	for !held() {
		if time.Now().After(deadline) {
			t.Fatal("B never saw A's hold before rotation")
		}
	}
	// Rotate the token (a rename over the file).
	tmp := filepath.Join(dir, "token.new")
	if err := os.WriteFile(tmp, []byte("new-token-value"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	tfB.Refresh()
	if tfB.Reloads() != 1 {
		t.Fatalf("B did not load the new token (reloads %d)", tfB.Reloads())
	}
	if !held() {
		t.Fatal("after the token file was rotated, replica B starts calls at once although the API's 60 s hold (429 to A) is still on")
	}
}
