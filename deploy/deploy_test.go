// Package deploy_test checks the shipped alert rules and Grafana dashboard
// against a real Prometheus scraping a real revoker: every query must run and
// every revoker_* name it uses must be one the worker exports.
package deploy_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestAlertsAndDashboardAgainstPrometheus runs `revoker demo --keep` (every
// outcome happens: revoked, not_found, dead_lettered, requeued), has
// Prometheus scrape it with alerts.yml loaded, then evaluates every alert
// and every dashboard query through Prometheus' HTTP API.
func TestAlertsAndDashboardAgainstPrometheus(t *testing.T) {
	if testing.Short() {
		t.Skip("starts revoker and Prometheus")
	}
	promBin := prometheusBin(t)
	dir := t.TempDir()
	bin := revokerBin(t)
	target := startDemo(t, bin, dir)
	metricNames := exportedNames(t, "http://"+target+"/metrics")
	api := startPrometheus(t, promBin, dir, target)

	// Three scrapes, so that rate() and increase() have samples to work on,
	// and every rule evaluated at least once.
	waitFor(t, 30*time.Second, "three scrapes of revoker", func() (bool, error) {
		r, err := query(api, `count_over_time(up{job="revoker"}[1m]) >= 3 and up{job="revoker"} == 1`)
		return err == nil && len(r) == 1, err
	})
	var alertQueries map[string]string
	waitFor(t, 30*time.Second, "every rule evaluated", func() (bool, error) {
		var err error
		alertQueries, err = evaluatedRules(api)
		return err == nil && alertQueries != nil, err
	})
	if len(alertQueries) == 0 {
		t.Fatal("Prometheus loaded no alerting rule from alerts.yml")
	}

	nameRE := regexp.MustCompile(`\brevoker_[a-z_]+`)
	check := func(what, expr string) []sample {
		t.Helper()
		for _, n := range nameRE.FindAllString(expr, -1) {
			if !metricNames[n] {
				t.Errorf("%s uses %s, which revoker does not export", what, n)
			}
		}
		r, err := query(api, expr)
		if err != nil {
			t.Errorf("%s: %v\n%s", what, err, expr)
		}
		return r
	}
	for name, expr := range alertQueries {
		check("alert "+name, expr)
	}

	panels := dashboardQueries(t, "grafana/revoker-dashboard.json")
	if len(panels) == 0 {
		t.Fatal("no query found in the dashboard")
	}
	byTitle := map[string][]sample{}
	for _, p := range panels {
		byTitle[p.title] = append(byTitle[p.title], check("panel "+p.title, p.expr)...)
	}
	// The demo made every outcome and dead-lettered for three reasons.
	wantLabels(t, byTitle["Events processed by outcome"], "outcome", "revoked", "not_found", "dead_lettered", "requeued")
	wantLabels(t, byTitle["Dead letters by reason (per 5m)"], "reason", "invalid_event", "api_rejected", "retries_exhausted")
	wantLabels(t, byTitle["Time to revoke p50 / p99 by priority"], "priority", "0", "1")
	for _, title := range []string{"Replicas up", "Replicas ready", "API paused", "Urgent: oldest waiting", "Rate-limit wait p50 / p99", "Pending by priority"} {
		if len(byTitle[title]) == 0 {
			t.Errorf("panel %q returned no data", title)
		}
	}
}

// prometheusBin is the path of prometheus; the test is skipped without it,
// except in CI, where that is a failure.
func prometheusBin(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("prometheus is not on PATH; CI must install it (.ci/run does)")
		}
		t.Skip("prometheus is not on PATH")
	}
	return bin
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
	buildDir  string
)

// TestMain removes the binary the tests share.
func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// revokerBin builds cmd/revoker once for every test of the package.
func revokerBin(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "revoker-deploy-test-"); buildErr != nil {
			return
		}
		builtBin = filepath.Join(buildDir, "revoker")
		if out, err := exec.Command("go", "build", "-o", builtBin, "../cmd/revoker").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build revoker: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

// startPrometheus runs Prometheus with alerts.yml loaded, scraping target
// as job "revoker" and evaluating the rules every second, and returns the
// URL of its API.
func startPrometheus(t *testing.T, promBin, dir, target string) string {
	t.Helper()
	rules, err := filepath.Abs("prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	promAddr := freeAddr(t)
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: revoker
    static_configs:
      - targets: [%q]
`, rules, target)), 0o600); err != nil {
		t.Fatal(err)
	}
	startProcess(t, promBin, dir, nil,
		"--config.file="+cfg,
		"--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		"--web.listen-address="+promAddr)
	return "http://" + promAddr
}

// startDemo runs `revoker demo --keep` and returns the address of its /metrics
// once the demo has accounted for every event. The process is interrupted
// (as with Ctrl-C) at the end of the test.
func startDemo(t *testing.T, bin, dir string) string {
	t.Helper()
	// The demo keeps its log in the temporary directory.
	env := append(os.Environ(), "TMPDIR="+dir)
	cmd := exec.Command(bin, "demo", "--keep", "--timeout", "40s")
	cmd.Env = env
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start demo: %v", err)
	}
	t.Cleanup(func() { stop(t, cmd) })

	addr := make(chan string, 1)
	var table strings.Builder
	go func() {
		sc := bufio.NewScanner(out)
		re := regexp.MustCompile(`^metrics: http://(\S+)/metrics`)
		for sc.Scan() {
			table.WriteString(sc.Text() + "\n")
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
		_, _ = io.Copy(io.Discard, out)
		close(addr)
	}()
	select {
	case a, ok := <-addr:
		if !ok {
			t.Fatalf("demo ended without serving /metrics\nstderr: %s", stderr.String())
		}
		return a
	case <-time.After(50 * time.Second):
		t.Fatalf("demo printed no metrics address in 50s\nstderr: %s", stderr.String())
	}
	return ""
}

// startProcess starts a long-running command, stopped at the end of the test.
func startProcess(t *testing.T, bin, dir string, env []string, args ...string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = env
	}
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	t.Cleanup(func() {
		stop(t, cmd)
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(bin), logs.String())
		}
	})
}

// stop interrupts cmd and waits for it, killing it if it lingers.
func stop(t *testing.T, cmd *exec.Cmd) {
	_ = cmd.Process.Signal(syscall.SIGINT)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Logf("%s did not stop on SIGINT; killing it", cmd.Path)
		_ = cmd.Process.Kill()
		<-done
	}
}

// freeAddr returns a loopback address nothing listens on at the moment.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(limit)
	var last error
	for {
		ok, err := cond()
		if ok {
			return
		}
		if err != nil {
			last = err
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: gave up after %s (last error: %v)", what, limit, last)
		}
		time.Sleep(200 * time.Millisecond) // polling interval, not synchronisation
	}
}

// exportedNames is the set of sample names in a /metrics page.
func exportedNames(t *testing.T, u string) map[string]bool {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatalf("get %s: %v", u, err)
	}
	defer resp.Body.Close()
	names := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names[line[:i]] = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(names) == 0 {
		t.Fatalf("%s exported nothing", u)
	}
	return names
}

type sample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"` // [time, "value"]
}

// query runs an instant query and returns its vector (empty for a scalar).
func query(api, expr string) ([]sample, error) {
	resp, err := http.Get(api + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("decode answer (HTTP %d): %w", resp.StatusCode, err)
	}
	if body.Status != "success" {
		return nil, fmt.Errorf("query failed: %s", body.Error)
	}
	if body.Data.ResultType != "vector" {
		return nil, nil
	}
	var v []sample
	if err := json.Unmarshal(body.Data.Result, &v); err != nil {
		return nil, fmt.Errorf("decode vector: %w", err)
	}
	return v, nil
}

// evaluatedRules returns alert name -> query of the loaded alerting rules
// once every rule has been evaluated (nil before), or an error if any rule's
// evaluation failed.
func evaluatedRules(api string) (map[string]string, error) {
	resp, err := http.Get(api + "/api/v1/rules")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name      string `json:"name"`
					Query     string `json:"query"`
					Type      string `json:"type"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("decode rules: %w", err)
	}
	out := map[string]string{}
	for _, g := range body.Data.Groups {
		for _, r := range g.Rules {
			switch {
			case r.Health == "err":
				return nil, fmt.Errorf("rule %s: %s", r.Name, r.LastError)
			case r.Health != "ok":
				return nil, nil // not evaluated yet
			case r.Type == "alerting":
				out[r.Name] = r.Query
			}
		}
	}
	if len(body.Data.Groups) == 0 {
		return nil, nil
	}
	return out, nil
}

type panelQuery struct{ title, expr string }

// dashboardQueries returns every target's query of the dashboard, with
// Grafana's variables replaced as Grafana would for one job over 5 minutes.
func dashboardQueries(t *testing.T, path string) []panelQuery {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
		Panels []json.RawMessage `json:"panels"`
	}
	var d struct {
		Panels []json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	vars := strings.NewReplacer(
		"$__rate_interval", "1m", "$__range", "5m", "$__interval", "15s",
		"$job", "revoker", "$instance", ".*")
	var out []panelQuery
	var walk func([]json.RawMessage)
	walk = func(ps []json.RawMessage) {
		for _, raw := range ps {
			var p panel
			if err := json.Unmarshal(raw, &p); err != nil {
				t.Fatalf("dashboard panel: %v", err)
			}
			for _, tg := range p.Targets {
				if tg.Expr != "" {
					out = append(out, panelQuery{p.Title, vars.Replace(tg.Expr)})
				}
			}
			walk(p.Panels) // a collapsed row holds its panels
		}
	}
	walk(d.Panels)
	return out
}

// wantLabels checks that a panel's result has a series for each value of label.
func wantLabels(t *testing.T, got []sample, label string, values ...string) {
	t.Helper()
	seen := map[string]bool{}
	for _, s := range got {
		seen[s.Metric[label]] = true
	}
	for _, v := range values {
		if !seen[v] {
			t.Errorf("no series with %s=%q among %v", label, v, got)
		}
	}
}
