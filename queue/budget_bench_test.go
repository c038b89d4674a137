package queue_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/queue/queuetest"
)

// BenchmarkBudget: 1, 2 and 3 replicas, each with calls always waiting,
// share 20 calls a second against an API that refuses the 21st in any
// second. It reports the calls a second achieved (goal: at least 97% of
// the budget), the 429s (goal: none) and the JetStream traffic per call.
// Run: go test -run '^$' -bench Budget -benchtime 1x ./queue/
func BenchmarkBudget(b *testing.B) {
	const (
		rate = 20
		run  = 4 * time.Second
	)
	for _, n := range []int{1, 2, 3} {
		b.Run(fmt.Sprintf("replicas=%d", n), func(b *testing.B) {
			for range b.N {
				srv := queuetest.Server(b)
				api := cloudflaretest.NewServer(cloudflaretest.WithRateLimit(rate))
				b.Cleanup(api.Close)
				var seq atomic.Int64
				var rs []*bReplica
				for i := range n {
					r := newBReplica(b, srv, api, fmt.Sprintf("r%d", i), rate, 1)
					rs = append(rs, r)
				}
				start := time.Now()
				for _, r := range rs {
					for range 4 {
						r.wg.Add(1)
						go func() {
							defer r.wg.Done()
							for time.Since(start) < run {
								if _, ok := r.call(0, fmt.Sprintf("k%d", seq.Add(1))); !ok {
									return
								}
							}
						}()
					}
				}
				for _, r := range rs {
					r.wg.Wait()
				}
				reqs := api.Requests()
				for i, q := range reqs {
					if q.Status == 429 {
						for j := max(0, i-22); j <= i; j++ {
							b.Logf("%d %v %d %s", j, reqs[j].At.Sub(reqs[0].At), reqs[j].Status, reqs[j].KeyID)
						}
					}
				}
				span := reqs[len(reqs)-1].At.Sub(reqs[0].At)
				perSec := float64(len(reqs)-1) / span.Seconds()
				var writes, conflicts, reads, watched, rebooked uint64
				for _, r := range rs {
					s := r.budget.Stats()
					writes, conflicts, reads, watched = writes+s.Writes, conflicts+s.Conflicts, reads+s.Reads, watched+s.Watched
					rebooked += s.Rebooked
				}
				var late time.Duration
				for _, q := range reqs {
					for _, r := range rs {
						if g, ok := r.granted.Load(q.KeyID); ok {
							late = max(late, q.At.Sub(g.(time.Time)))
						}
					}
				}
				calls := float64(len(reqs))
				b.ReportMetric(float64(late.Microseconds())/1000, "max-late-ms")
				b.ReportMetric(perSec, "calls/s")
				b.ReportMetric(100*perSec/rate, "%budget")
				b.ReportMetric(float64(api.Throttled()), "429s")
				b.ReportMetric(float64(writes+reads)/calls, "js-req/call")
				b.ReportMetric(float64(conflicts)/calls, "conflicts/call")
				b.ReportMetric(float64(watched)/calls, "watched/call")
				b.ReportMetric(float64(rebooked), "late-slots-rebooked")
				for _, r := range rs {
					r.kill()
				}
			}
		})
	}
}
