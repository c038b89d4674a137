package config_test

import (
	"strings"
	"testing"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/routing"
)

// A positive REVOKER_RATE_LIMIT is a limit: a value Load accepts must never
// turn into no limit at all. 1e-10 calls per second overflows the spacing
// (a time.Duration) into a negative interval, which the shared budget
// treats as "no wait": the worker then calls without any limit.
func TestTinyRateIsRefused(t *testing.T) {
	for _, env := range []string{"REVOKER_RATE_LIMIT", "REVOKER_IP_RATE_LIMIT"} {
		t.Run(env, func(t *testing.T) {
			e := baseEnv()
			e[env] = "1e-10"
			cfg, err := load(t, config.All, e)
			if err != nil {
				if !strings.Contains(err.Error(), env) || !strings.Contains(err.Error(), "out of range") {
					t.Fatalf("%s=1e-10 refused as %q; want it named, out of range", env, err)
				}
				return
			}
			t.Errorf("%s=1e-10 accepted; want it refused as out of range", env)
			// What serve does with the single credential's rate.
			r := routing.Rate(cfg.RateLimit, map[string]float64{"": cfg.RateLimit}, cfg.IPRateLimit)
			if iv := queue.BudgetInterval(r); iv <= 0 {
				t.Fatalf("%s=1e-10 accepted, and the budget's spacing is %v (rate %g): no limit at all", env, iv, r)
			}
		})
	}
}

// A NATS URL has no use for a query or fragment (config's own redactURL
// says so). A password holding an unescaped '#' cuts the URL: the host
// becomes the user name and the real server ends up in the fragment, and
// Load accepts it without a word.
func TestNATSURLWithQueryFragmentOrPathRefused(t *testing.T) {
	for _, v := range []string{
		"nats://revoker:4222#pw@nats.internal:4222", // password "4222#pw"
		"nats://nats.internal:4222/?token=s3cret",
		"nats://nats.internal:4222#frag",
		"nats://revoker:12/ss@nats.internal:4222", // password "12/ss": dials revoker:12
	} {
		e := baseEnv()
		e["REVOKER_NATS_URL"] = v
		if cfg, err := load(t, config.All, e); err == nil {
			t.Errorf("REVOKER_NATS_URL=%q accepted (NATSURL %q); want a bad value naming REVOKER_NATS_URL", v, cfg.Redacted().NATSURL)
		}
	}
}
