package throttle_test

import (
	"testing"
	"time"

	"github.com/revoker/revoker/throttle"
)

// A rate too small to space calls by a Duration spaces them as far as one
// can: never a negative spacing, which a budget would read as no limit.
func TestIntervalOfATinyRateSaturates(t *testing.T) {
	for _, r := range []float64{1e-10, 1e-300, throttle.MinRate} {
		if iv := throttle.Interval(r); iv < time.Hour {
			t.Errorf("Interval(%g) = %v, want at least an hour", r, iv)
		}
	}
}
