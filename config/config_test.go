package config_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/revoker/revoker/config"
)

// secretToken is the API token of the base environment: no error may show it.
const secretToken = "zq7-Distinctive-Token-Value-9f3c"

// variables lists every variable of SPEC §6, each with its section.
var variables = map[string]config.Section{
	"REVOKER_NATS_URL":             config.NATS,
	"REVOKER_NATS_CREDS":           config.NATS,
	"REVOKER_NATS_TLS_CA":          config.NATS,
	"REVOKER_NATS_TLS_CERT":        config.NATS,
	"REVOKER_NATS_TLS_KEY":         config.NATS,
	"REVOKER_NATS_INBOX_PREFIX":    config.NATS,
	"REVOKER_STREAM":               config.Streams,
	"REVOKER_SUBJECTS":             config.Streams,
	"REVOKER_CONSUMER":             config.Streams,
	"REVOKER_DLQ_STREAM":           config.Streams,
	"REVOKER_DLQ_SUBJECT":          config.Streams,
	"REVOKER_OUTCOME_STREAM":       config.Streams,
	"REVOKER_OUTCOME_SUBJECT":      config.Streams,
	"REVOKER_CREATE_STREAMS":       config.Streams,
	"REVOKER_STREAM_REPLICAS":      config.Streams,
	"CLOUDFLARE_API_TOKEN":         config.API,
	"CLOUDFLARE_API_TOKEN_FILE":    config.API,
	"CLOUDFLARE_EMAIL":             config.API,
	"CLOUDFLARE_API_KEY":           config.API,
	"CLOUDFLARE_BASE_URL":          config.API,
	"REVOKER_HTTP_TIMEOUT":         config.API,
	"REVOKER_CONCURRENCY":          config.Worker,
	"REVOKER_RATE_LIMIT":           config.Rates,
	"REVOKER_RETRY_INITIAL":        config.Worker,
	"REVOKER_RETRY_MAX_INTERVAL":   config.Worker,
	"REVOKER_RETRY_MAX_ELAPSED":    config.Worker,
	"REVOKER_MAX_DELIVER":          config.Worker,
	"REVOKER_ACK_WAIT":             config.Worker,
	"REVOKER_NOT_FOUND":            config.Worker,
	"REVOKER_ALLOWED_ACCOUNTS":     config.Worker,
	"REVOKER_SHUTDOWN_TIMEOUT":     config.Worker,
	"REVOKER_VERIFY_INTERVAL":      config.Worker,
	"REVOKER_HTTP_ADDR":            config.Server,
	"REVOKER_DEBUG_ADDR":           config.Server,
	"REVOKER_CREDENTIALS_FILE":     config.API,
	"REVOKER_IP_RATE_LIMIT":        config.Rates,
	"REVOKER_INGRESS_ADDR":         config.Server,
	"REVOKER_INGRESS_TLS_CERT":     config.Server,
	"REVOKER_INGRESS_TLS_KEY":      config.Server,
	"REVOKER_INGRESS_CALLERS_FILE": config.Server,
	"REVOKER_INGRESS_MAX_WAIT":     config.Server,
	"REVOKER_LOG_LEVEL":            config.Logging,
	"REVOKER_LOG_FORMAT":           config.Logging,
}

var sections = []config.Section{config.NATS, config.Streams, config.API, config.Worker, config.Rates, config.Server, config.Logging}

// flagOf returns the flag matching a variable, by the rule of the package
// documentation.
func flagOf(env string) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(env, "REVOKER_")), "_", "-")
}

func baseEnv() map[string]string {
	return map[string]string{"CLOUDFLARE_API_TOKEN": secretToken}
}

func lookupIn(env map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	}
}

// load registers the sections on a new flag set, parses args and loads.
func load(t *testing.T, sec config.Section, env map[string]string, args ...string) (config.Config, error) {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	l := config.Register(fs, sec)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("Parse(%q): %v", args, err)
	}
	return l.Load(lookupIn(env))
}

type badCase struct {
	Line         int                `json:"-"`
	Var          string             `json:"var"`
	Value        string             `json:"value"`
	Env          map[string]*string `json:"env"`
	Name         string             `json:"name"`
	FlagName     string             `json:"flag_name"`
	Error        string             `json:"error"`
	Good         *string            `json:"good"`
	SkipOverride bool               `json:"skip_override"`
	Absent       string             `json:"absent"`
}

func (c badCase) String() string {
	return fmt.Sprintf("bad.txt:%d %s=%.40q", c.Line, c.Var, c.Value)
}

// env returns the base environment with the case's extra variables.
func (c badCase) env() map[string]string {
	env := baseEnv()
	for k, v := range c.Env {
		if v == nil {
			delete(env, k)
		} else {
			env[k] = *v
		}
	}
	return env
}

// wantName is the name the error must start with, in env or flag form.
func (c badCase) wantName(asFlag bool) string {
	name := c.Name
	if name == "" {
		name = c.Var
	}
	if !asFlag {
		return name
	}
	if c.FlagName != "" {
		return c.FlagName
	}
	return "--" + flagOf(name)
}

func readBadCases(t *testing.T) []badCase {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "bad.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cases []badCase
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		dec := json.NewDecoder(strings.NewReader(line))
		dec.DisallowUnknownFields()
		c := badCase{Line: n}
		if err := dec.Decode(&c); err != nil {
			t.Fatalf("bad.txt:%d: %v", n, err)
		}
		if _, ok := variables[c.Var]; !ok {
			t.Fatalf("bad.txt:%d: unknown variable %q", n, c.Var)
		}
		if c.Error == "" {
			t.Fatalf("bad.txt:%d: no expected error", n)
		}
		cases = append(cases, c)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(cases) == 0 {
		t.Fatal("bad.txt holds no cases")
	}
	return cases
}

// checkErr checks err against the case: a *config.Error with the wanted
// name, one line, holding the expected text and no secret.
func checkErr(t *testing.T, c badCase, err error, wantName string) {
	t.Helper()
	if err == nil {
		t.Errorf("%v: Load succeeded, want an error naming %s", c, wantName)
		return
	}
	var ce *config.Error
	if !errors.As(err, &ce) {
		t.Errorf("%v: error %T is not a *config.Error: %v", c, err, err)
		return
	}
	msg := err.Error()
	if ce.Name != wantName {
		t.Errorf("%v: Name = %q, want %q (error: %s)", c, ce.Name, wantName, msg)
	}
	if !strings.HasPrefix(msg, wantName+": ") {
		t.Errorf("%v: error %q does not start with %q", c, msg, wantName+": ")
	}
	if !strings.Contains(msg, c.Error) {
		t.Errorf("%v: error\n\t%s\ndoes not contain\n\t%s", c, msg, c.Error)
	}
	if strings.ContainsAny(msg, "\r\n") {
		t.Errorf("%v: error is not one line: %q", c, msg)
	}
	if strings.Contains(msg, secretToken) {
		t.Errorf("%v: error shows the API token: %s", c, msg)
	}
	if c.Absent != "" && strings.Contains(msg, c.Absent) {
		t.Errorf("%v: error shows %q: %s", c, c.Absent, msg)
	}
}

func TestBadValuesFromVariables(t *testing.T) {
	for _, c := range readBadCases(t) {
		env := c.env()
		env[c.Var] = c.Value
		_, err := load(t, config.All, env)
		checkErr(t, c, err, c.wantName(false))
	}
}

// TestBadValuesFromFlags gives each bad value as a flag, over a good
// variable: the flag wins, and the error names the flag.
func TestBadValuesFromFlags(t *testing.T) {
	for _, c := range readBadCases(t) {
		env := c.env()
		if !c.SkipOverride {
			env[c.Var] = goodValue(t, c)
		}
		_, err := load(t, config.All, env, "--"+flagOf(c.Var)+"="+c.Value)
		checkErr(t, c, err, c.wantName(true))
	}
}

// goodValue is the case's good value, else the flag's default.
func goodValue(t *testing.T, c badCase) string {
	t.Helper()
	if c.Good != nil {
		return *c.Good
	}
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	config.Register(fs, config.All)
	f := fs.Lookup(flagOf(c.Var))
	if f == nil {
		t.Fatalf("%v: no flag --%s", c, flagOf(c.Var))
	}
	return f.DefValue
}

// TestGoodFlagOverridesBadVariable: a good flag value hides a bad variable.
func TestGoodFlagOverridesBadVariable(t *testing.T) {
	for _, c := range readBadCases(t) {
		if c.SkipOverride {
			continue
		}
		env := c.env()
		env[c.Var] = c.Value
		good := goodValue(t, c)
		if _, err := load(t, config.All, env, "--"+flagOf(c.Var)+"="+good); err != nil {
			t.Errorf("%v with --%s=%q: %v", c, flagOf(c.Var), good, err)
		}
	}
}

// TestOnlyUsedSectionsChecked: a bad value of a section the command did not
// register fails nothing (SPEC §6: only the value actually used is checked).
func TestOnlyUsedSectionsChecked(t *testing.T) {
	for _, c := range readBadCases(t) {
		sec := variables[c.Var]
		for _, other := range sections {
			if other == sec {
				continue
			}
			env := c.env()
			env[c.Var] = c.Value
			if _, err := load(t, other, env); err != nil {
				t.Errorf("%v: Load with section %d only: %v", c, other, err)
			}
		}
		env := c.env()
		env[c.Var] = c.Value
		if _, err := load(t, config.All&^sec, env); err != nil {
			t.Errorf("%v: Load without its section: %v", c, err)
		}
	}
}

func TestEveryVariableHasBadCases(t *testing.T) {
	seen := make(map[string]bool)
	for _, c := range readBadCases(t) {
		seen[c.Var] = true
	}
	for v := range variables {
		if !seen[v] {
			t.Errorf("testdata/bad.txt has no case for %s", v)
		}
	}
}

// TestSecretNeverInErrors sets a distinctive API token, then makes every
// other variable bad, one at a time, as a variable and as a flag; then the
// same with the legacy API key.
func TestSecretNeverInErrors(t *testing.T) {
	const secretKey = "k3y-Distinctive-Global-Key-77ab"
	for _, c := range readBadCases(t) {
		if c.Var == "CLOUDFLARE_API_TOKEN" || c.Var == "CLOUDFLARE_API_KEY" {
			continue
		}
		for _, asFlag := range []bool{false, true} {
			for _, legacy := range []bool{false, true} {
				env := c.env()
				secret := secretToken
				env["CLOUDFLARE_API_TOKEN"] = secretToken
				if legacy {
					secret = secretKey
					delete(env, "CLOUDFLARE_API_TOKEN")
					env["CLOUDFLARE_EMAIL"] = "ops@example.com"
					env["CLOUDFLARE_API_KEY"] = secretKey
				}
				var args []string
				if asFlag {
					args = []string{"--" + flagOf(c.Var) + "=" + c.Value}
				} else {
					env[c.Var] = c.Value
				}
				_, err := load(t, config.All, env, args...)
				if err == nil {
					// Only a good email with the legacy pair is a good
					// configuration; and beside a token, which wins, the
					// legacy settings are not used and so not checked.
					credential := c.Var == "CLOUDFLARE_EMAIL" || c.Var == "CLOUDFLARE_API_TOKEN_FILE"
					if !credential {
						t.Errorf("%v (flag %v, legacy %v): no error", c, asFlag, legacy)
					}
					continue
				}
				if strings.Contains(err.Error(), secret) {
					t.Errorf("%v (flag %v, legacy %v): error shows the secret: %v", c, asFlag, legacy, err)
				}
			}
		}
	}
}

func TestSecretGivenAsFlagNotInHelp(t *testing.T) {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	var out bytes.Buffer
	fs.SetOutput(&out)
	l := config.Register(fs, config.All)
	if err := fs.Parse([]string{"--cloudflare-api-token=" + secretToken, "--cloudflare-api-key", secretToken + "k"}); err != nil {
		t.Fatal(err)
	}
	fs.PrintDefaults()
	if strings.Contains(out.String(), secretToken) {
		t.Errorf("help shows the token:\n%s", out.String())
	}
	// Beside the token, which is used, a lone API key is not checked.
	if _, err := l.Load(lookupIn(nil)); err != nil {
		t.Errorf("token and an unused key: err = %v", err)
	}
}

func TestDefaults(t *testing.T) {
	d := config.Default()
	want := config.Config{
		NATSURL:          "nats://127.0.0.1:4222",
		NATSInboxPrefix:  "_INBOX",
		Stream:           "REVOCATIONS",
		Subjects:         []string{"revoke.urgent", "revoke.scheduled"},
		Consumer:         "revoker",
		DLQStream:        "REVOCATIONS_DLQ",
		DLQSubject:       "revoke.dlq",
		OutcomeStream:    "REVOCATION_OUTCOMES",
		OutcomeSubject:   "revoke.outcome",
		CreateStreams:    true,
		StreamReplicas:   1,
		BaseURL:          "https://api.cloudflare.com/client/v4",
		Concurrency:      16,
		RateLimit:        4,
		IPRateLimit:      150,
		IngressMaxWait:   time.Minute,
		HTTPTimeout:      10 * time.Second,
		RetryInitial:     500 * time.Millisecond,
		RetryMaxInterval: 30 * time.Second,
		RetryMaxElapsed:  2 * time.Minute,
		MaxDeliver:       10,
		AckWait:          30 * time.Second,
		HTTPAddr:         ":8080",
		LogLevel:         "info",
		LogFormat:        "json",
		ShutdownTimeout:  25 * time.Second,
		VerifyInterval:   time.Hour,
	}
	if !reflect.DeepEqual(d, want) {
		t.Errorf("Default() =\n%#v\nwant\n%#v", d, want)
	}
	if d.NotFoundDeadLetter || d.AllowedAccounts != nil {
		t.Errorf("Default(): not-found must be ack and every account allowed")
	}

	got, err := load(t, config.All, map[string]string{"CLOUDFLARE_API_TOKEN": "t"})
	if err != nil {
		t.Fatal(err)
	}
	want.APIToken = "t"
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Load with only a token =\n%#v\nwant\n%#v", got, want)
	}

	// Default returns a fresh slice each time.
	d.Subjects[0] = "changed"
	if config.Default().Subjects[0] != "revoke.urgent" {
		t.Error("Default shares its Subjects slice")
	}
}

func TestGoodValues(t *testing.T) {
	tests := []struct {
		name  string
		env   map[string]string
		args  []string
		check func(c config.Config) bool
	}{
		{"subjects trimmed", map[string]string{"REVOKER_SUBJECTS": " a.b , c.d,e "}, nil,
			func(c config.Config) bool { return slices.Equal(c.Subjects, []string{"a.b", "c.d", "e"}) }},
		{"outcome subject unset keeps default", nil, nil,
			func(c config.Config) bool { return c.OutcomeSubject == "revoke.outcome" && c.OutcomeEnabled() }},
		{"outcome subject empty turns records off; its stream is not checked",
			map[string]string{"REVOKER_OUTCOME_SUBJECT": "", "REVOKER_OUTCOME_STREAM": "not.checked"}, nil,
			func(c config.Config) bool { return c.OutcomeSubject == "" && !c.OutcomeEnabled() }},
		{"empty outcome flag overrides variable", map[string]string{"REVOKER_OUTCOME_SUBJECT": "x.y"}, []string{"--outcome-subject="},
			func(c config.Config) bool { return c.OutcomeSubject == "" }},
		{"outcome subject", map[string]string{"REVOKER_OUTCOME_SUBJECT": "audit.revocations"}, nil,
			func(c config.Config) bool { return c.OutcomeSubject == "audit.revocations" }},
		{"allowed accounts empty = all", map[string]string{"REVOKER_ALLOWED_ACCOUNTS": ""}, nil,
			func(c config.Config) bool { return c.AllowedAccounts == nil }},
		{"allowed accounts", map[string]string{"REVOKER_ALLOWED_ACCOUNTS": "023e105f4ecef8ad9ca31a8372d0c353, Abc9 "}, nil,
			func(c config.Config) bool {
				return slices.Equal(c.AllowedAccounts, []string{"023e105f4ecef8ad9ca31a8372d0c353", "Abc9"})
			}},
		{"log level any case", map[string]string{"REVOKER_LOG_LEVEL": "DEBUG", "REVOKER_LOG_FORMAT": "Console"}, nil,
			func(c config.Config) bool { return c.LogLevel == "debug" && c.LogFormat == "console" }},
		{"not found dead-letter", map[string]string{"REVOKER_NOT_FOUND": "dead-letter"}, nil,
			func(c config.Config) bool { return c.NotFoundDeadLetter }},
		{"not found ack", map[string]string{"REVOKER_NOT_FOUND": "ack"}, nil,
			func(c config.Config) bool { return !c.NotFoundDeadLetter }},
		{"create streams false", map[string]string{"REVOKER_CREATE_STREAMS": "false"}, nil,
			func(c config.Config) bool { return !c.CreateStreams }},
		{"bare boolean flag overrides variable", map[string]string{"REVOKER_CREATE_STREAMS": "0"}, []string{"--create-streams"},
			func(c config.Config) bool { return c.CreateStreams }},
		{"boolean flag false", nil, []string{"--create-streams=false"},
			func(c config.Config) bool { return !c.CreateStreams }},
		{"durations", map[string]string{
			"REVOKER_HTTP_TIMEOUT": "1m30s", "REVOKER_RETRY_INITIAL": "1s", "REVOKER_RETRY_MAX_INTERVAL": "1s",
			"REVOKER_RETRY_MAX_ELAPSED": "1h", "REVOKER_ACK_WAIT": "1s", "REVOKER_SHUTDOWN_TIMEOUT": "250ms",
			"REVOKER_VERIFY_INTERVAL": "15m",
		}, nil,
			func(c config.Config) bool {
				return c.HTTPTimeout == 90*time.Second && c.RetryInitial == time.Second && c.RetryMaxInterval == time.Second &&
					c.RetryMaxElapsed == time.Hour && c.AckWait == time.Second && c.ShutdownTimeout == 250*time.Millisecond &&
					c.VerifyInterval == 15*time.Minute
			}},
		{"a credentials file; the token beside it ignored", map[string]string{"REVOKER_CREDENTIALS_FILE": "testdata/token.txt"}, nil,
			func(c config.Config) bool {
				return c.CredentialsFile != "" && slices.Equal(c.IgnoredCredentials(), []string{"CLOUDFLARE_API_TOKEN"})
			}},
		{"ingress on loopback without TLS", map[string]string{"REVOKER_INGRESS_ADDR": "127.0.0.1:0", "REVOKER_INGRESS_CALLERS_FILE": "testdata/token.txt"}, nil,
			func(c config.Config) bool { return c.IngressAddr == "127.0.0.1:0" && c.IngressMaxWait == time.Minute }},
		{"ingress with TLS", map[string]string{"REVOKER_INGRESS_ADDR": ":8443", "REVOKER_INGRESS_CALLERS_FILE": "testdata/token.txt",
			"REVOKER_INGRESS_TLS_CERT": "testdata/cert.pem", "REVOKER_INGRESS_TLS_KEY": "testdata/key.pem", "REVOKER_INGRESS_MAX_WAIT": "30s"}, nil,
			func(c config.Config) bool { return c.IngressTLSKey != "" && c.IngressMaxWait == 30*time.Second }},
		{"verify interval 0 = never", map[string]string{"REVOKER_VERIFY_INTERVAL": "0"}, nil,
			func(c config.Config) bool { return c.VerifyInterval == 0 }},
		{"verify interval 0s = never", nil, []string{"--verify-interval=0s"},
			func(c config.Config) bool { return c.VerifyInterval == 0 }},
		{"rate limit 0 = no limit", map[string]string{"REVOKER_RATE_LIMIT": "0"}, nil,
			func(c config.Config) bool { return c.RateLimit == 0 }},
		{"rate limit fraction", map[string]string{"REVOKER_RATE_LIMIT": "0.5"}, nil,
			func(c config.Config) bool { return c.RateLimit == 0.5 }},
		{"concurrency bounds", map[string]string{"REVOKER_CONCURRENCY": "1024", "REVOKER_MAX_DELIVER": "1"}, nil,
			func(c config.Config) bool { return c.Concurrency == 1024 && c.MaxDeliver == 1 }},
		{"stream replicas bounds", map[string]string{"REVOKER_STREAM_REPLICAS": "5"}, nil,
			func(c config.Config) bool { return c.StreamReplicas == 5 }},
		{"stream replicas flag overrides variable", map[string]string{"REVOKER_STREAM_REPLICAS": "1"}, []string{"--stream-replicas=3"},
			func(c config.Config) bool { return c.StreamReplicas == 3 }},
		{"flag overrides variable", map[string]string{"REVOKER_CONCURRENCY": "3"}, []string{"--concurrency", "5"},
			func(c config.Config) bool { return c.Concurrency == 5 }},
		{"base URL trailing slash", map[string]string{"CLOUDFLARE_BASE_URL": "http://127.0.0.1:8787/client/v4/"}, nil,
			func(c config.Config) bool { return c.BaseURL == "http://127.0.0.1:8787/client/v4" }},
		{"NATS server list", map[string]string{"REVOKER_NATS_URL": "nats://a:4222, tls://b:4443 ,nats://c"}, nil,
			func(c config.Config) bool { return c.NATSURL == "nats://a:4222,tls://b:4443,nats://c" }},
		{"NATS websocket list", map[string]string{"REVOKER_NATS_URL": "ws://c, wss://u:p@d:443/x"}, nil,
			func(c config.Config) bool { return c.NATSURL == "ws://c,wss://u:p@d:443/x" }},
		{"NATS creds and TLS", map[string]string{
			"REVOKER_NATS_CREDS": "testdata/test.creds", "REVOKER_NATS_TLS_CA": "testdata/ca.pem",
			"REVOKER_NATS_TLS_CERT": "testdata/cert.pem", "REVOKER_NATS_TLS_KEY": "testdata/key.pem",
		}, nil,
			func(c config.Config) bool {
				return c.NATSCreds == "testdata/test.creds" && c.NATSTLSCA == "testdata/ca.pem" &&
					c.NATSTLSCert == "testdata/cert.pem" && c.NATSTLSKey == "testdata/key.pem"
			}},
		{"TLS CA alone", map[string]string{"REVOKER_NATS_TLS_CA": "testdata/ca.pem"}, nil,
			func(c config.Config) bool { return c.NATSTLSCA == "testdata/ca.pem" }},
		{"token trimmed", map[string]string{"CLOUDFLARE_API_TOKEN": "  tok-123\n"}, nil,
			func(c config.Config) bool { return c.APIToken == "tok-123" }},
		{"token file", map[string]string{"CLOUDFLARE_API_TOKEN": "", "CLOUDFLARE_API_TOKEN_FILE": "testdata/token.txt"}, nil,
			func(c config.Config) bool { return c.APIToken == "" && c.APITokenFile == "testdata/token.txt" }},
		{"token file by flag", map[string]string{"CLOUDFLARE_API_TOKEN": ""}, []string{"--cloudflare-api-token-file=testdata/token.txt"},
			func(c config.Config) bool { return c.APITokenFile == "testdata/token.txt" }},
		{"legacy pair", map[string]string{"CLOUDFLARE_API_TOKEN": "", "CLOUDFLARE_EMAIL": "ops@example.com", "CLOUDFLARE_API_KEY": "abc123\n"}, nil,
			func(c config.Config) bool {
				return c.Email == "ops@example.com" && c.APIKey == "abc123" && c.APIToken == ""
			}},
		{"http addr", map[string]string{"REVOKER_HTTP_ADDR": "[::1]:0"}, nil,
			func(c config.Config) bool { return c.HTTPAddr == "[::1]:0" }},
		{"names", map[string]string{
			"REVOKER_STREAM": "WORK", "REVOKER_CONSUMER": "rv", "REVOKER_DLQ_STREAM": "DEAD",
			"REVOKER_DLQ_SUBJECT": "dead.letters", "REVOKER_OUTCOME_STREAM": "AUDIT",
		}, nil,
			func(c config.Config) bool {
				return c.Stream == "WORK" && c.Consumer == "rv" && c.DLQStream == "DEAD" &&
					c.DLQSubject == "dead.letters" && c.OutcomeStream == "AUDIT"
			}},
	}
	for _, tt := range tests {
		env := baseEnv()
		for k, v := range tt.env {
			env[k] = v
		}
		c, err := load(t, config.All, env, tt.args...)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if !tt.check(c) {
			t.Errorf("%s: unexpected config %#v", tt.name, c)
		}
	}
}

func TestFlags(t *testing.T) {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	config.Register(fs, config.All)
	var got []string
	fs.VisitAll(func(f *flag.Flag) { got = append(got, f.Name) })
	var want []string
	for v := range variables {
		want = append(want, flagOf(v))
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("flags = %q\nwant %q", got, want)
	}
	for _, name := range []string{"nats-url", "nats-tls-ca", "cloudflare-api-token", "cloudflare-api-token-file",
		"cloudflare-email", "cloudflare-api-key", "cloudflare-base-url", "rate-limit"} {
		if fs.Lookup(name) == nil {
			t.Errorf("no flag --%s", name)
		}
	}
	for v, sec := range variables {
		for _, s := range sections {
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			config.Register(fs, s)
			if has := fs.Lookup(flagOf(v)) != nil; has != (s == sec) {
				t.Errorf("section %d registers --%s: %v", s, flagOf(v), has)
			}
		}
	}
	if f := fs.Lookup("subjects"); f.DefValue != "revoke.urgent,revoke.scheduled" {
		t.Errorf("--subjects default shown as %q", f.DefValue)
	}
}

func TestUnregisteredSection(t *testing.T) {
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	l := config.Register(fs, config.NATS|config.Streams)
	if err := fs.Parse([]string{"--rate-limit=5"}); err == nil {
		t.Error("a flag of an unregistered section was accepted")
	}
	if err := fs.Parse([]string{"--nats-url", "nats://x:4222", "--subjects=a,b"}); err != nil {
		t.Fatal(err)
	}
	// No credential, a bad rate limit and log level: none of them is used.
	c, err := l.Load(lookupIn(map[string]string{"REVOKER_RATE_LIMIT": "fast", "REVOKER_LOG_LEVEL": "loud"}))
	if err != nil {
		t.Fatalf("Load(NATS|Streams): %v", err)
	}
	if c.NATSURL != "nats://x:4222" || !slices.Equal(c.Subjects, []string{"a", "b"}) {
		t.Errorf("flags not applied: %#v", c)
	}
	if c.RateLimit != 4 || c.LogLevel != "info" {
		t.Errorf("unregistered sections must keep their defaults: %v %v", c.RateLimit, c.LogLevel)
	}
}

func TestLoadNilLookupUsesEnvironment(t *testing.T) {
	t.Setenv("REVOKER_RATE_LIMIT", "fast")
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	l := config.Register(fs, config.Rates)
	_, err := l.Load(nil)
	if err == nil || !strings.HasPrefix(err.Error(), "REVOKER_RATE_LIMIT: ") {
		t.Errorf("err = %v", err)
	}
}

func TestUnreadableFile(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads every file")
	}
	p := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, []byte("x"), 0o000); err != nil {
		t.Fatal(err)
	}
	_, err := load(t, config.NATS, map[string]string{"REVOKER_NATS_TLS_CA": p})
	if err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("err = %v", err)
	}
}

func TestDurable(t *testing.T) {
	c := config.Default()
	if got := c.Durable("revoke.urgent"); got != "revoker-revoke_urgent" {
		t.Errorf("Durable = %q", got)
	}
	c.Consumer = "rv"
	if got := c.Durable("a.b.c"); got != "rv-a_b_c" {
		t.Errorf("Durable = %q", got)
	}
	if c.HighestPriority() != "revoke.urgent" || c.LowestPriority() != "revoke.scheduled" {
		t.Errorf("priorities: %q %q", c.HighestPriority(), c.LowestPriority())
	}
	if (config.Config{}).HighestPriority() != "" || (config.Config{}).LowestPriority() != "" {
		t.Error("no subjects must give \"\"")
	}
}

func TestRedaction(t *testing.T) {
	const key = "k3y-Distinctive-Global-Key-77ab"
	c := config.Default()
	c.APIToken = secretToken
	c.APIKey = key
	c.Email = "ops@example.com"
	// A token in a URL's query is a secret in a NATS URL too.
	c.NATSURL = "nats://svc:natspa55@a:4222,nats://b:4222?token=natsQu3ryT0ken"
	c.BaseURL = "https://u:basepa55@api.example.com/client/v4"
	secrets := []string{secretToken, key, "natspa55", "basepa55", "natsQu3ryT0ken"}

	r := c.Redacted()
	if r.APIToken != "[redacted]" || r.APIKey != "[redacted]" {
		t.Errorf("Redacted: token %q key %q", r.APIToken, r.APIKey)
	}
	// Load refuses a NATS URL with a query; shown, such a list is hidden
	// whole (its query may be a piece of a password).
	if r.NATSURL != "[redacted]" {
		t.Errorf("Redacted NATS URL = %q", r.NATSURL)
	}
	c2 := c
	c2.NATSURL = "nats://svc:natspa55@a:4222,nats://b:4222"
	if got := c2.Redacted().NATSURL; got != "nats://[redacted]@a:4222,nats://b:4222" {
		t.Errorf("Redacted NATS URL = %q", got)
	}
	if c.APIToken != secretToken {
		t.Error("Redacted changed the original")
	}
	if (config.Config{}).Redacted().APIToken != "" {
		t.Error("an unset secret must stay empty")
	}

	fields := c.LogFields()
	if fields["cloudflare-api-token"] != "[redacted]" || fields["cloudflare-api-key"] != "[redacted]" {
		t.Errorf("LogFields secrets: %v %v", fields["cloudflare-api-token"], fields["cloudflare-api-key"])
	}
	if fields["rate-limit"] != 4.0 || fields["ack-wait"] != "30s" || fields["cloudflare-auth"] != "token" {
		t.Errorf("LogFields: %v", fields)
	}
	js, err := json.Marshal(struct{ C config.Config }{c})
	if err != nil {
		t.Fatal(err)
	}
	shown := []string{
		string(js), fmt.Sprint(fields), c.String(), fmt.Sprintf("%v", c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c),
		fmt.Sprintf("%s", c), fmt.Sprint(&c), fmt.Sprint(r),
	}
	for _, s := range shown {
		for _, sec := range secrets {
			if strings.Contains(s, sec) {
				t.Errorf("%q shows %q", s, sec)
			}
		}
	}
	if !strings.Contains(string(js), `"rate-limit":4`) {
		t.Errorf("JSON = %s", js)
	}
	if !strings.Contains(c.String(), `rate-limit=4`) || strings.ContainsAny(c.String(), "\n") {
		t.Errorf("String() = %s", c.String())
	}
}

func TestErrorFormat(t *testing.T) {
	e := &config.Error{Name: "REVOKER_RATE_LIMIT", Problem: `"fast" is not a number`}
	if e.Error() != `REVOKER_RATE_LIMIT: "fast" is not a number` {
		t.Errorf("Error() = %q", e.Error())
	}
	e = &config.Error{Name: "X", Problem: "a\nb"}
	if strings.Contains(e.Error(), "\n") {
		t.Errorf("Error() not one line: %q", e.Error())
	}
	// A long value is cut short in the message.
	_, err := load(t, config.Logging, map[string]string{"REVOKER_LOG_LEVEL": strings.Repeat("x", 5000)})
	if err == nil || len(err.Error()) > 300 {
		t.Errorf("long value: %d bytes: %v", len(fmt.Sprint(err)), err)
	}
}

// TestOnlyUsedSettingsAreChecked: a command is not stopped by a bad value
// of a setting it does not use (SPEC §6).
func TestOnlyUsedSettingsAreChecked(t *testing.T) {
	cases := []struct {
		sections config.Section
		env      map[string]string
	}{
		{config.NATS | config.Work | config.Outcomes, map[string]string{"REVOKER_CREATE_STREAMS": "maybe", "REVOKER_STREAM_REPLICAS": "7", "REVOKER_CONSUMER": "bad name", "REVOKER_DLQ_SUBJECT": "a..b"}},
		{config.NATS | config.DeadLetters, map[string]string{"REVOKER_SUBJECTS": "", "REVOKER_OUTCOME_STREAM": "x.y"}},
		{config.NATS | config.Outcomes, map[string]string{"REVOKER_STREAM": "a b", "REVOKER_RATE_LIMIT": "fast"}},
		{config.API, map[string]string{"CLOUDFLARE_API_TOKEN": "tok", "CLOUDFLARE_EMAIL": "ops@example.com"}},
	}
	for _, c := range cases {
		if _, err := load(t, c.sections, c.env); err != nil {
			t.Errorf("sections %b, %v: %v", c.sections, c.env, err)
		}
	}
	// Within the settings read, one that another makes unused is not
	// checked (SPEC §6): the single credential beside a credentials file,
	// the legacy pair beside a token, the ingress's settings while it is
	// off.
	for _, env := range []map[string]string{
		{"REVOKER_CREDENTIALS_FILE": "testdata/token.txt", "CLOUDFLARE_API_TOKEN": "", "CLOUDFLARE_API_TOKEN_FILE": "/nonexistent", "CLOUDFLARE_EMAIL": "bad"},
		{"CLOUDFLARE_API_TOKEN": "tok", "CLOUDFLARE_EMAIL": "bad", "CLOUDFLARE_API_KEY": ""},
		{"CLOUDFLARE_API_TOKEN": "tok", "REVOKER_INGRESS_MAX_WAIT": "soon", "REVOKER_INGRESS_TLS_CERT": "/nonexistent", "REVOKER_INGRESS_CALLERS_FILE": ""},
		{"CLOUDFLARE_API_TOKEN": "tok", "REVOKER_INGRESS_ADDR": "", "REVOKER_INGRESS_MAX_WAIT": "soon"},
	} {
		if _, err := load(t, config.All, env); err != nil {
			t.Errorf("%v: %v", env, err)
		}
	}
	// A blank token is no token: the legacy pair beside it is used.
	if c, err := load(t, config.All, map[string]string{"CLOUDFLARE_API_TOKEN": " ", "CLOUDFLARE_EMAIL": "ops@example.com", "CLOUDFLARE_API_KEY": "k3y"}); err != nil || c.Email == "" || c.APIKey != "k3y" {
		t.Errorf("a blank token beside the legacy pair: %+v, %v; want the pair used", c.Email, err)
	}
	c, err := load(t, config.All, map[string]string{"REVOKER_CREDENTIALS_FILE": "testdata/token.txt",
		"CLOUDFLARE_API_TOKEN_FILE": "/nonexistent", "CLOUDFLARE_EMAIL": "bad", "CLOUDFLARE_API_KEY": ""})
	if got := c.IgnoredCredentials(); err != nil || !slices.Equal(got, []string{"CLOUDFLARE_API_TOKEN_FILE", "CLOUDFLARE_EMAIL"}) {
		t.Errorf("ignored %v, %v; want the token file and email named (an empty key is not set)", got, err)
	}
	// The same values stop a command that uses them.
	if _, err := load(t, config.All, map[string]string{"CLOUDFLARE_API_TOKEN": "tok", "REVOKER_CREATE_STREAMS": "maybe"}); err == nil {
		t.Error("a bad REVOKER_CREATE_STREAMS did not stop serve")
	}
}

// TestNATSURLQueryWithAnAtHidden: a query or fragment holding an '@' is
// not taken for a user-information part: no part of it is shown.
func TestNATSURLQueryWithAnAtHidden(t *testing.T) {
	for _, tc := range []struct{ url, part string }{
		{"nats://a:4222?token=abc@Secr3tTail", "Secr3tTail"},
		{"nats://svc:pw@a:4222,nats://b:4222?token=x@Secr3tTail", "Secr3tTail"},
		{"nats://a:4222#frag@Secr3tTail", "Secr3tTail"},
		{"nats://u:pa?Zq9wX@a:4222", "Zq9wX"},
		{"a:4222?token=Se://cr3tT0k", "cr3tT0k"},      // no scheme; "://" in the token
		{"nats://svc:Kp7xQ,Zq9w@a:4222", "Kp7xQ"},     // a ',' in the password splits the list
		{"nats://a:4222?token=Kp7x,Zq9wV", "Zq9wV"},   // a ',' in a query token
		{"nats://svc:Kp7xR,y://Zq9w@a:4222", "Kp7xR"}, // a password holding ",y://"
	} {
		var c config.Config
		c.NATSURL = tc.url
		if r := c.Redacted(); strings.Contains(r.NATSURL, tc.part) || strings.Contains(c.String(), tc.part) {
			t.Errorf("%q shown as %q: part of a secret (%q) is there", tc.url, r.NATSURL, tc.part)
		}
		env := baseEnv()
		env["REVOKER_NATS_URL"] = tc.url
		if _, err := load(t, config.All, env); err != nil && strings.Contains(err.Error(), tc.part) {
			t.Errorf("%q: the error shows part of a secret (%q): %v", tc.url, tc.part, err)
		}
	}
}

// TestNATSURLQueryNotInErrors: a configuration error about a NATS URL
// shows the URL without the token put in its query.
func TestNATSURLQueryNotInErrors(t *testing.T) {
	const tok = "natsQu3ryT0ken"
	env := baseEnv()
	env["REVOKER_NATS_URL"] = "nats://a:99999?token=" + tok
	_, err := load(t, config.All, env)
	if err == nil {
		t.Fatal("a port out of range was taken")
	}
	if strings.Contains(err.Error(), tok) {
		t.Fatalf("the error shows the token: %v", err)
	}
}
