package ingress

import (
	"math"
	"sync"
	"time"
)

// bucket is one caller's token bucket: rate tokens a second, up to burst
// (at least one), each request taking one. A rate of 0 is no limit.
type bucket struct {
	rate, burst float64

	mu     sync.Mutex
	tokens float64
	last   time.Time
}

func newBucket(rate float64) *bucket {
	return &bucket{rate: rate, burst: max(rate, 1), tokens: max(rate, 1)}
}

// take takes a token at now; when there is none, it returns how long until
// there is one.
func (b *bucket) take(now time.Time) (ok bool, wait time.Duration) {
	if b.rate <= 0 {
		return true, 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() && now.After(b.last) {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	if now.After(b.last) {
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	// Bounded, so that a tiny rate cannot overflow the duration.
	return false, time.Duration(min((1-b.tokens)/b.rate, maxRetryAfter) * float64(time.Second))
}

// maxRetryAfter bounds the Retry-After of a rate refusal, in seconds.
const maxRetryAfter = 3600

// retryAfter is a wait as Retry-After's whole seconds, at least 1.
func retryAfter(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}
