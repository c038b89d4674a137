package routing

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/throttle"
)

// TestCheckQuotaWarningNamesTheQuotaHeeded: the quota stated by the first
// answer of an account token's check (the user endpoint's) lowers the
// budget; the warning that says so names that quota, not the last
// answer's, which states none.
func TestCheckQuotaWarningNamesTheQuotaHeeded(t *testing.T) {
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if strings.HasPrefix(req.URL.Path, "/accounts/") {
			_, _ = io.WriteString(w, `{"success":true,"errors":[],"messages":[],"result":{"id":"t1","status":"active"}}`)
			return
		}
		w.Header().Set("Ratelimit-Policy", `"default";q=60;w=60`)
		w.WriteHeader(http.StatusForbidden)
		_, _ = io.WriteString(w, `{"success":false,"errors":[{"code":1000,"message":"Invalid API Token"}],"messages":[],"result":null}`)
	}))
	t.Cleanup(api.Close)
	r, c, ready := checkedRoutes(t, api.URL, 10)
	core, logs := observer.New(zapcore.WarnLevel)
	r.log = zap.New(core)
	all := throttle.New(throttle.Config{Priorities: 1, Concurrency: 4})
	t.Cleanup(all.Close)
	r.verify(context.Background(), c, all, 0, ready)
	warned := logs.FilterMessageSnippet("lower quota").All()
	if len(warned) != 1 {
		t.Fatalf("warnings %v; want one about the lower quota", logs.All())
	}
	if q := warned[0].ContextMap()["quota_per_second"]; q != 1.0 {
		t.Errorf("the warning says quota_per_second=%v; the quota heeded is 1 a second (q=60;w=60)", q)
	}
}
