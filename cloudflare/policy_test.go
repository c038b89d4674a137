package cloudflare_test

import (
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/revoker/revoker/cloudflare"
)

func TestParseRatePolicy(t *testing.T) {
	pol := func(q int, w time.Duration) cloudflare.RatePolicy {
		return cloudflare.RatePolicy{Known: true, Quota: q, Window: w}
	}
	for _, tc := range []struct {
		name string
		vs   []string // Ratelimit-Policy lines; nil: absent
		want cloudflare.RatePolicy
	}{
		{"absent", nil, cloudflare.RatePolicy{}},
		{"cloudflare", []string{`"default";q=1200;w=300`}, pol(1200, 5*time.Minute)},
		{"spaces", []string{` "default" ; q=50 ; w=10 `}, pol(50, 10*time.Second)},
		{"quoted numbers", []string{`"default";q="7";w="2"`}, pol(7, 2*time.Second)},
		{"older draft", []string{`100;w=60`}, pol(100, time.Minute)},
		{"lowest rate wins", []string{`"burst";q=100;w=10, "day";q=1200;w=300`}, pol(1200, 5*time.Minute)},
		{"lowest rate wins over lines", []string{`"a";q=10;w=1`, `"b";q=5;w=1`}, pol(5, time.Second)},
		{"tie keeps the first", []string{`"a";q=2;w=1, "b";q=4;w=2`}, pol(2, time.Second)},
		{"quoted comma in a name", []string{`"a,b";q=3;w=1`}, pol(3, time.Second)},
		{"zero quota", []string{`"default";q=0;w=60`}, pol(0, time.Minute)},
		{"no window", []string{`"default";q=1200`}, cloudflare.RatePolicy{}},
		{"no quota", []string{`"default";w=300`}, cloudflare.RatePolicy{}},
		{"zero window", []string{`"default";q=5;w=0`}, cloudflare.RatePolicy{}},
		{"window past a week", []string{`"default";q=5;w=604801`}, cloudflare.RatePolicy{}},
		{"negative", []string{`"default";q=-5;w=10`}, cloudflare.RatePolicy{}},
		{"not a number", []string{`"default";q=1e3;w=10`}, cloudflare.RatePolicy{}},
		{"overflow", []string{`"default";q=9999999999999999999;w=10`}, cloudflare.RatePolicy{}},
		{"bad item skipped", []string{`"x";q=zz;w=1, "default";q=4;w=1`}, pol(4, time.Second)},
		{"garbage", []string{`;;,,==";`}, cloudflare.RatePolicy{}},
	} {
		h := http.Header{}
		for _, v := range tc.vs {
			h.Add("Ratelimit-Policy", v)
		}
		if got := cloudflare.ParseRatePolicy(h); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
	if r := pol(1200, 5*time.Minute).PerSecond(); r != 4 {
		t.Errorf("PerSecond of 1200/300s = %v", r)
	}
	if r := (cloudflare.RatePolicy{}).PerSecond(); r != 0 {
		t.Errorf("PerSecond of an unknown policy = %v", r)
	}
}

func FuzzParseRatePolicy(f *testing.F) {
	for _, s := range []string{`"default";q=1200;w=300`, `100;w=60, 10;w=1`, `"a,b";q=3;w=1`, `"\";q=1;w=1`, `q=;w=`, strings.Repeat(`"x";q=1;w=1,`, 50)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		p := cloudflare.ParseRatePolicy(http.Header{"Ratelimit-Policy": {v}})
		if !p.Known {
			if p != (cloudflare.RatePolicy{}) {
				t.Fatalf("unknown policy with values: %+v", p)
			}
			return
		}
		if p.Quota < 0 || p.Window < time.Second || p.Window > 7*24*time.Hour || p.Window%time.Second != 0 {
			t.Fatalf("out of range: %+v", p)
		}
		if r := p.PerSecond(); r < 0 || math.IsNaN(r) || math.IsInf(r, 0) {
			t.Fatalf("PerSecond = %v for %+v", r, p)
		}
	})
}
