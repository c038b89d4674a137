package deploy_test

import (
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/revoker/revoker/credentials"
	"github.com/revoker/revoker/ingress"
)

// The HTTP ingress (SPEC §11) and several credentials (SPEC §6) in the
// Kubernetes base: the port, the Service, the Secrets and their examples.

// ingressPort is the port of REVOKER_INGRESS_ADDR in config.env.
func ingressPort(t *testing.T, env map[string]string) string {
	t.Helper()
	addr, ok := env["REVOKER_INGRESS_ADDR"]
	if !ok {
		t.Fatal("config.env does not set REVOKER_INGRESS_ADDR: the ingress is off")
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		t.Fatalf("REVOKER_INGRESS_ADDR=%q: %v", addr, err)
	}
	return port
}

// TestKubernetesIngress: the ingress listens on the container port named
// "ingress", which the Service revoker-ingress exposes and the probes leave
// alone; TLS is on (its pair mounted), and the metrics Service still
// exposes the metrics port only.
func TestKubernetesIngress(t *testing.T) {
	env := readEnvFile(t)
	port := ingressPort(t, env)
	_, c := revokerPod(t)

	var containerPort string
	for _, p := range maps(c["ports"]) {
		if p["name"] == "ingress" {
			containerPort = fmt.Sprint(p["containerPort"])
			if p["protocol"] != "TCP" {
				t.Errorf("the ingress port's protocol is %v, want TCP", p["protocol"])
			}
		}
	}
	if containerPort != port {
		t.Errorf("the container port named ingress is %q, want REVOKER_INGRESS_ADDR's %s", containerPort, port)
	}

	// TLS: the address is not loopback, so the pair must be set (config
	// refuses to start otherwise); TestKubernetesSecretsStayInSecrets
	// checks they are files of a Secret volume.
	e := envOf(c)
	for _, name := range []string{"REVOKER_INGRESS_TLS_CERT", "REVOKER_INGRESS_TLS_KEY", "REVOKER_INGRESS_CALLERS_FILE"} {
		if dig(e[name], "value") == nil {
			t.Errorf("%s is not set in deployment.yaml", name)
		}
	}

	// The probes are the worker's, on the metrics port, as before.
	for probe, want := range map[string]string{"readinessProbe": "/readyz", "livenessProbe": "/healthz"} {
		if p, port := dig(c, probe, "httpGet", "path"), dig(c, probe, "httpGet", "port"); p != want || port != "http" {
			t.Errorf("%s: %v on port %v, want %s on http", probe, p, port, want)
		}
	}

	podLabels, _ := dig(k8sObject(t, "deployment.yaml", "Deployment"), "spec", "template", "metadata", "labels").(map[string]any)
	svc := k8sObject(t, "service-ingress.yaml", "Service")
	if name := dig(svc, "metadata", "name"); name != "revoker-ingress" {
		t.Errorf("the ingress Service is named %v, want revoker-ingress", name)
	}
	sel, _ := dig(svc, "spec", "selector").(map[string]any)
	if len(sel) == 0 {
		t.Error("the ingress Service selects no pods")
	}
	for k, v := range sel {
		if podLabels[k] != v {
			t.Errorf("the ingress Service selects %s=%v, which revoker's pods do not carry", k, v)
		}
	}
	if dig(svc, "spec", "clusterIP") == "None" {
		t.Error("the ingress Service is headless: callers need one address for every replica")
	}
	ports := maps(dig(svc, "spec", "ports"))
	if len(ports) != 1 {
		t.Fatalf("the ingress Service exposes %d ports, want the ingress port only", len(ports))
	}
	if p := ports[0]; fmt.Sprint(p["port"]) != port || p["targetPort"] != "ingress" || p["protocol"] != "TCP" {
		t.Errorf("the ingress Service exposes %v, want port %s to the container port named ingress, TCP", p, port)
	}

	// The metrics Service exposes the metrics port, never the ingress, and
	// the ServiceMonitor scrapes through it only.
	metricsSvc := k8sObject(t, "service.yaml", "Service")
	for _, p := range maps(dig(metricsSvc, "spec", "ports")) {
		if p["targetPort"] != "http" {
			t.Errorf("the metrics Service exposes %v, want the metrics port only", p)
		}
	}
	selects := func(sel map[string]any, svc map[string]any) bool {
		labels, _ := dig(svc, "metadata", "labels").(map[string]any)
		for k, v := range sel {
			if labels[k] != v {
				return false
			}
		}
		return true
	}
	monSel, _ := dig(k8sObject(t, "servicemonitor.yaml", "ServiceMonitor"), "spec", "selector", "matchLabels").(map[string]any)
	if !selects(monSel, metricsSvc) || selects(monSel, svc) {
		t.Errorf("the ServiceMonitor selects %v: want the metrics Service and not revoker-ingress", monSel)
	}
}

// secretVolume returns the Secret volume mounted where path lies, its
// mount path and secret name.
func secretVolume(t *testing.T, file string) (mountPath, secretName string, volume map[string]any) {
	t.Helper()
	pod, c := revokerPod(t)
	for _, m := range maps(c["volumeMounts"]) {
		mp, _ := m["mountPath"].(string)
		if mp == "" || !strings.HasPrefix(file, strings.TrimSuffix(mp, "/")+"/") {
			continue
		}
		for _, v := range maps(pod["volumes"]) {
			if v["name"] == m["name"] {
				s, _ := v["secret"].(map[string]any)
				name, _ := s["secretName"].(string)
				return mp, name, s
			}
		}
	}
	t.Fatalf("%s is not under the mount of a Secret volume", file)
	return "", "", nil
}

// exampleSecret reads an example Secret and returns it and the YAML file
// held under key in its stringData.
func exampleSecret(t *testing.T, file, key string) (secret, content map[string]any) {
	t.Helper()
	secret = k8sObject(t, filepath.Join("examples", file), "Secret")
	if secret["data"] != nil {
		t.Errorf("%s: data holds base64 values; an example holds placeholders in stringData only", file)
	}
	text, ok := dig(secret, "stringData", key).(string)
	if !ok {
		t.Fatalf("%s: stringData has no %s", file, key)
	}
	docs, err := parseYAML(text)
	if err != nil || len(docs) != 1 {
		t.Fatalf("%s: %s does not read: %v", file, key, err)
	}
	return secret, docs[0]
}

var (
	callerName  = regexp.MustCompile(`^[a-z0-9-]{1,32}$`)
	accountID   = regexp.MustCompile(`^[0-9a-f]{32}$`)
	sha256Hex   = regexp.MustCompile(`^[0-9a-f]{64}$`)
	zeroHash    = strings.Repeat("0", 64)
	inlineField = regexp.MustCompile(`(?i)^(token|api_key|secret|password|webhook_secret)$`)
)

// checkAccounts checks a list of accounts as SPEC §6 and §11 write them.
func checkAccounts(t *testing.T, who string, v any) {
	t.Helper()
	list, ok := v.([]any)
	if !ok || len(list) == 0 {
		t.Errorf("%s: accounts %v, want a list", who, v)
		return
	}
	for _, a := range list {
		if a != "*" && !accountID.MatchString(fmt.Sprint(a)) {
			t.Errorf("%s: account %v is neither an account id nor \"*\"", who, a)
		}
	}
}

// checkSecretFile: a file a caller or credential names is a key of the
// Secret mounted at mountPath, given by you, never written in the example.
func checkSecretFile(t *testing.T, who, file, mountPath string, secret map[string]any) {
	t.Helper()
	dir, key := path.Split(file)
	if strings.TrimSuffix(dir, "/") != strings.TrimSuffix(mountPath, "/") || key == "" {
		t.Errorf("%s: %s is not a key of the Secret mounted at %s", who, file, mountPath)
	}
	if dig(secret, "stringData", key) != nil {
		t.Errorf("%s: the example writes the secret %s; leave it to be added from a file", who, key)
	}
}

// TestKubernetesExampleCallers: the example callers Secret is the one the
// Deployment mounts, its file is where REVOKER_INGRESS_CALLERS_FILE says,
// in SPEC §11's format, with a bearer caller (soar) whose hash admits no
// known token and a webhook caller (pagerduty) whose secret is a file of
// the same Secret, not written in the example.
func TestKubernetesExampleCallers(t *testing.T) {
	_, c := revokerPod(t)
	file, _ := dig(envOf(c)["REVOKER_INGRESS_CALLERS_FILE"], "value").(string)
	if file == "" {
		t.Fatal("REVOKER_INGRESS_CALLERS_FILE is not set in deployment.yaml")
	}
	mountPath, secretName, volume := secretVolume(t, file)
	if volume["items"] != nil {
		t.Error("the callers Secret volume lists items: the webhook secrets it names would be left out")
	}
	secret, callers := exampleSecret(t, "ingress-callers-secret.yaml", path.Base(file))
	if name := dig(secret, "metadata", "name"); name != secretName {
		t.Errorf("the example is Secret %v, the Deployment mounts %s", name, secretName)
	}
	if len(callers) != 1 || callers["callers"] == nil {
		t.Fatalf("callers file %v: want one key, callers", callers)
	}
	seen := map[string]bool{}
	for i, cl := range maps(callers["callers"]) {
		name, _ := cl["name"].(string)
		who := fmt.Sprintf("caller %d (%s)", i, name)
		for k := range cl {
			switch k {
			case "name", "token_sha256", "webhook_secret_file", "urgent", "accounts", "rate":
			default:
				t.Errorf("%s: field %s is not in SPEC §11", who, k)
			}
			if inlineField.MatchString(k) {
				t.Errorf("%s: an inline secret (%s)", who, k)
			}
		}
		if !callerName.MatchString(name) || seen[name] {
			t.Errorf("%s: a name must be [a-z0-9-]{1,32} and unique", who)
		}
		seen[name] = true
		hash, hasHash := cl["token_sha256"].(string)
		secretFile, hasFile := cl["webhook_secret_file"].(string)
		switch {
		case hasHash == hasFile:
			t.Errorf("%s: exactly one of token_sha256 and webhook_secret_file", who)
		case hasHash && (!sha256Hex.MatchString(hash) || hash != zeroHash):
			t.Errorf("%s: token_sha256 %q, want the placeholder %s (the hash of no known token)", who, hash, zeroHash)
		case hasFile:
			checkSecretFile(t, who, secretFile, mountPath, secret)
		}
		if u := cl["urgent"]; u != nil && u != "true" && u != "false" {
			t.Errorf("%s: urgent %v, want true or false", who, u)
		}
		checkAccounts(t, who, cl["accounts"])
		if r := cl["rate"]; r != nil {
			if f, err := strconv.ParseFloat(fmt.Sprint(r), 64); err != nil || f < 0 {
				t.Errorf("%s: rate %v, want a number, at least 0", who, r)
			}
		}
		if name == "soar" && !hasHash {
			t.Error("the soar caller is not a bearer-token caller")
		}
		if name == "pagerduty" && !hasFile {
			t.Error("the pagerduty caller is not a webhook caller")
		}
	}
	if !seen["soar"] || !seen["pagerduty"] {
		t.Errorf("callers %v, want soar and pagerduty", seen)
	}

	// The ingress itself takes the file, once the Secret holds the files
	// it names (here under a temporary directory instead of the mount).
	dir := t.TempDir()
	text := strings.ReplaceAll(dig(secret, "stringData", path.Base(file)).(string), strings.TrimSuffix(mountPath, "/")+"/", dir+"/")
	for _, cl := range maps(callers["callers"]) {
		if f, ok := cl["webhook_secret_file"].(string); ok {
			if err := os.WriteFile(filepath.Join(dir, path.Base(f)), []byte("a-webhook-signing-secret-for-the-test"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	callersFile := filepath.Join(dir, path.Base(file))
	if err := os.WriteFile(callersFile, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	loaded, err := ingress.LoadCallers(callersFile)
	if err != nil {
		t.Fatalf("the ingress refuses the example callers file: %v", err)
	}
	if got := strings.Join(loaded.Names(), ","); got != "soar,pagerduty" && got != "pagerduty,soar" {
		t.Errorf("the ingress loads callers %s, want soar and pagerduty", got)
	}
}

// credentialsFileRE finds REVOKER_CREDENTIALS_FILE in deployment.yaml,
// where it is left commented out (the credentials file is optional).
var credentialsFileRE = regexp.MustCompile(`(?m)^\s*#\s*- name: REVOKER_CREDENTIALS_FILE\s*\n\s*#\s*value: (\S+)\s*$`)

// TestKubernetesExampleCredentials: the example credentials Secret is the
// one the Deployment mounts (optionally: without it the pods start), its
// file is where the commented REVOKER_CREDENTIALS_FILE says, in SPEC §6's
// format, with every secret in a file of the same Secret, none written.
func TestKubernetesExampleCredentials(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(k8sDir, "deployment.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m := credentialsFileRE.FindStringSubmatch(string(b))
	if m == nil {
		t.Fatal("deployment.yaml does not show REVOKER_CREDENTIALS_FILE (commented out) to serve several accounts")
	}
	_, c := revokerPod(t)
	if _, set := envOf(c)["REVOKER_CREDENTIALS_FILE"]; set {
		t.Error("REVOKER_CREDENTIALS_FILE is set: the pods would not start without the optional Secret")
	}
	file := m[1]
	mountPath, secretName, volume := secretVolume(t, file)
	if volume["optional"] != "true" {
		t.Error("the credentials Secret volume is not optional: the pods would wait for a Secret most never make")
	}
	if volume["items"] != nil {
		t.Error("the credentials Secret volume lists items: the token files it names would be left out")
	}
	if mode, _ := volume["defaultMode"].(string); mode != "0440" && mode != "0400" {
		t.Errorf("the credentials Secret volume's defaultMode %q lets more than the pod's user and group read it", mode)
	}
	secret, creds := exampleSecret(t, "credentials-secret.yaml", path.Base(file))
	if name := dig(secret, "metadata", "name"); name != secretName {
		t.Errorf("the example is Secret %v, the Deployment mounts %s", name, secretName)
	}
	if len(creds) != 1 || creds["credentials"] == nil {
		t.Fatalf("credentials file %v: want one key, credentials", creds)
	}
	seen := map[string]bool{}
	rateOf := map[string]string{}
	wildcards := 0
	for i, cr := range maps(creds["credentials"]) {
		name, _ := cr["name"].(string)
		who := fmt.Sprintf("credential %d (%s)", i, name)
		for k := range cr {
			switch k {
			case "name", "token_file", "email", "api_key_file", "accounts", "budget", "rate":
			default:
				t.Errorf("%s: field %s is not in SPEC §6", who, k)
			}
		}
		if !callerName.MatchString(name) || seen[name] {
			t.Errorf("%s: a name must be [a-z0-9-]{1,32} and unique", who)
		}
		seen[name] = true
		token, hasToken := cr["token_file"].(string)
		keyFile, hasKey := cr["api_key_file"].(string)
		email, hasEmail := cr["email"].(string)
		switch {
		case hasToken && (hasKey || hasEmail):
			t.Errorf("%s: a token file and a legacy key: one or the other", who)
		case hasToken:
			checkSecretFile(t, who, token, mountPath, secret)
		case hasKey && hasEmail && strings.HasSuffix(email, "@example.com"):
			checkSecretFile(t, who, keyFile, mountPath, secret)
		default:
			t.Errorf("%s: want token_file, or email (a placeholder @example.com) and api_key_file", who)
		}
		checkAccounts(t, who, cr["accounts"])
		if strings.Contains(fmt.Sprint(cr["accounts"]), "*") {
			wildcards++
		}
		budget := name
		if b, ok := cr["budget"].(string); ok {
			budget = b
		}
		if !callerName.MatchString(budget) {
			t.Errorf("%s: budget %q, want [a-z0-9-]{1,32}", who, budget)
		}
		rate := fmt.Sprint(cr["rate"])
		if f, err := strconv.ParseFloat(rate, 64); cr["rate"] != nil && (err != nil || f < 0) {
			t.Errorf("%s: rate %v, want a number, at least 0", who, rate)
		}
		if r, ok := rateOf[budget]; ok && r != rate {
			t.Errorf("%s: budget %s has rates %s and %s: credentials sharing a budget must agree", who, budget, r, rate)
		}
		rateOf[budget] = rate
	}
	if len(seen) < 2 {
		t.Error("the example shows fewer than two credentials: it is the way to serve several accounts")
	}
	if wildcards > 1 {
		t.Error(`more than one credential takes "*"`)
	}

	// revoker itself takes the file, once the Secret holds the files it
	// names (here under a temporary directory instead of the mount).
	dir := t.TempDir()
	text := strings.ReplaceAll(dig(secret, "stringData", path.Base(file)).(string), strings.TrimSuffix(mountPath, "/")+"/", dir+"/")
	for _, cr := range maps(creds["credentials"]) {
		for _, k := range []string{"token_file", "api_key_file"} {
			if f, ok := cr[k].(string); ok {
				if err := os.WriteFile(filepath.Join(dir, path.Base(f)), []byte("a-placeholder-secret-for-the-test"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	credsFile := filepath.Join(dir, path.Base(file))
	if err := os.WriteFile(credsFile, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	set, err := credentials.Load(credsFile, credentials.Options{DefaultRate: 4, BaseURL: "https://api.cloudflare.com/client/v4", Timeout: time.Second})
	if err != nil {
		t.Fatalf("revoker refuses the example credentials file: %v", err)
	}
	if got := len(set.Credentials()); got != len(seen) {
		t.Errorf("revoker loads %d credentials, the example has %d", got, len(seen))
	}
}
