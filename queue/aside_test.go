package queue_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/revoker/revoker/config"
)

// TestUrgentNotBehindOtherEventsBackoff: the urgent lane's every place is
// held by urgent events whose calls failed and that wait out their
// backoff. A new urgent event must not wait for those waits (SPEC §3: its
// first call starts no later than the calls in flight, the urgent events
// ahead of it and one rate interval; none of those is in the way here):
// it is called before either of the others calls again.
func TestUrgentNotBehindOtherEventsBackoff(t *testing.T) {
	s := newStack(t, func(c *config.Config) {
		c.Concurrency = 1                // the urgent lane holds 2
		c.RetryInitial = 2 * time.Second // 1 to 3 s, with its jitter
		c.RetryMaxInterval = 2 * time.Second
		c.RetryMaxElapsed = 60 * time.Second
		c.AckWait = 30 * time.Second
	})
	s.start()
	s.api.Script("u1", http.StatusServiceUnavailable)
	s.api.Script("u2", http.StatusServiceUnavailable)
	s.publish(s.cfg.HighestPriority(), eventJSON(acct, "u1"), "")
	s.publish(s.cfg.HighestPriority(), eventJSON(acct, "u2"), "")
	s.waitFor("u1 and u2 answered 503", func() bool { return s.deletes("u1") == 1 && s.deletes("u2") == 1 })
	s.publish(s.cfg.HighestPriority(), eventJSON(acct, "u3"), "")
	s.waitFor("u3 called, and u1 and u2 called again", func() bool {
		return s.deletes("u3") > 0 && s.deletes("u1") == 2 && s.deletes("u2") == 2
	})

	var u3 time.Time
	retries := map[string]time.Time{}
	for _, r := range s.api.Requests() {
		switch {
		case r.KeyID == "u3" && u3.IsZero():
			u3 = r.At
		case (r.KeyID == "u1" || r.KeyID == "u2") && r.Status == http.StatusOK:
			retries[r.KeyID] = r.At
		}
	}
	if len(retries) != 2 {
		t.Fatalf("retries revoked %v; want u1's and u2's", retries)
	}
	for key, at := range retries {
		if !u3.Before(at) {
			t.Errorf("u3 was first called at %s, after %s's retry at %s: it waited for another event's backoff",
				u3.Format(time.StampMilli), key, at.Format(time.StampMilli))
		}
	}
}
