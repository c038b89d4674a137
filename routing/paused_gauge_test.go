package routing

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/metrics"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestPausedGaugeEndsWithItsGate: a budget gate is closed (its NATS
// connection closed for good; serve makes a new one on the next
// connection) while a hold the API asked for is in force. Once the hold is
// over and the new gate hands out permits, revoker_api_paused must read 0
// (SPEC §8: "1 while a hold asked for by the API ... stops every call").
func TestPausedGaugeEndsWithItsGate(t *testing.T) {
	_, _, js := queuetest.JetStream(t)
	cfg := config.Default()
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, metrics.Labels{Subjects: cfg.Subjects}, metrics.Build{})
	id := func() string { return "paused-gauge" }

	first, err := NewBudgetGate(js, cfg, id, "", 0, 4, m.Budget(""), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	end := time.Now().Add(300 * time.Millisecond)
	first.Gate().Hold(time.Until(end), "429")
	queuetest.Eventually(t, 5*time.Second, "paused gauge 1 during the hold", func() bool {
		return testutil.ToFloat64(m.APIPaused) == 1
	})
	first.Close() // the connection is gone, and its gate with it

	// The next connection's gate, made once the hold is over.
	queuetest.Eventually(t, 5*time.Second, "hold over", func() bool { return time.Now().After(end) })
	second, err := NewBudgetGate(js, cfg, id, "", 0, 4, m.Budget(""), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pm, err := second.Gate().Acquire(ctx, 0)
	if err != nil {
		t.Fatalf("no permit after the hold: %v", err)
	}
	pm.Release()
	queuetest.Eventually(t, 3*time.Second, "paused gauge back to 0", func() bool {
		return testutil.ToFloat64(m.APIPaused) == 0
	})
}
