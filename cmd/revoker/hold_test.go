package main

import (
	"context"
	"io"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/queue/queuetest"
	"github.com/revoker/revoker/throttle"
)

// TestServeHoldFromRateLimitHeaderIsCappedShownAndLoggedOnce: an answer
// saying no call is left for a day holds every call five minutes at most,
// sets revoker_api_paused, and is logged once with its length and cause,
// however many answers said it.
func TestServeHoldFromRateLimitHeaderIsCappedShownAndLoggedOnce(t *testing.T) {
	ns := queuetest.Server(t)
	api := cloudflaretest.NewServer(cloudflaretest.WithToken(hToken),
		cloudflaretest.WithResponder(func(cloudflaretest.Request) (int, http.Header, string, bool) {
			return http.StatusOK, http.Header{"Ratelimit": {`"default";r=0;t=86400`}}, cloudflaretest.SuccessBody, true
		}))
	t.Cleanup(api.Close)
	env := maps.Clone(hFastEnv)
	env["REVOKER_NATS_URL"] = ns.ClientURL()
	env["CLOUDFLARE_BASE_URL"] = api.URL
	env["CLOUDFLARE_API_TOKEN"] = hToken
	cfg := hConfig(t, env)

	core, logs := observer.New(zapcore.InfoLevel)
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, serveOptions{log: zap.New(core), ready: func(a string) { addr <- a }}) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	metricsURL := "http://" + <-addr + "/metrics"
	paused := func() bool { return strings.Contains(scrape(metricsURL), "\nrevoker_api_paused 1\n") }
	queuetest.Eventually(t, 10*time.Second, "streams created", func() bool {
		return hRun(t, env, "", "publish", "--account", "acc1", "--key", "k0").code == 0
	})
	for _, k := range []string{"k1", "k2", "k3"} {
		hRun(t, env, "", "publish", "--account", "acc1", "--key", k).want(t, 0)
	}
	queuetest.Eventually(t, 10*time.Second, "revoker_api_paused 1", paused)

	holds := logs.FilterMessage("the API asked for a hold: every call of every replica waits").All()
	if len(holds) != 1 {
		t.Fatalf("hold logged %d times, want once", len(holds))
	}
	f := holds[0].ContextMap()
	length, _ := f["length"].(time.Duration)
	if length <= 0 || length > throttle.MaxPause {
		t.Errorf("hold logged with length %v, want at most %v", length, throttle.MaxPause)
	}
	if c, _ := f["cause"].(string); !strings.Contains(c, "rate-limit header") || !strings.Contains(c, "capped at 5m0s") {
		t.Errorf("hold logged with cause %q", c)
	}

	// An event arriving during the hold waits.
	before := api.Count()
	t.Logf("%d answers asked for the hold; logged once", before)
	hRun(t, env, "", "publish", "--account", "acc1", "--key", "k4").want(t, 0)
	queuetest.Eventually(t, 10*time.Second, "the event received", func() bool {
		return strings.Contains(scrape(metricsURL), `revoker_events_received_total{subject="revoke.scheduled"} 5`)
	})
	time.Sleep(200 * time.Millisecond) // observing an absence, not synchronising
	if n := api.Count(); n != before {
		t.Errorf("%d calls made during the hold", n-before)
	}
}

func scrape(url string) string {
	resp, err := http.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
