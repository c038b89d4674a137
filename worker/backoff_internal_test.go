package worker

import (
	"testing"
	"time"
)

// TestRetryBackOffNeverPastTheMaxInterval: a delivery's waits between
// calls grow from REVOKER_RETRY_INITIAL and never pass
// REVOKER_RETRY_MAX_INTERVAL, jitter included (SPEC §4, §6); and they
// keep a jitter below it.
func TestRetryBackOffNeverPastTheMaxInterval(t *testing.T) {
	for _, c := range []struct{ initial, max time.Duration }{
		{500 * time.Millisecond, 30 * time.Second}, // the defaults
		{100 * time.Millisecond, 100 * time.Millisecond},
		{time.Second, 2 * time.Second},
	} {
		next := retryBackOff(c.initial, c.max)
		distinct := map[time.Duration]bool{}
		for i := range 200 {
			d := next()
			if d > c.max || d <= 0 {
				t.Fatalf("initial %v, max %v: wait %d is %v", c.initial, c.max, i, d)
			}
			if i == 0 && d > c.initial*3/2 {
				t.Errorf("initial %v: the first wait is %v, more than the initial interval and its jitter", c.initial, d)
			}
			distinct[d] = true
		}
		if len(distinct) < 10 {
			t.Errorf("initial %v, max %v: %d distinct waits in 200: no jitter", c.initial, c.max, len(distinct))
		}
	}
}
