package bench

import (
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

const apiLimit = 20 // calls a second the stand-in allows before answering 429

// BenchmarkUrgentBehindBacklog: 1,500 scheduled events queued, then 10
// urgent ones, against an API that answers 429 above 20 calls/s, with
// REVOKER_RATE_LIMIT=20 shared by 1 or 3 replicas. The urgent events come
// all at once, or paced 300 ms apart. Reports their time-to-revoke beside
// what serving in arrival order would give.
func BenchmarkUrgentBehindBacklog(b *testing.B) {
	for _, replicas := range []int{1, 3} {
		for _, paced := range []bool{false, true} {
			name := fmt.Sprintf("replicas=%d/burst", replicas)
			if paced {
				name = fmt.Sprintf("replicas=%d/paced", replicas)
			}
			b.Run(name, func(b *testing.B) {
				for range b.N {
					urgentBehindBacklog(b, replicas, paced)
				}
			})
		}
	}
}

func urgentBehindBacklog(b *testing.B, replicas int, paced bool) {
	r := newRig(b, cloudflaretest.WithRateLimit(apiLimit))
	cfg := config.Default()
	ctx, cancel := ctxTimeout(5 * time.Minute)
	defer cancel()
	if err := queue.Ensure(ctx, r.js, cfg.Topology(), zap.NewNop()); err != nil {
		b.Fatal(err)
	}
	r.publishAsync(cfg.LowestPriority(), keys("s", 1500))
	for range replicas {
		r.startWorker("REVOKER_RATE_LIMIT=20")
	}
	// Let the backlog run for a while. A fixed delay, not "right after the
	// n-th call", so the urgent events arrive at no particular point of
	// the rate schedule.
	time.Sleep(2 * time.Second)
	if len(r.calls("s")) < apiLimit {
		b.Fatal("the backlog is not being worked")
	}

	pub := map[string]time.Time{}
	if paced {
		for _, k := range keys("u", 10) {
			maps.Copy(pub, r.publishAsync(cfg.HighestPriority(), []string{k}))
			time.Sleep(300 * time.Millisecond) // the pace of the urgent events
		}
	} else {
		pub = r.publishAsync(cfg.HighestPriority(), keys("u", 10))
	}
	queuetest.Eventually(b, time.Minute, "urgent events revoked", func() bool { return len(r.calls("u")) == 10 })
	lat := latencies(pub, r.calls("u"))
	ahead := 1500 - len(r.calls("s"))
	// In arrival order each urgent event would wait for every scheduled
	// event still queued, at the API's 20 calls a second.
	fifo := time.Duration(float64(ahead) / apiLimit * float64(time.Second))

	b.ReportMetric(ms(lat[len(lat)-1]), "urgent-max-ms")
	b.ReportMetric(ms(pct(lat, .5)), "urgent-median-ms")
	b.ReportMetric(fifo.Seconds(), "arrival-order-s")
	b.ReportMetric(float64(r.api.Throttled()), "429s")
	b.Logf("%s; %d replicas, urgent %s: time-to-revoke max %.0f ms, median %.0f ms; in arrival order ≈ %.1f s (%d scheduled still queued); 429s: %d",
		cores(), replicas, map[bool]string{false: "all at once", true: "paced 300 ms apart"}[paced],
		ms(lat[len(lat)-1]), ms(pct(lat, .5)), fifo.Seconds(), ahead, r.api.Throttled())
}

// BenchmarkRateBudget: 300 events against the same API: the worker must
// spend the budget without a single 429, at ≥ 97% of REVOKER_RATE_LIMIT.
func BenchmarkRateBudget(b *testing.B) {
	for range b.N {
		r := newRig(b, cloudflaretest.WithRateLimit(apiLimit))
		cfg := config.Default()
		r.startWorker("REVOKER_RATE_LIMIT=20")
		r.publishAsync(cfg.LowestPriority(), keys("r", 300))
		queuetest.Eventually(b, 2*time.Minute, "300 events revoked", func() bool { return len(r.calls("r")) == 300 })

		var at []time.Time
		for _, q := range r.api.Requests() {
			at = append(at, q.At)
		}
		slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
		rate := float64(len(at)-1) / at[len(at)-1].Sub(at[0]).Seconds()
		b.ReportMetric(rate, "calls/s")
		b.ReportMetric(100*rate/apiLimit, "%-of-limit")
		b.ReportMetric(float64(r.api.Throttled()), "429s")
		b.Logf("%s; %d calls at %.2f calls/s (%.1f%% of REVOKER_RATE_LIMIT=20); 429s: %d",
			cores(), len(at), rate, 100*rate/apiLimit, r.api.Throttled())
	}
}

// BenchmarkSharedBudget: three replicas share REVOKER_RATE_LIMIT=4 against
// an API that allows 4 calls in any second and answers 429 past it; one
// replica is killed (SIGKILL) a quarter of the way. The events it held come
// back after the ack wait (10 s, as deploy/kubernetes sets it) while the
// others work on. Reports calls/s before and after the kill, the most calls
// that arrived in any one second, and the 429s.
func BenchmarkSharedBudget(b *testing.B) {
	const rate, events = 4, 160
	for range b.N {
		r := newRig(b, cloudflaretest.WithRateLimit(rate))
		cfg := config.Default()
		var procs []*proc
		for range 3 {
			procs = append(procs, r.startWorker("REVOKER_RATE_LIMIT=4", "REVOKER_ACK_WAIT=10s"))
		}
		r.publishAsync(cfg.LowestPriority(), keys("b", events))
		queuetest.Eventually(b, time.Minute, "a quarter of the events revoked", func() bool { return len(r.calls("b")) >= events/4 })
		killedAt := time.Now()
		if err := procs[0].cmd.Process.Kill(); err != nil {
			b.Fatal(err)
		}
		queuetest.Eventually(b, 2*time.Minute, "every event revoked", func() bool { return len(r.calls("b")) == events })

		var at []time.Time
		for _, q := range r.api.Requests() {
			at = append(at, q.At)
		}
		slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
		perSecond := func(ts []time.Time) float64 {
			if len(ts) < 2 {
				return 0
			}
			return float64(len(ts)-1) / ts[len(ts)-1].Sub(ts[0]).Seconds()
		}
		split, _ := slices.BinarySearchFunc(at, killedAt, func(a, t time.Time) int { return a.Compare(t) })
		most := 0
		for i := range at {
			j, _ := slices.BinarySearchFunc(at, at[i].Add(time.Second), func(a, t time.Time) int { return a.Compare(t) })
			most = max(most, j-i)
		}
		b.ReportMetric(perSecond(at[:split]), "calls/s-before-kill")
		b.ReportMetric(perSecond(at[split:]), "calls/s-after-kill")
		b.ReportMetric(float64(most), "most-in-1s")
		b.ReportMetric(float64(r.api.Throttled()), "429s")
		b.Logf("%s; 3 replicas sharing %d/s, one killed after %d calls: %.2f calls/s before the kill, %.2f after it; at most %d calls in any second; 429s: %d",
			cores(), rate, split, perSecond(at[:split]), perSecond(at[split:]), most, r.api.Throttled())
	}
}
