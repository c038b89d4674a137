package ingress

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Routes are the ingress's route patterns: the values of the route label.
var Routes = []string{RoutePost, RouteGet, RouteKey, RouteOpenAPI, RouteOther}

// The route patterns.
const (
	RoutePost    = "POST /v1/revocations"
	RouteGet     = "GET /v1/revocations/{id}"
	RouteKey     = "GET /v1/keys/{account_id}/{key_id}"
	RouteOpenAPI = "GET /v1/openapi.json"
	// RouteOther counts requests for no route (404, 405).
	RouteOther = "other"
	// UnknownCaller is the caller label of a request from no known caller.
	UnknownCaller = "unknown"
)

// Metrics are the ingress's metrics (SPEC §8). Build them once per
// process: a connection made again starts a new Server on the same ones.
type Metrics struct {
	Requests *prometheus.CounterVec
	Wait     prometheus.Histogram
}

// NewMetrics registers the ingress's metrics on reg, with a series of
// each route and caller for the usual answers made at 0, so dashboards
// show 0 rather than nothing.
func NewMetrics(reg prometheus.Registerer, callers []string) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{
		Requests: f.NewCounterVec(prometheus.CounterOpts{
			Name: "revoker_ingress_requests_total",
			Help: "Requests to the HTTP ingress, by route pattern, status code and caller.",
		}, []string{"route", "code", "caller"}),
		Wait: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "revoker_ingress_wait_seconds",
			Help:    "How long Prefer: wait requests waited for their outcome.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120},
		}),
	}
	m.zero(callers)
	m.Requests.WithLabelValues(RoutePost, "401", UnknownCaller)
	m.Requests.WithLabelValues(RouteOpenAPI, "200", UnknownCaller)
	return m
}

// usualCodes are the answers of each route a dashboard shows at 0 for
// every caller before any is made.
var usualCodes = map[string][]int{
	RoutePost: {200, 202, 400, 401, 403, 409, 413, 415, 422, 429, 503},
	RouteGet:  {200, 202, 401, 404, 429, 503},
	RouteKey:  {200, 400, 401, 403, 429, 503},
}

// zero makes the usual series of callers at 0 (those that exist keep
// their counts).
func (m *Metrics) zero(callers []string) {
	for route, codes := range usualCodes {
		for _, caller := range callers {
			for _, code := range codes {
				m.Requests.WithLabelValues(route, strconv.Itoa(code), caller)
			}
		}
	}
}
