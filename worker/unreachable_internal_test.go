package worker

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/revoker/revoker/metrics"
)

// TestUnreachableClearsWhenNoCallGoesUnanswered: an idle worker whose last
// call got no answer makes no call that could answer: condition api is
// met again once no call has gone unanswered for unreachableFor, and not
// before.
func TestUnreachableClearsWhenNoCallGoesUnanswered(t *testing.T) {
	old := minUnreachableFor
	minUnreachableFor = 200 * time.Millisecond
	t.Cleanup(func() { minUnreachableFor = old })
	ready := metrics.NewReadiness(prometheus.NewRegistry())
	ready.Declare(ReadyAPI)
	w := &Worker{Deps: Deps{Ready: ready, Log: zap.NewNop()}}
	from := time.Now()
	w.heed(Route{}, Decision{Kind: Retry, Detail: "no response: connection refused"}, 0, true)
	if ready.Met(ReadyAPI) {
		t.Fatal("condition api met after a call got no answer")
	}
	waitFor(t, func() bool { return ready.Met(ReadyAPI) })
	if since := time.Since(from); since < minUnreachableFor {
		t.Fatalf("condition api met again after %v; want at least %v without an unanswered call", since, minUnreachableFor)
	}
}
