package bench

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/queue"
)

const (
	defaultDrainEvents = 20_000
	drainConcurrency   = 64
)

// BenchmarkDrain: 20,000 events through the worker (concurrency 64, no
// rate limit, an API answering at once), beside a minimal loop over the same
// stream and stand-in — consume, one DELETE over kept-alive connections,
// ack, nothing else — which is the floor NATS and HTTP set on this machine.
//
// BENCH_DRAIN_EVENTS changes the number of events (a longer drain for a
// profile); BENCH_PROFILE=FILE writes a CPU profile of the worker, taken
// through REVOKER_DEBUG_ADDR from the first publish on, for
// BENCH_PROFILE_SECONDS (default 20); BENCH_RIG_PROFILE=FILE one of this
// process (JetStream, the stand-in, the publisher) while the worker drains.
func BenchmarkDrain(b *testing.B) {
	drainEvents := envInt(b, "BENCH_DRAIN_EVENTS", defaultDrainEvents)
	for range b.N {
		r := newRig(b)
		cfg := config.Default()
		ctx, cancel := ctxTimeout(5 * time.Minute)
		defer cancel()
		// Only the stream: a work-queue stream allows one consumer per
		// subject, so the worker's are made after the floor's is gone.
		if _, err := r.js.CreateStream(ctx, queue.WorkStream(cfg.Topology())); err != nil {
			b.Fatal(err)
		}

		// The floor: the same subject, its own consumer, 64 workers.
		self0 := cpuOf(os.Getpid())
		floorRate, floorP50, floorP99 := r.minimalLoop(ctx, cfg, keys("f", drainEvents))
		self1 := cpuOf(os.Getpid())

		// The worker, as its own process.
		vars := append([]string{"REVOKER_CONCURRENCY=64", "REVOKER_RATE_LIMIT=0", "REVOKER_IP_RATE_LIMIT=0"}, strings.Fields(os.Getenv("BENCH_EXTRA_ENV"))...)
		prof := newProfiler(b)
		vars = append(vars, prof.vars()...)
		served0 := r.served()
		p := r.startWorker(vars...)
		ks := keys("w", drainEvents)
		start := time.Now()
		profiled := prof.start()
		stopRig := profileRig(b)
		pub := r.publishAsync(cfg.LowestPriority(), ks)
		r.waitCalls(10*time.Minute, "every event revoked", "w", drainEvents)
		stopRig()
		served := r.served().since(served0, drainEvents)
		call := r.calls("w")
		var last time.Time
		for _, c := range call {
			if c.After(last) {
				last = c
			}
		}
		rate := float64(drainEvents) / last.Sub(start).Seconds()
		lat := latencies(pub, call)
		self2 := cpuOf(os.Getpid())
		b.Logf("this process (JetStream, stand-in, publisher; the floor's loop too): %.3f s CPU per 1,000 events with the floor, %.3f s with the worker",
			1000*(self1-self0)/float64(drainEvents), 1000*(self2-self1)/float64(drainEvents))
		b.Logf("the JetStream server while the worker drained, per event (the publisher's messages included): %s", served)
		rss := p.peakRSS()
		cpuPerK := 1000 * p.cpuSeconds() / float64(drainEvents)
		if err := <-profiled; err != nil {
			b.Errorf("CPU profile: %v", err)
		}
		p.stop()

		b.ReportMetric(rate, "events/s")
		b.ReportMetric(ms(pct(lat, .5)), "p50-ms")
		b.ReportMetric(ms(pct(lat, .99)), "p99-ms")
		b.ReportMetric(floorRate, "floor-events/s")
		b.ReportMetric(rate/floorRate, "of-floor")
		b.ReportMetric(rss, "peak-RSS-MiB")
		b.ReportMetric(cpuPerK, "worker-cpu-s/1k-events")
		b.Logf("%s; worker %.0f events/s (p50 %.0f ms, p99 %.0f ms publish→call), floor %.0f events/s (p50 %.0f ms, p99 %.0f ms), ratio %.2f; worker peak RSS %.1f MiB, CPU %.3f s per 1,000 events",
			cores(), rate, ms(pct(lat, .5)), ms(pct(lat, .99)), floorRate, ms(floorP50), ms(floorP99), rate/floorRate, rss, cpuPerK)
	}
}

// minimalLoop drains keys with nothing but consume → DELETE → ack, and
// returns its rate and publish→call latencies.
func (r *rig) minimalLoop(ctx context.Context, cfg config.Config, ks []string) (float64, time.Duration, time.Duration) {
	b := r.b
	subj := cfg.LowestPriority()
	cons, err := r.js.CreateConsumer(ctx, cfg.Stream, jetstream.ConsumerConfig{
		Durable: "floor", FilterSubject: subj, AckPolicy: jetstream.AckExplicitPolicy,
		MaxAckPending: 4 * drainConcurrency,
	})
	if err != nil {
		b.Fatal(err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(2 * drainConcurrency))
	if err != nil {
		b.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: drainConcurrency}}
	var wg sync.WaitGroup
	for range drainConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				msg, err := it.Next()
				if err != nil {
					return
				}
				key := msg.Headers().Get(jetstream.MsgIDHeader)
				req, _ := http.NewRequest(http.MethodDelete, r.api.URL+"/accounts/benchacct/stream/keys/"+key, nil)
				req.Header.Set("Authorization", "Bearer bench-token")
				resp, err := client.Do(req)
				if err == nil {
					drain(resp)
				}
				msg.Ack()
			}
		}()
	}
	start := time.Now()
	pub := r.publishAsync(subj, ks)
	r.waitCalls(5*time.Minute, "the minimal loop drained", "f", len(ks))
	it.Stop()
	wg.Wait()
	call := r.calls("f")
	var last time.Time
	for _, c := range call {
		if c.After(last) {
			last = c
		}
	}
	if err := r.js.DeleteConsumer(ctx, cfg.Stream, "floor"); err != nil {
		b.Fatal(err)
	}
	lat := latencies(pub, call)
	return float64(len(ks)) / last.Sub(start).Seconds(), pct(lat, .5), pct(lat, .99)
}

// traffic is what the JetStream server has taken in and sent out.
type traffic struct{ inMsgs, outMsgs, inBytes, outBytes int64 }

// served is the server's traffic so far.
func (r *rig) served() traffic {
	v, err := r.srv.Varz(nil)
	if err != nil {
		r.b.Fatal(err)
	}
	return traffic{v.InMsgs, v.OutMsgs, v.InBytes, v.OutBytes}
}

// since is the traffic from then to t, per event of n: a build that sends
// the server more (or larger) messages per event shows it here, apart
// from how it times them.
func (t traffic) since(then traffic, n int) string {
	per := func(now, before int64) float64 { return float64(now-before) / float64(n) }
	return fmt.Sprintf("%.2f messages in, %.2f out, %.0f bytes in, %.0f out",
		per(t.inMsgs, then.inMsgs), per(t.outMsgs, then.outMsgs), per(t.inBytes, then.inBytes), per(t.outBytes, then.outBytes))
}
