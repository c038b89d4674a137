// Package deploy_test checks the shipped alert rules and Grafana dashboard
// against a real Prometheus scraping a real revoker: every query must run and
// every revoker_* name it uses must be one the worker exports.
package deploy_test

import (
	"bufio"
	"bytes"
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
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/revoker/revoker/tracing"
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
	usedAbsent := map[string]bool{}
	check := func(what, expr string) []sample {
		t.Helper()
		for _, n := range nameRE.FindAllString(expr, -1) {
			if metricNames[n] {
				continue
			}
			if _, ok := notExportedByDemo[n]; ok {
				usedAbsent[n] = true
				continue
			}
			t.Errorf("%s uses %s, which revoker does not export", what, n)
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
	for _, title := range []string{"Replicas up", "Replicas ready", "API paused", "Urgent: oldest waiting", "Rate-limit wait p50 / p99", "Pending by priority",
		"Keys still listed", "Absence checks by result"} {
		if len(byTitle[title]) == 0 {
			t.Errorf("panel %q returned no data", title)
		}
	}
	// The demo's two account tokens are the budgets "media" and "news",
	// in every panel of the budgets.
	for _, title := range []string{"Calls by budget", "Holds by budget", "Rate-limit wait p95 by budget"} {
		wantLabels(t, byTitle[title], "budget", "media", "news")
	}
	// The list of names the demo cannot show stays true and short.
	for n, why := range notExportedByDemo {
		if metricNames[n] {
			t.Errorf("the demo exports %s now (listed because %s): remove it from notExportedByDemo so that it is checked", n, why)
		} else if !usedAbsent[n] {
			t.Errorf("no rule or panel uses %s: remove it from notExportedByDemo", n)
		}
	}
}

// notExportedByDemo are the names that rules and panels use and that
// `revoker demo` cannot export, with the reason. Their queries still run in
// Prometheus (so they parse and evaluate); the names themselves are checked
// against the code that registers them by TestMetricNamesRegistered.
var notExportedByDemo = map[string]string{
	"revoker_ingress_requests_total":      "the demo runs no HTTP ingress (REVOKER_INGRESS_ADDR)",
	"revoker_ingress_wait_seconds_bucket": "the demo runs no HTTP ingress (REVOKER_INGRESS_ADDR)",
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

// The Kubernetes base: what each manifest must say about secrets, the
// network, the pod's identity and memory.

const k8sDir = "kubernetes"

// k8sObject returns the one object of kind in file.
func k8sObject(t *testing.T, file, kind string) map[string]any {
	t.Helper()
	var found map[string]any
	for _, d := range readManifests(t, filepath.Join(k8sDir, file)) {
		if d["kind"] == kind {
			if found != nil {
				t.Fatalf("%s holds two %s", file, kind)
			}
			found = d
		}
	}
	if found == nil {
		t.Fatalf("%s holds no %s", file, kind)
	}
	return found
}

// dig follows keys through nested mappings; a missing key is nil.
func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// maps is v as a list of mappings (nil when v is not a list).
func maps(v any) []map[string]any {
	list, _ := v.([]any)
	var out []map[string]any
	for _, e := range list {
		if m, ok := e.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}

// revokerPod returns the Deployment's pod spec and its revoker container.
func revokerPod(t *testing.T) (pod, container map[string]any) {
	t.Helper()
	d := k8sObject(t, "deployment.yaml", "Deployment")
	pod, _ = dig(d, "spec", "template", "spec").(map[string]any)
	for _, c := range maps(dig(pod, "containers")) {
		if c["name"] == "revoker" {
			return pod, c
		}
	}
	t.Fatal("deployment.yaml has no container named revoker")
	return nil, nil
}

// envOf is the container's env entries by name.
func envOf(container map[string]any) map[string]map[string]any {
	out := map[string]map[string]any{}
	for _, e := range maps(container["env"]) {
		name, _ := e["name"].(string)
		out[name] = e
	}
	return out
}

// readEnvFile is config.env as variable -> value.
func readEnvFile(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(k8sDir, "config.env"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for n, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("config.env:%d: not VAR=value", n+1)
		}
		out[k] = v
	}
	return out
}

// secretName reports whether a variable's name says it holds a secret (a
// path to one, *_FILE or a creds or TLS file, is not itself secret).
var secretName = regexp.MustCompile(`TOKEN$|PASSWORD|SECRET|API_KEY$`)

// urlWithUser matches a URL carrying a user or password.
var urlWithUser = regexp.MustCompile(`[a-z]+://[^/\s,]*@`)

// TestKubernetesWorkerReadsItsOwnInbox: the Deployment's worker uses the
// inbox prefix whose replies deploy/nats-auth lets the worker user read;
// with any other (the default _INBOX) its first request is refused.
func TestKubernetesWorkerReadsItsOwnInbox(t *testing.T) {
	prefix := readEnvFile(t)["REVOKER_NATS_INBOX_PREFIX"]
	conf, err := os.ReadFile(filepath.Join("nats-auth", "nats-server.conf"))
	if err != nil {
		t.Fatal(err)
	}
	worker := regexp.MustCompile(`(?s)WORKER_PERMISSIONS = \{.*?subscribe = \[(.*?)\]`).FindSubmatch(conf)
	if worker == nil {
		t.Fatal("nats-server.conf: no subscribe list in WORKER_PERMISSIONS")
	}
	if prefix == "" || !bytes.Contains(worker[1], []byte(`"`+prefix+`.>"`)) {
		t.Errorf("config.env: REVOKER_NATS_INBOX_PREFIX=%q, but the worker user of nats-auth may read replies only on %s", prefix, worker[1])
	}
}

// TestKubernetesSecretsStayInSecrets: nothing secret is in config.env (a
// ConfigMap) or written into the Deployment; the NATS URL (which may hold
// a password) comes from a Secret, and the creds file, the TLS files, the
// API token and the ingress's callers are files of Secret volumes.
func TestKubernetesSecretsStayInSecrets(t *testing.T) {
	for k, v := range readEnvFile(t) {
		switch {
		case k == "REVOKER_NATS_URL":
			t.Errorf("config.env sets REVOKER_NATS_URL: it may hold a password, so it belongs in a Secret")
		case secretName.MatchString(k), strings.HasPrefix(k, "REVOKER_NATS_CREDS"), strings.HasPrefix(k, "REVOKER_NATS_TLS_"),
			strings.HasPrefix(k, "REVOKER_INGRESS_TLS_"), k == "REVOKER_INGRESS_CALLERS_FILE", k == "REVOKER_CREDENTIALS_FILE":
			t.Errorf("config.env sets %s: secrets and their files come from Secrets", k)
		case urlWithUser.MatchString(v):
			t.Errorf("config.env: %s holds a URL with a user or password", k)
		}
	}
	kust := readManifests(t, filepath.Join(k8sDir, "kustomization.yaml"))[0]
	for _, g := range maps(kust["configMapGenerator"]) {
		if g["literals"] != nil || g["files"] != nil {
			t.Errorf("configMapGenerator %v: only config.env, checked here, may feed the ConfigMap", g["name"])
		}
	}
	if kust["secretGenerator"] != nil {
		t.Error("kustomization.yaml generates a Secret: its content would be committed")
	}

	pod, c := revokerPod(t)
	env := envOf(c)
	for name, e := range env {
		v, _ := e["value"].(string)
		if secretName.MatchString(name) && e["value"] != nil {
			t.Errorf("env %s is written in deployment.yaml", name)
		}
		if urlWithUser.MatchString(v) {
			t.Errorf("env %s holds a URL with a user or password", name)
		}
	}
	if ref := dig(env["REVOKER_NATS_URL"], "valueFrom", "secretKeyRef"); ref == nil || dig(ref, "name") == nil || dig(ref, "key") == nil {
		t.Errorf("REVOKER_NATS_URL does not come from a Secret (secretKeyRef): %v", env["REVOKER_NATS_URL"])
	}

	// Volumes by name, and where each is mounted.
	secretVolumes := map[string]map[string]any{}
	for _, v := range maps(pod["volumes"]) {
		if s, ok := v["secret"].(map[string]any); ok {
			secretVolumes[v["name"].(string)] = s
		}
	}
	for _, name := range []string{"CLOUDFLARE_API_TOKEN_FILE", "REVOKER_NATS_CREDS", "REVOKER_NATS_TLS_CA", "REVOKER_NATS_TLS_CERT", "REVOKER_NATS_TLS_KEY",
		"REVOKER_INGRESS_TLS_CERT", "REVOKER_INGRESS_TLS_KEY", "REVOKER_INGRESS_CALLERS_FILE"} {
		e, ok := env[name]
		if !ok {
			t.Errorf("%s is not set", name)
			continue
		}
		path, _ := e["value"].(string)
		var secret map[string]any
		for _, m := range maps(c["volumeMounts"]) {
			mp, _ := m["mountPath"].(string)
			if mp != "" && strings.HasPrefix(path, strings.TrimSuffix(mp, "/")+"/") {
				if m["readOnly"] != "true" || m["subPath"] != nil {
					t.Errorf("%s: the mount at %s must be read-only and whole (a subPath never sees a rotation)", name, mp)
				}
				secret = secretVolumes[m["name"].(string)]
				rel := strings.TrimPrefix(path, strings.TrimSuffix(mp, "/")+"/")
				if secret != nil && secret["items"] != nil {
					listed := false
					for _, it := range maps(secret["items"]) {
						listed = listed || it["path"] == rel
					}
					if !listed {
						t.Errorf("%s: %s is not an item of its Secret volume", name, rel)
					}
				}
			}
		}
		if secret == nil {
			t.Errorf("%s=%s is not a file of a Secret volume", name, path)
		} else if mode, _ := secret["defaultMode"].(string); mode != "0440" && mode != "0400" {
			t.Errorf("%s: its Secret volume's defaultMode %q lets more than the pod's user and group read it", name, mode)
		}
	}
}

// TestKubernetesNetworkPolicy: the pods may reach only NATS, the API on
// 443 and DNS; only the monitoring namespace may reach them on the metrics
// port, and only the incident-automation namespace on the ingress port.
func TestKubernetesNetworkPolicy(t *testing.T) {
	np := k8sObject(t, "networkpolicy.yaml", "NetworkPolicy")
	d := k8sObject(t, "deployment.yaml", "Deployment")
	podLabels, _ := dig(d, "spec", "template", "metadata", "labels").(map[string]any)
	sel, _ := dig(np, "spec", "podSelector", "matchLabels").(map[string]any)
	if len(sel) == 0 {
		t.Fatal("the policy selects no pods by label")
	}
	for k, v := range sel {
		if podLabels[k] != v {
			t.Errorf("the policy selects %s=%v, which revoker's pods do not carry", k, v)
		}
	}
	types := fmt.Sprint(dig(np, "spec", "policyTypes"))
	if !strings.Contains(types, "Ingress") || !strings.Contains(types, "Egress") {
		t.Errorf("policyTypes %s: both directions must be named, or the one left out is open", types)
	}

	portSet := func(rule map[string]any) string {
		var ps []string
		for _, p := range maps(rule["ports"]) {
			ps = append(ps, fmt.Sprintf("%v/%v", p["port"], p["protocol"]))
		}
		sort.Strings(ps)
		return strings.Join(ps, ",")
	}

	// Each port open to one namespace only: the metrics to Prometheus's,
	// the HTTP ingress (REVOKER_INGRESS_ADDR) to incident automation's.
	fromNamespace := map[string]string{
		"8080/TCP":                              "monitoring",
		ingressPort(t, readEnvFile(t)) + "/TCP": "incident-automation",
	}
	admitted := map[string]bool{}
	for _, r := range maps(dig(np, "spec", "ingress")) {
		ports := portSet(r)
		ns, known := fromNamespace[ports]
		if !known {
			t.Errorf("ingress to ports %q, want the metrics port 8080/TCP or the ingress port, one rule each", ports)
			continue
		}
		from := maps(r["from"])
		if len(from) == 0 {
			t.Errorf("ingress to %s from anywhere", ports)
		}
		for _, f := range from {
			if len(f) != 1 || dig(f, "namespaceSelector", "matchLabels", "kubernetes.io/metadata.name") != ns {
				t.Errorf("ingress to %s from %v, want the %s namespace only", ports, f, ns)
			}
		}
		admitted[ports] = true
	}
	for ports, ns := range fromNamespace {
		if !admitted[ports] {
			t.Errorf("no ingress rule admits %s from the %s namespace", ports, ns)
		}
	}

	seen := map[string]bool{}
	for _, r := range maps(dig(np, "spec", "egress")) {
		to := maps(r["to"])
		if len(to) == 0 {
			t.Errorf("an egress rule to anywhere (ports %q)", portSet(r))
			continue
		}
		switch ports := portSet(r); ports {
		case "4222/TCP":
			for _, p := range to {
				if dig(p, "podSelector", "matchLabels", "app.kubernetes.io/name") != "nats" || p["ipBlock"] != nil {
					t.Errorf("NATS's port open to %v, want the NATS pods", p)
				}
			}
			seen["nats"] = true
		case "443/TCP":
			for _, p := range to {
				b, _ := p["ipBlock"].(map[string]any)
				if b == nil {
					t.Errorf("443 open to %v, want public addresses", p)
					continue
				}
				if cidr := b["cidr"]; cidr == "0.0.0.0/0" && !strings.Contains(fmt.Sprint(b["except"]), "169.254.0.0/16") {
					t.Errorf("443 open to the cloud metadata address: %v", b)
				}
			}
			seen["api"] = true
		case "53/TCP,53/UDP":
			for _, p := range to {
				if dig(p, "podSelector", "matchLabels", "k8s-app") != "kube-dns" || dig(p, "namespaceSelector") == nil {
					t.Errorf("DNS open to %v, want kube-dns", p)
				}
			}
			seen["dns"] = true
		default:
			t.Errorf("an egress rule to ports %q: only NATS (4222), the API (443) and DNS (53) are needed", ports)
		}
	}
	for _, want := range []string{"nats", "api", "dns"} {
		if !seen[want] {
			t.Errorf("no egress rule for %s", want)
		}
	}
}

// TestKubernetesServiceAccount: the pods run as a service account of
// their own that has no token.
func TestKubernetesServiceAccount(t *testing.T) {
	sa := k8sObject(t, "serviceaccount.yaml", "ServiceAccount")
	name, _ := dig(sa, "metadata", "name").(string)
	if name == "" || name == "default" {
		t.Fatalf("service account %q, want one of revoker's own", name)
	}
	if sa["automountServiceAccountToken"] != "false" {
		t.Error("the service account mounts its token")
	}
	pod, _ := revokerPod(t)
	if pod["serviceAccountName"] != name {
		t.Errorf("the pods run as %v, not as %s", pod["serviceAccountName"], name)
	}
	if pod["automountServiceAccountToken"] != "false" {
		t.Error("the pods mount a service account token")
	}
}

// TestKubernetesMemory: the Go runtime is told the memory it may use,
// below what the container's limit leaves after /tmp (in memory too), and
// collects at a sane pace.
func TestKubernetesMemory(t *testing.T) {
	pod, c := revokerPod(t)
	env := envOf(c)
	limit := quantity(t, dig(c, "resources", "limits", "memory"))
	var tmp int64
	for _, v := range maps(pod["volumes"]) {
		if dig(v, "emptyDir", "medium") == "Memory" {
			tmp += quantity(t, dig(v, "emptyDir", "sizeLimit"))
		}
	}
	avail := limit - tmp
	goLimit := quantity(t, dig(env["GOMEMLIMIT"], "value"))
	if goLimit > avail*9/10 || goLimit < avail*7/10 {
		t.Errorf("GOMEMLIMIT %d MiB, want 70-90%% of the %d MiB the limit leaves after /tmp", goLimit>>20, avail>>20)
	}
	gogc, err := strconv.Atoi(fmt.Sprint(dig(env["GOGC"], "value")))
	if err != nil || gogc < 50 || gogc > 200 {
		t.Errorf("GOGC %v, want set, 50-200: the binary's own default (400) grows the heap to 5x the live data", dig(env["GOGC"], "value"))
	}
}

// quantity parses a memory size as Kubernetes (Mi, Gi) or Go's GOMEMLIMIT
// (MiB, GiB) writes it.
func quantity(t *testing.T, v any) int64 {
	t.Helper()
	s, _ := v.(string)
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"KiB", 10}, {"MiB", 20}, {"GiB", 30}, {"Ki", 10}, {"Mi", 20}, {"Gi", 30}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			i, err := strconv.ParseInt(n, 10, 64)
			if err != nil {
				break
			}
			return i << u.shift
		}
	}
	t.Fatalf("memory size %q: want a whole number of KiB, MiB or GiB", s)
	return 0
}

// TestKustomizationListsEveryManifest: every manifest of the directory is
// applied, and every resource named exists.
func TestKustomizationListsEveryManifest(t *testing.T) {
	kust := readManifests(t, filepath.Join(k8sDir, "kustomization.yaml"))[0]
	listed := map[string]bool{}
	for _, r := range kust["resources"].([]any) {
		listed[r.(string)] = true
		if _, err := os.Stat(filepath.Join(k8sDir, r.(string))); err != nil {
			t.Errorf("resource %s: %v", r, err)
		}
	}
	files, err := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		base := filepath.Base(f)
		if base != "kustomization.yaml" && !listed[base] {
			t.Errorf("%s is not in kustomization.yaml's resources", base)
		}
		readManifests(t, f) // and every one reads
	}
}

// The local stack (deploy/local): what its files must say for a trace to
// be reachable from the dashboard.

const localDir = "local"

// TestLocalStackTraces: revoker exports its spans to Jaeger with settings
// revoker accepts, Prometheus keeps exemplars, Grafana's Prometheus data
// source links an exemplar's trace id (the label revoker writes) to the
// Jaeger data source, and the time-to-revoke panel asks for exemplars.
func TestLocalStackTraces(t *testing.T) {
	compose := readManifests(t, filepath.Join(localDir, "docker-compose.yml"))[0]
	service := func(name string) map[string]any {
		t.Helper()
		s, _ := dig(compose, "services", name).(map[string]any)
		if s == nil {
			t.Fatalf("docker-compose.yml has no service %s", name)
		}
		return s
	}

	// Jaeger takes OTLP on its standard ports, inside the compose network
	// only, and shows its UI on the loopback address.
	jaeger := service("jaeger")
	if img, _ := jaeger["image"].(string); !strings.HasPrefix(img, "jaegertracing/all-in-one:") {
		t.Errorf("jaeger image %q, want jaegertracing/all-in-one:<version>", img)
	}
	if v := dig(jaeger, "environment", "COLLECTOR_OTLP_ENABLED"); v != "true" {
		t.Errorf("jaeger COLLECTOR_OTLP_ENABLED=%v, want true", v)
	}
	exposed := map[string]bool{}
	expose, _ := jaeger["expose"].([]any)
	for _, p := range expose {
		exposed[fmt.Sprint(p)] = true
	}
	if !exposed["4318"] {
		t.Errorf("jaeger does not expose 4318 (OTLP over HTTP): %v", jaeger["expose"])
	}
	published := map[string]bool{}
	ports, _ := jaeger["ports"].([]any)
	for _, p := range ports {
		ps := fmt.Sprint(p)
		if !strings.HasPrefix(ps, "127.0.0.1:") {
			t.Errorf("jaeger publishes %s beyond 127.0.0.1", ps)
		}
		published[ps] = true
	}
	if !published["127.0.0.1:16686:16686"] {
		t.Errorf("jaeger's UI (16686) is not published on 127.0.0.1: %v", jaeger["ports"])
	}

	// revoker sends its spans there, over the protocol of that port.
	env, _ := service("revoker")["environment"].(map[string]any)
	endpoint, _ := env["OTEL_EXPORTER_OTLP_ENDPOINT"].(string)
	if u, err := url.Parse(endpoint); err != nil || u.Scheme != "http" || u.Host != "jaeger:4318" {
		t.Errorf("revoker OTEL_EXPORTER_OTLP_ENDPOINT=%q, want http://jaeger:4318", endpoint)
	}
	if p, ok := env["OTEL_EXPORTER_OTLP_PROTOCOL"]; ok && p != tracing.ProtocolHTTP {
		t.Errorf("revoker OTEL_EXPORTER_OTLP_PROTOCOL=%v: port 4318 speaks %s", p, tracing.ProtocolHTTP)
	}
	if env["OTEL_SERVICE_NAME"] != "revoker" {
		t.Errorf("revoker OTEL_SERVICE_NAME=%v, want revoker", env["OTEL_SERVICE_NAME"])
	}
	// revoker accepts the OTEL_* settings as written (a bad one would stop
	// `revoker serve` with exit status 2).
	for k, v := range env {
		if strings.HasPrefix(k, "OTEL_") {
			t.Setenv(k, fmt.Sprint(v))
		}
	}
	shutdown, err := tracing.Setup(t.Context(), "revoker", "test")
	if err != nil {
		t.Errorf("revoker refuses the compose file's OTEL_* settings: %v", err)
	} else if !tracing.Enabled() {
		t.Error("the compose file's OTEL_* settings leave tracing off")
	}
	if err := shutdown(t.Context()); err != nil {
		t.Logf("tracing shutdown: %v", err) // nothing was exported
	}
	live := readManifests(t, filepath.Join(localDir, "docker-compose.live.yml"))[0]
	if liveEnv, _ := dig(live, "services", "revoker", "environment").(map[string]any); liveEnv != nil {
		for k := range liveEnv {
			if strings.HasPrefix(k, "OTEL_") {
				t.Errorf("docker-compose.live.yml overrides %s: `revoker serve` must export to the stack's Jaeger", k)
			}
		}
	}

	// Prometheus keeps the exemplars it scrapes.
	var exemplars bool
	promArgs, _ := service("prometheus")["command"].([]any)
	for _, a := range promArgs {
		if f, ok := strings.CutPrefix(fmt.Sprint(a), "--enable-feature="); ok {
			for _, feat := range strings.Split(f, ",") {
				exemplars = exemplars || feat == "exemplar-storage"
			}
		}
	}
	if !exemplars {
		t.Error("prometheus runs without --enable-feature=exemplar-storage: exemplars are dropped")
	}

	// Grafana: the exemplar label revoker writes leads to the Jaeger data
	// source, which reads the jaeger service's query port.
	files, err := filepath.Glob(filepath.Join(localDir, "grafana/provisioning/datasources/*.yml"))
	if err != nil {
		t.Fatal(err)
	}
	byUID := map[string]map[string]any{}
	var prom map[string]any
	for _, f := range files {
		for _, d := range readManifests(t, f) {
			for _, ds := range maps(d["datasources"]) {
				uid, _ := ds["uid"].(string)
				byUID[uid] = ds
				if ds["type"] == "prometheus" {
					prom = ds
				}
			}
		}
	}
	if prom == nil {
		t.Fatal("no Prometheus data source is provisioned")
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{1}, TraceFlags: trace.FlagsSampled})
	var label string
	for k := range tracing.ExemplarLabels(trace.ContextWithSpanContext(t.Context(), sc)) {
		label = k
	}
	dests := maps(dig(prom, "jsonData", "exemplarTraceIdDestinations"))
	linked := false
	for _, d := range dests {
		if d["name"] != label {
			continue
		}
		uid, _ := d["datasourceUid"].(string)
		target := byUID[uid]
		if target == nil || target["type"] != "jaeger" {
			t.Errorf("exemplar label %s leads to data source %q, which is not a provisioned Jaeger data source", label, uid)
			continue
		}
		if target["url"] != "http://jaeger:16686" {
			t.Errorf("the Jaeger data source reads %v, want http://jaeger:16686", target["url"])
		}
		linked = true
	}
	if !linked {
		t.Errorf("the Prometheus data source links no exemplar label %q to a trace (exemplarTraceIdDestinations: %v)", label, dests)
	}

	// The panel of revoker_revocation_latency_seconds asks for exemplars.
	b, err := os.ReadFile("grafana/revoker-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	found := 0
	var walk func([]json.RawMessage)
	walk = func(ps []json.RawMessage) {
		for _, raw := range ps {
			var p struct {
				Title   string `json:"title"`
				Targets []struct {
					Expr     string `json:"expr"`
					Exemplar bool   `json:"exemplar"`
				} `json:"targets"`
				Panels []json.RawMessage `json:"panels"`
			}
			if err := json.Unmarshal(raw, &p); err != nil {
				t.Fatal(err)
			}
			for _, tg := range p.Targets {
				if strings.Contains(tg.Expr, "revoker_revocation_latency_seconds") {
					found++
					if !tg.Exemplar {
						t.Errorf("panel %q: a query of revoker_revocation_latency_seconds without \"exemplar\": true", p.Title)
					}
				}
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	if found == 0 {
		t.Error("no dashboard query reads revoker_revocation_latency_seconds")
	}
}
