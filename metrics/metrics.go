// Package metrics holds revoker's Prometheus collectors and serves /metrics,
// /healthz and /readyz. Metric and label names are part of the external
// contract: dashboards and alerts are built against them.
package metrics

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	dto "github.com/prometheus/client_model/go"
)

// Metrics is every collector revoker exports.
type Metrics struct {
	EventsReceived    *prometheus.CounterVec
	EventsProcessed   *prometheus.CounterVec
	DeadLetters       *prometheus.CounterVec
	APIRequests       *prometheus.CounterVec
	APIDuration       prometheus.Histogram
	APIRetries        prometheus.Counter
	RevocationLatency *prometheus.HistogramVec
	OldestWaiting     *prometheus.GaugeVec
	// RateLimitWait and APIPaused are the single budget's, when there is
	// no credentials file; Budget gives each named budget's.
	RateLimitWait prometheus.Observer
	APIPaused     prometheus.Gauge
	// RateLimitWaits, APIPauses and BudgetCalls are by budget (the label
	// only with a credentials file, SPEC §8).
	RateLimitWaits *prometheus.HistogramVec
	APIPauses      *prometheus.GaugeVec
	BudgetCalls    *prometheus.CounterVec
	// budgetLabelled: the budget collectors carry the budget label.
	budgetLabelled bool
	Inflight       prometheus.Gauge
	Pending        *prometheus.GaugeVec
	NATSConnected  prometheus.Gauge
	BuildInfo      *prometheus.GaugeVec
	// OutcomeFailures counts failed writes of outcome records (the audit
	// trail); the event is held, never acked, until its record is stored.
	OutcomeFailures prometheus.Counter
	// ConfirmationsLost counts API confirmations that could not be made
	// durable before the process had to stop (SPEC §4, "The proof").
	ConfirmationsLost prometheus.Counter
	// AbsenceChecks counts key lists fetched to prove a 404, by result.
	AbsenceChecks *prometheus.CounterVec
	// KeysStillListed is how many keys the trail says are gone that the
	// last check (`verify`, by any replica) found still listed.
	KeysStillListed prometheus.Gauge
}

// The results of an absence check (revoker_absence_checks_total).
const (
	AbsenceAbsent = "absent"
	AbsenceListed = "listed"
	AbsenceFailed = "failed"
)

// Labels are the label values known at start; every combination of them
// gets its series at once.
type Labels struct {
	// Subjects are the work subjects, highest priority first: a subject's
	// index is its priority label.
	Subjects []string
	// Outcomes and Reasons are the values of the outcome and reason labels.
	Outcomes, Reasons []string
	// Budgets are the rate budgets named in the credentials file; none
	// with a single credential (then DefaultBudget counts the calls).
	Budgets []string
}

// DefaultBudget is the budget label of the calls made with the single
// credential of the CLOUDFLARE_* variables.
const DefaultBudget = "default"

// Budget is one rate budget's collectors.
type Budget struct {
	Wait   prometheus.Observer // revoker_rate_limit_wait_seconds
	Paused prometheus.Gauge    // revoker_api_paused
	Calls  prometheus.Counter  // revoker_budget_calls_total
}

// Build describes the running binary for revoker_build_info.
type Build struct {
	Version, Revision, GoVersion string
}

// New registers every collector on reg. Each known label combination is
// created at once so that every series starts at 0 and dashboards never show
// "no data" for an outcome that simply has not happened yet.
func New(reg prometheus.Registerer, labels Labels, build Build) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{
		EventsReceived: f.NewCounterVec(prometheus.CounterOpts{
			Name: "revoker_events_received_total",
			Help: "Events taken from JetStream, by subject (redeliveries included).",
		}, []string{"subject"}),
		EventsProcessed: f.NewCounterVec(prometheus.CounterOpts{
			Name: "revoker_events_processed_total",
			Help: "Deliveries finished, by subject and outcome (revoked, not_found, dead_lettered, requeued).",
		}, []string{"subject", "outcome"}),
		DeadLetters: f.NewCounterVec(prometheus.CounterOpts{
			Name: "revoker_dead_letters_total",
			Help: "Events written to the dead-letter stream, by reason.",
		}, []string{"reason"}),
		APIRequests: f.NewCounterVec(prometheus.CounterOpts{
			Name: "revoker_api_requests_total",
			Help: "Calls of the delete endpoint, by HTTP status (or error when none came back).",
		}, []string{"code"}),
		APIDuration: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "revoker_api_request_duration_seconds",
			Help:    "Duration of calls of the delete endpoint.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		APIRetries: f.NewCounter(prometheus.CounterOpts{
			Name: "revoker_api_retries_total",
			Help: "Calls that repeated an earlier failed call of the same event.",
		}),
		RevocationLatency: f.NewHistogramVec(prometheus.HistogramOpts{
			Name: "revoker_revocation_latency_seconds",
			Help: "Time from the event's storage in the stream to the API's confirmation: the time-to-revoke.",
			// At most 2.5x apart from 50 ms to 1 h, so a quantile read off
			// them is never far from the truth (a 4m57s wait reads as such,
			// not as 5 or 15 minutes).
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 25, 60, 150, 300, 600, 1200, 2400, 3600},
		}, []string{"subject", "priority"}),
		OldestWaiting: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "revoker_oldest_waiting_seconds",
			Help: "Age, from its publish time, of the subject's oldest event with no final outcome yet (in the stream or held by this replica); 0 when there is none.",
		}, []string{"subject", "priority"}),
		RateLimitWaits: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "revoker_rate_limit_wait_seconds",
			Help:    "How long calls waited for their turn: a rate token, a free call slot, or the end of a 429 pause.",
			Buckets: []float64{.001, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, budgetLabel(labels)),
		APIPauses: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "revoker_api_paused",
			Help: "1 while a hold asked for by the API (429, Retry-After, Ratelimit) stops every call (of the budget).",
		}, budgetLabel(labels)),
		BudgetCalls: f.NewCounterVec(prometheus.CounterOpts{
			Name: "revoker_budget_calls_total",
			Help: "API calls charged to each rate budget: deletes, key lists and token checks.",
		}, []string{"budget"}),
		Inflight: f.NewGauge(prometheus.GaugeOpts{
			Name: "revoker_inflight_events",
			Help: "Events taken from JetStream and not yet finished.",
		}),
		Pending: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "revoker_consumer_pending_messages",
			Help: "Messages waiting in the stream for the subject's consumer, not yet delivered to any replica.",
		}, []string{"subject", "priority"}),
		NATSConnected: f.NewGauge(prometheus.GaugeOpts{
			Name: "revoker_nats_connected",
			Help: "1 while connected to NATS.",
		}),
		BuildInfo: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "revoker_build_info",
			Help: "Always 1; the labels describe the running binary.",
		}, []string{"version", "revision", "goversion"}),
		OutcomeFailures: f.NewCounter(prometheus.CounterOpts{
			Name: "revoker_outcome_publish_failures_total",
			Help: "Failed writes of outcome records; the event is held and the write retried.",
		}),
		ConfirmationsLost: f.NewCounter(prometheus.CounterOpts{
			Name: "revoker_confirmations_lost_total",
			Help: "API confirmations that could not be made durable before the process stopped.",
		}),
		AbsenceChecks: f.NewCounterVec(prometheus.CounterOpts{
			Name: "revoker_absence_checks_total",
			Help: "Key lists fetched to prove a 404, by result (absent, listed, failed).",
		}, []string{"result"}),
		KeysStillListed: f.NewGauge(prometheus.GaugeOpts{
			Name: "revoker_keys_still_listed",
			Help: "Keys the audit trail says are gone that the last check, by any replica, found still listed.",
		}),
	}
	m.budgetLabelled = len(labels.Budgets) > 0
	if !m.budgetLabelled {
		b := m.Budget("")
		m.RateLimitWait, m.APIPaused = b.Wait, b.Paused
	}
	for _, b := range labels.Budgets {
		m.Budget(b)
	}
	for _, r := range []string{AbsenceAbsent, AbsenceListed, AbsenceFailed} {
		m.AbsenceChecks.WithLabelValues(r)
	}
	for i, s := range labels.Subjects {
		p := strconv.Itoa(i)
		m.EventsReceived.WithLabelValues(s)
		m.RevocationLatency.WithLabelValues(s, p)
		m.Pending.WithLabelValues(s, p)
		m.OldestWaiting.WithLabelValues(s, p)
		for _, o := range labels.Outcomes {
			m.EventsProcessed.WithLabelValues(s, o)
		}
	}
	for _, r := range labels.Reasons {
		m.DeadLetters.WithLabelValues(r)
	}
	for _, c := range []string{"200", "400", "401", "403", "404", "408", "409", "429", "500", "502", "503", "504", "error"} {
		m.APIRequests.WithLabelValues(c)
	}
	m.BuildInfo.WithLabelValues(build.Version, build.Revision, build.GoVersion).Set(1)
	return m
}

// budgetLabel is the budget label where there are named budgets.
func budgetLabel(l Labels) []string {
	if len(l.Budgets) == 0 {
		return nil
	}
	return []string{"budget"}
}

// Budget returns the collectors of the budget name ("" or any name
// without a credentials file: the single credential's).
func (m *Metrics) Budget(name string) Budget {
	var labels []string
	if m.budgetLabelled {
		labels = []string{name}
	} else {
		name = DefaultBudget
	}
	return Budget{
		Wait:   m.RateLimitWaits.WithLabelValues(labels...),
		Paused: m.APIPauses.WithLabelValues(labels...),
		Calls:  m.BudgetCalls.WithLabelValues(name),
	}
}

// Code is the code label for an HTTP status; 0 means no response.
func Code(status int) string {
	if status == 0 {
		return "error"
	}
	return strconv.Itoa(status)
}

// Lane is the collectors of one subject, bound to its labels once so that
// the path of an event looks nothing up.
type Lane struct {
	Received      prometheus.Counter
	Latency       prometheus.Observer
	Pending       prometheus.Gauge
	OldestWaiting prometheus.Gauge
	processed     *prometheus.CounterVec
}

// Lane returns the collectors of the subject of the given priority.
func (m *Metrics) Lane(subject string, priority int) Lane {
	p := strconv.Itoa(priority)
	return Lane{
		Received:      m.EventsReceived.WithLabelValues(subject),
		Latency:       m.RevocationLatency.WithLabelValues(subject, p),
		Pending:       m.Pending.WithLabelValues(subject, p),
		OldestWaiting: m.OldestWaiting.WithLabelValues(subject, p),
		processed:     m.EventsProcessed.MustCurryWith(prometheus.Labels{"subject": subject}),
	}
}

// Processed counts a delivery finished with outcome.
func (l Lane) Processed(outcome string) { l.processed.WithLabelValues(outcome).Inc() }

// Count is what counter c has counted.
func Count(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return 0
	}
	return m.GetCounter().GetValue()
}
