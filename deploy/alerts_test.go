package deploy_test

import (
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
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

// TestReplicasReadyPanelWithPromtool: the "Replicas ready" panel counts a
// replica as /readyz does (SPEC §6, §8): one refused credential of a
// credentials file (credential:<name> 0) leaves it ready while another
// works, every one refused does not, and nor does any other condition at 0. The panel's own expression is
// evaluated by promtool over made-up series.
func TestReplicasReadyPanelWithPromtool(t *testing.T) {
	bin := promtoolBin(t)
	var expr string
	for _, p := range dashboardQueries(t, "grafana/revoker-dashboard.json") {
		if p.title == "Replicas ready" {
			expr = p.expr
		}
	}
	if expr == "" {
		t.Fatal("no Replicas ready panel")
	}
	dir := t.TempDir()
	rules := "groups:\n  - name: panel\n    rules:\n      - record: panel:replicas_ready\n        expr: " + strconv.Quote(expr) + "\n"
	series := func(instance, condition, v string) string {
		return "      - series: 'revoker_ready{job=\"revoker\",instance=\"" + instance + "\",condition=\"" + condition + "\"}'\n        values: '" + v + " " + v + "'\n"
	}
	test := "rule_files: [rules.yml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n" +
		// a: one credential refused, another working: ready.
		series("a", "nats", "1") + series("a", "consumers", "1") + series("a", "credential", "1") +
		series("a", "credential:media", "0") + series("a", "credential:news", "1") +
		// b: all well.
		series("b", "nats", "1") + series("b", "consumers", "1") + series("b", "credential", "1") +
		// c: NATS lost: not ready.
		series("c", "nats", "0") + series("c", "consumers", "1") + series("c", "credential", "1") +
		// d: every credential of its file refused: not ready.
		series("d", "nats", "1") + series("d", "consumers", "1") + series("d", "credential", "1") +
		series("d", "credential:media", "0") + series("d", "credential:news", "0") +
		"    promql_expr_test:\n      - expr: panel:replicas_ready\n        eval_time: 1m\n        exp_samples:\n" +
		"          - labels: 'panel:replicas_ready'\n            value: 2\n"
	for name, body := range map[string]string{"rules.yml": rules, "test.yml": test} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin, "test", "rules", "test.yml")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool test rules: %v\n%s", err, out)
	}
}
