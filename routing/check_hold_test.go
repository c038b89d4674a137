package routing

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestCheckSecondRequestWaitsOutTheFirstsHold: an account token's check
// is two calls of its budget (the user endpoint first, then the
// account's). The first answer is refused (403, as for an account token
// on the user endpoint) and asks for a hold: its Ratelimit header says
// nothing is left for 2 s. That hold holds every call of the budget (SPEC
// §4, §9), the check's own second request included.
func TestCheckSecondRequestWaitsOutTheFirstsHold(t *testing.T) {
	const hold = 2 * time.Second
	var mu sync.Mutex
	var user, account time.Time
	routeChecked(t, 4, func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		mu.Lock()
		defer mu.Unlock()
		if strings.HasPrefix(req.URL.Path, "/accounts/") {
			account = time.Now()
			_, _ = io.WriteString(w, `{"success":true,"errors":[],"messages":[],"result":{"id":"t1","status":"active"}}`)
			return
		}
		user = time.Now()
		w.Header().Set("Ratelimit", `"default";r=0;t=2`)
		w.WriteHeader(http.StatusForbidden)
		_, _ = io.WriteString(w, `{"success":false,"errors":[{"code":1000,"message":"Invalid API Token"}],"messages":[],"result":null}`)
	})
	mu.Lock()
	defer mu.Unlock()
	if user.IsZero() || account.IsZero() {
		t.Fatalf("the check asked the user endpoint at %v and the account's at %v; want both", user, account)
	}
	if gap := account.Sub(user); gap < hold {
		t.Errorf("the check's second request came %v after the first, whose answer asked for a hold of %v", gap, hold)
	}
}
