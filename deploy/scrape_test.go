package deploy_test

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"
)

// lostLinger reads cmd/revoker/serve.go's lostLinger: how long a replica
// that lost a confirmation keeps serving /metrics for one more scrape.
func lostLinger(t *testing.T) time.Duration {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "cmd", "revoker", "serve.go"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`var lostLinger = (\d+) \* time\.Second`).FindSubmatch(b)
	if m == nil {
		t.Fatal("serve.go holds no lostLinger")
	}
	d, err := time.ParseDuration(string(m[1]) + "s")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestServiceMonitorScrapesAsTheAlertsAssume: the shipped ServiceMonitor
// scrapes revoker on Kubernetes. The alerts' two-minute page is timed for
// the scrape interval alerts.yml states, and a replica that lost a
// confirmation serves /metrics for lostLinger after its shutdown so that
// revoker_confirmations_lost_total is scraped once more (SPEC §4, "The
// proof", point 6): the interval must be no longer than either.
func TestServiceMonitorScrapesAsTheAlertsAssume(t *testing.T) {
	alerts, err := os.ReadFile(filepath.Join("prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`scrape and evaluation every (\d+s)`).FindSubmatch(alerts)
	if m == nil {
		t.Fatal("alerts.yml states no scrape interval")
	}
	assumed, err := time.ParseDuration(string(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	linger := lostLinger(t)
	eps := maps(dig(k8sObject(t, "servicemonitor.yaml", "ServiceMonitor"), "spec", "endpoints"))
	if len(eps) == 0 {
		t.Fatal("servicemonitor.yaml has no endpoints")
	}
	for _, ep := range eps {
		s, _ := ep["interval"].(string)
		got, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("interval %q: %v", s, err)
		}
		if got > assumed {
			t.Errorf("servicemonitor.yaml scrapes every %s; alerts.yml is timed for %s", got, assumed)
		}
		if got >= linger {
			t.Errorf("servicemonitor.yaml scrapes every %s; a replica that lost a confirmation serves /metrics %s more", got, linger)
		}
	}
}

// TestMetricsServiceKeepsStoppingPods: the linger above helps only if
// Prometheus still finds a pod after SIGTERM. Through the Service's
// Endpoints (prometheus-operator's default), a terminating or not-ready
// pod is dropped unless the Service publishes not-ready addresses; the
// metrics Service is headless and carries no traffic, so it may.
func TestMetricsServiceKeepsStoppingPods(t *testing.T) {
	if v, _ := dig(k8sObject(t, "service.yaml", "Service"), "spec", "publishNotReadyAddresses").(string); v != "true" {
		t.Error("service.yaml does not set publishNotReadyAddresses: true; a stopping replica leaves the scrape targets at SIGTERM")
	}
}
