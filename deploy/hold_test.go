package deploy_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
)

// TestUrgentWaitingFiresDuring429Block holds every call behind a 5-minute
// 429 block while urgent events wait, with the shipped alerts.yml loaded in
// a real Prometheus: RevokerUrgentWaiting must fire within the two minutes
// the rules promise, not before the 45 s threshold, and the worker must show
// the pause meanwhile. Time is real: the alert fires about 45 s after the
// events are published, and the block outlasts the test.
func TestUrgentWaitingFiresDuring429Block(t *testing.T) {
	if testing.Short() {
		t.Skip("starts revoker and Prometheus, and waits the alert's 45 s threshold")
	}
	promBin := prometheusBin(t)
	bin := revokerBin(t)
	dir := t.TempDir()

	api := cloudflaretest.NewServer(cloudflaretest.WithResponder(
		func(cloudflaretest.Request) (int, http.Header, string, bool) {
			return http.StatusTooManyRequests, http.Header{"Retry-After": {"300"}},
				`{"success":false,"errors":[{"code":971,"message":"Please wait and consider throttling your request speed"}],"messages":[],"result":null}`,
				true
		}))
	t.Cleanup(api.Close)

	target := freeAddr(t)
	env := revokerEnv(map[string]string{
		"REVOKER_NATS_URL":         "nats://" + freeAddr(t),
		"REVOKER_HTTP_ADDR":        target,
		"CLOUDFLARE_BASE_URL":      api.URL,
		"CLOUDFLARE_API_TOKEN":     "hold-test-token",
		"REVOKER_SHUTDOWN_TIMEOUT": "5s",
	})
	startProcess(t, bin, dir, env, "serve", "--embedded-nats", filepath.Join(dir, "jetstream"))
	prom := startPrometheus(t, promBin, dir, target)
	waitFor(t, 30*time.Second, "revoker ready", func() (bool, error) {
		resp, err := http.Get("http://" + target + "/readyz")
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	waitFor(t, 30*time.Second, "a scrape of revoker and every rule evaluated", func() (bool, error) {
		r, err := query(prom, `up{job="revoker"} == 1`)
		if err != nil || len(r) != 1 {
			return false, err
		}
		rules, err := evaluatedRules(prom)
		return err == nil && rules["RevokerUrgentWaiting"] != "", err
	})

	events := filepath.Join(dir, "urgent.jsonl")
	var lines strings.Builder
	for i := 1; i <= 5; i++ {
		fmt.Fprintf(&lines, `{"account_id":"holdacct","key_id":"leak%d","reason":"leaked during a 429 block"}`+"\n", i)
	}
	if err := os.WriteFile(events, []byte(lines.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	published := time.Now() // no event is older than this
	pub := exec.Command(bin, "publish", "--urgent", "--from-file", events)
	pub.Env = env
	if out, err := pub.CombinedOutput(); err != nil {
		t.Fatalf("publish: %v\n%s", err, out)
	}

	waitFor(t, 30*time.Second, "the first call, answered 429", func() (bool, error) {
		return api.Count() > 0, nil
	})
	blockStart := api.Requests()[0].At

	var fired time.Time
	var value float64
	waitFor(t, time.Until(blockStart.Add(2*time.Minute)), "RevokerUrgentWaiting firing", func() (bool, error) {
		a, err := firingAlert(prom, "RevokerUrgentWaiting")
		if err != nil || a == nil {
			return false, err
		}
		fired = time.Now()
		value, err = strconv.ParseFloat(a.Value, 64)
		return true, err
	})
	t.Logf("RevokerUrgentWaiting fired %.1fs after the block started (%.1fs after publishing), value %.1fs",
		fired.Sub(blockStart).Seconds(), fired.Sub(published).Seconds(), value)

	// The gauge is an age since publishing: over 45 s means that much
	// real time went by, however slow the machine.
	if age := fired.Sub(published); age <= 45*time.Second || value <= 45 {
		t.Errorf("alert fired %v after publishing with value %v: the threshold is over 45s", age, value)
	}
	// Paused at every scrape since shortly after the block began, and still.
	window := int(fired.Sub(blockStart).Seconds()) - 5
	r, err := query(prom, fmt.Sprintf(`min_over_time(revoker_api_paused{job="revoker"}[%ds])`, window))
	if err != nil || len(r) != 1 || r[0].Value[1] != "1" {
		t.Errorf("revoker_api_paused over the last %ds before the alert: min %v (err %v), want 1", window, r, err)
	}
	if got := metricValue(t, "http://"+target+"/metrics", "revoker_api_paused"); got != 1 {
		t.Errorf("revoker_api_paused = %v while the block lasts, want 1", got)
	}
	// The block holds every call: no event is called twice meanwhile.
	reqs := api.Requests()
	seen := map[string]bool{}
	for _, r := range reqs {
		if seen[r.KeyID] {
			t.Errorf("key %s called again during the 5-minute block (%d calls in all)", r.KeyID, len(reqs))
		}
		seen[r.KeyID] = true
	}
}

// TestDemoServe runs `revoker demo --serve` as a user would: events keep
// being processed and /metrics shows it, until SIGINT, which ends it with
// exit status 0.
func TestDemoServe(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs revoker")
	}
	bin := revokerBin(t)
	target := freeAddr(t)
	cmd := exec.Command(bin, "demo", "--serve")
	cmd.Env = revokerEnv(map[string]string{
		"REVOKER_NATS_URL":  "nats://" + freeAddr(t),
		"REVOKER_HTTP_ADDR": target,
	})
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
		}
	})

	metrics := "http://" + target + "/metrics"
	var first float64
	waitFor(t, 30*time.Second, "events processed", func() (bool, error) {
		resp, err := http.Get(metrics)
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		first = metricValue(t, metrics, "revoker_events_processed_total")
		return first > 0, nil
	})
	waitFor(t, 30*time.Second, "revoker_events_processed_total rising", func() (bool, error) {
		return metricValue(t, metrics, "revoker_events_processed_total") > first, nil
	})

	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			t.Fatalf("demo --serve after SIGINT: %v (want exit status 0)", err)
		}
	case <-time.After(40 * time.Second):
		t.Fatal("demo --serve did not exit within 40s of SIGINT")
	}
	t.Logf("revoker_events_processed_total rose past %v; exited %v after SIGINT",
		first, time.Since(start).Round(time.Millisecond))
	if !strings.Contains(stdout.String(), "publishing a sample event every") {
		t.Errorf("stdout does not say what it does:\n%s", stdout.String())
	}
}

// revokerEnv is this process's environment without any revoker or
// Cloudflare setting, plus set.
func revokerEnv(set map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "REVOKER_") && !strings.HasPrefix(kv, "CLOUDFLARE_") {
			env = append(env, kv)
		}
	}
	for k, v := range set {
		env = append(env, k+"="+v)
	}
	return env
}

// metricValue is the sum of every series of name on a /metrics page.
func metricValue(t *testing.T, u, name string) float64 {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatalf("get %s: %v", u, err)
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		if strings.HasPrefix(rest, "{") {
			rest = rest[strings.LastIndexByte(rest, '}')+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			t.Fatalf("%s: %q: %v", u, line, err)
		}
		sum += v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return sum
}

type alert struct {
	Labels map[string]string `json:"labels"`
	State  string            `json:"state"`
	Value  string            `json:"value"`
}

// firingAlert returns the firing alert named name, or nil.
func firingAlert(api, name string) (*alert, error) {
	resp, err := http.Get(api + "/api/v1/alerts")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	var body struct {
		Data struct {
			Alerts []alert `json:"alerts"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &body); err != nil {
		return nil, fmt.Errorf("decode alerts (HTTP %d): %w", resp.StatusCode, err)
	}
	for i, a := range body.Data.Alerts {
		if a.Labels["alertname"] == name && a.State == "firing" {
			return &body.Data.Alerts[i], nil
		}
	}
	return nil, nil
}
