package deploy_test

import (
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/revoker/revoker/ingress"
)

// promtoolBin is the path of promtool; the test is skipped without it,
// except in CI, where that is a failure.
func promtoolBin(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool is not on PATH; CI must install it (.ci/run does)")
		}
		t.Skip("promtool is not on PATH")
	}
	return bin
}

// TestAlertRulesWithPromtool checks alerts.yml and runs its unit tests
// (alerts_test.yml) with promtool, as CI does.
func TestAlertRulesWithPromtool(t *testing.T) {
	bin := promtoolBin(t)
	for _, args := range [][]string{
		{"check", "rules", "prometheus/alerts.yml"},
		{"test", "rules", "prometheus/alerts_test.yml"},
	} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestEveryAlertIsTestedBothWays: alerts_test.yml shows every alert of
// alerts.yml firing at least once and quiet at least once, so that a rule
// that always fires, or never does, cannot pass its tests.
func TestEveryAlertIsTestedBothWays(t *testing.T) {
	rules, err := os.ReadFile("prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile("prometheus/alerts_test.yml")
	if err != nil {
		t.Fatal(err)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	// Each alert_rule_test entry names its alert, then its expectation:
	// "exp_alerts: []" for quiet, a list for firing. The file uses YAML
	// anchors and folded text, beyond the reader in yaml_test.go, so the
	// lines are read as they are written.
	var current string
	for _, line := range strings.Split(string(tests), "\n") {
		line = strings.TrimSpace(stripComment(line))
		if name, ok := strings.CutPrefix(line, "alertname: "); ok {
			current = strings.TrimSpace(name)
			continue
		}
		if exp, ok := strings.CutPrefix(line, "exp_alerts:"); ok && current != "" {
			if strings.TrimSpace(exp) == "[]" {
				quiet[current] = true
			} else {
				fires[current] = true
			}
			current = ""
		}
	}
	names := regexp.MustCompile(`(?m)^\s*- alert: (\w+)`).FindAllStringSubmatch(string(rules), -1)
	if len(names) == 0 {
		t.Fatal("no alert found in alerts.yml")
	}
	for _, n := range names {
		if !fires[n[1]] {
			t.Errorf("alerts_test.yml never shows %s firing", n[1])
		}
		if !quiet[n[1]] {
			t.Errorf("alerts_test.yml never shows %s quiet", n[1])
		}
	}
}

// TestMetricNamesRegistered: each name the demo cannot show
// (notExportedByDemo) is one that revoker exports, with the labels the
// rules and panels select on: the ingress's collectors, built as serve
// builds them and served as /metrics serves them.
func TestMetricNamesRegistered(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := ingress.NewMetrics(reg, []string{"soar"})
	if _, err := m.Requests.GetMetricWith(prometheus.Labels{"route": ingress.RoutePost, "code": "503", "caller": "soar"}); err != nil {
		t.Errorf("revoker_ingress_requests_total: %v; the rules and panels select route, code and caller (SPEC §8)", err)
	}
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	names := exportedNames(t, srv.URL)
	for n := range notExportedByDemo {
		if !names[n] {
			t.Errorf("%s is not exported by the ingress's collectors (exported: %v)", n, names)
		}
	}
}
