package config

import (
	"strconv"
	"strings"
	"time"
)

// Variable names.
const (
	envNATSURL          = "REVOKER_NATS_URL"
	envNATSCreds        = "REVOKER_NATS_CREDS"
	envNATSTLSCA        = "REVOKER_NATS_TLS_CA"
	envNATSTLSCert      = "REVOKER_NATS_TLS_CERT"
	envNATSTLSKey       = "REVOKER_NATS_TLS_KEY"
	envNATSInboxPrefix  = "REVOKER_NATS_INBOX_PREFIX"
	envStream           = "REVOKER_STREAM"
	envSubjects         = "REVOKER_SUBJECTS"
	envConsumer         = "REVOKER_CONSUMER"
	envDLQStream        = "REVOKER_DLQ_STREAM"
	envDLQSubject       = "REVOKER_DLQ_SUBJECT"
	envOutcomeStream    = "REVOKER_OUTCOME_STREAM"
	envOutcomeSubject   = "REVOKER_OUTCOME_SUBJECT"
	envCreateStreams    = "REVOKER_CREATE_STREAMS"
	envStreamReplicas   = "REVOKER_STREAM_REPLICAS"
	envAPIToken         = "CLOUDFLARE_API_TOKEN"
	envAPITokenFile     = "CLOUDFLARE_API_TOKEN_FILE"
	envEmail            = "CLOUDFLARE_EMAIL"
	envAPIKey           = "CLOUDFLARE_API_KEY"
	envBaseURL          = "CLOUDFLARE_BASE_URL"
	envHTTPTimeout      = "REVOKER_HTTP_TIMEOUT"
	envConcurrency      = "REVOKER_CONCURRENCY"
	envRateLimit        = "REVOKER_RATE_LIMIT"
	envRetryInitial     = "REVOKER_RETRY_INITIAL"
	envRetryMaxInterval = "REVOKER_RETRY_MAX_INTERVAL"
	envRetryMaxElapsed  = "REVOKER_RETRY_MAX_ELAPSED"
	envMaxDeliver       = "REVOKER_MAX_DELIVER"
	envAckWait          = "REVOKER_ACK_WAIT"
	envNotFound         = "REVOKER_NOT_FOUND"
	envAllowedAccounts  = "REVOKER_ALLOWED_ACCOUNTS"
	envShutdownTimeout  = "REVOKER_SHUTDOWN_TIMEOUT"
	envVerifyInterval   = "REVOKER_VERIFY_INTERVAL"
	envHTTPAddr         = "REVOKER_HTTP_ADDR"
	envCredentialsFile  = "REVOKER_CREDENTIALS_FILE"
	envIPRateLimit      = "REVOKER_IP_RATE_LIMIT"
	envIngressAddr      = "REVOKER_INGRESS_ADDR"
	envIngressTLSCert   = "REVOKER_INGRESS_TLS_CERT"
	envIngressTLSKey    = "REVOKER_INGRESS_TLS_KEY"
	envIngressCallers   = "REVOKER_INGRESS_CALLERS_FILE"
	envIngressMaxWait   = "REVOKER_INGRESS_MAX_WAIT"
	envDebugAddr        = "REVOKER_DEBUG_ADDR"
	envLogLevel         = "REVOKER_LOG_LEVEL"
	envLogFormat        = "REVOKER_LOG_FORMAT"
)

// redactedText replaces a secret wherever a Config is shown.
const redactedText = "[redacted]"

// setting is one variable and its flag.
type setting struct {
	env     string
	section Section
	usage   string // flag usage; a `word` in it names the flag's argument
	isBool  bool
	// required: the setting needs a value, so "" is a bad value.
	required bool
	// def returns the default as text, for -help and messages.
	def func(Config) string
	// apply parses and checks v and stores it in c. It returns "" or what
	// is wrong; for a secret or a path that may hold one by mistake, what
	// is wrong never includes v.
	apply func(c *Config, v string) string
	// unused, when set, reports from the other values given (given
	// returns "" for one not given) that this setting is not used: it is
	// then neither read nor checked (SPEC §6: only the value actually
	// used is checked).
	unused func(given func(env string) string) bool
}

// besideCredentialsFile: a single credential is not used beside a
// credentials file (SPEC §6), which replaces it.
func besideCredentialsFile(given func(string) string) bool { return isGiven(given, envCredentialsFile) }

// isGiven reports whether env was given a value that is not blank: a blank
// one is read as not set, and leaves the settings beside it in use.
func isGiven(given func(string) string, env string) bool { return strings.TrimSpace(given(env)) != "" }

// legacyUnused: the legacy pair is not used beside a credentials file or a
// token, which SPEC §1 prefers.
func legacyUnused(given func(string) string) bool {
	return besideCredentialsFile(given) || isGiven(given, envAPIToken) || isGiven(given, envAPITokenFile)
}

// outcomesOff: the periodic check reads the outcome records, and is not
// run while they are off.
func outcomesOff(given func(string) string) bool { return given(envOutcomeSubject) == "" }

// ingressOff: the ingress's settings are not used while it is off.
func ingressOff(given func(string) string) bool { return !isGiven(given, envIngressAddr) }

func (s *setting) flagName() string { return flagName(s.env) }

func noDefault(Config) string { return "" }

// settings lists every setting in the order Load reads and checks them.
var settings = []setting{
	// NATS
	{
		env: envNATSURL, section: NATS, required: true,
		usage: "NATS server `URL`s, comma-separated (schemes nats, tls, ws, wss)",
		def:   func(c Config) string { return c.NATSURL },
		apply: func(c *Config, v string) string {
			list, p := parseNATSURLs(v)
			c.NATSURL = list
			return p
		},
	},
	{
		env: envNATSCreds, section: NATS,
		usage: "NATS credentials (.creds) `file`",
		def:   noDefault,
		apply: optionalFile(func(c *Config) *string { return &c.NATSCreds }, false),
	},
	{
		env: envNATSTLSCA, section: NATS,
		usage: "`file` of CA certificates to verify the NATS server with",
		def:   noDefault,
		apply: optionalFile(func(c *Config) *string { return &c.NATSTLSCA }, true),
	},
	{
		env: envNATSTLSCert, section: NATS,
		usage: "client certificate `file` for NATS TLS (needs --nats-tls-key)",
		def:   noDefault,
		apply: optionalFile(func(c *Config) *string { return &c.NATSTLSCert }, true),
	},
	{
		env: envNATSTLSKey, section: NATS,
		usage: "client key `file` for NATS TLS (needs --nats-tls-cert)",
		def:   noDefault,
		apply: optionalFile(func(c *Config) *string { return &c.NATSTLSKey }, false),
	},
	{
		env: envNATSInboxPrefix, section: NATS, required: true,
		usage: "`prefix` of this process's reply subjects (give each NATS role its own)",
		def:   func(c Config) string { return c.NATSInboxPrefix },
		apply: func(c *Config, v string) string {
			c.NATSInboxPrefix = v
			if p := subjectProblem(v); p != "" {
				return quote(v) + " is not a valid inbox prefix: " + p
			}
			return ""
		},
	},

	// Streams
	{
		env: envStream, section: Work, required: true,
		usage: "work stream `name`",
		def:   func(c Config) string { return c.Stream },
		apply: jsName(func(c *Config) *string { return &c.Stream }, "stream name"),
	},
	{
		env: envSubjects, section: Work, required: true,
		usage: "work `subjects`, comma-separated, highest priority first",
		def:   func(c Config) string { return strings.Join(c.Subjects, ",") },
		apply: func(c *Config, v string) string {
			list, p := parseSubjects(v)
			c.Subjects = list
			return p
		},
	},
	{
		env: envConsumer, section: Consumers, required: true,
		usage: "durable consumer name `prefix`",
		def:   func(c Config) string { return c.Consumer },
		apply: jsName(func(c *Config) *string { return &c.Consumer }, "durable consumer name"),
	},
	{
		env: envDLQStream, section: DeadLetters, required: true,
		usage: "dead-letter stream `name`",
		def:   func(c Config) string { return c.DLQStream },
		apply: jsName(func(c *Config) *string { return &c.DLQStream }, "stream name"),
	},
	{
		env: envDLQSubject, section: DeadLetters, required: true,
		usage: "dead-letter `subject`",
		def:   func(c Config) string { return c.DLQSubject },
		apply: func(c *Config, v string) string {
			c.DLQSubject = v
			return checkLiteralSubject(v)
		},
	},
	{
		// Checked in the cross checks, and only while outcome records are on.
		env: envOutcomeStream, section: Outcomes,
		usage: "outcome stream `name`",
		def:   func(c Config) string { return c.OutcomeStream },
		apply: func(c *Config, v string) string {
			c.OutcomeStream = v
			return ""
		},
	},
	{
		env: envOutcomeSubject, section: Outcomes,
		usage: "outcome `subject`; empty turns outcome records off",
		def:   func(c Config) string { return c.OutcomeSubject },
		apply: func(c *Config, v string) string {
			c.OutcomeSubject = v
			if v == "" {
				return ""
			}
			return checkLiteralSubject(v)
		},
	},
	{
		env: envCreateStreams, section: Consumers, required: true, isBool: true,
		usage: "create missing streams and consumers",
		def:   func(c Config) string { return strconv.FormatBool(c.CreateStreams) },
		apply: func(c *Config, v string) string {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return quote(v) + " is not a boolean (true or false)"
			}
			c.CreateStreams = b
			return ""
		},
	},
	{
		env: envStreamReplicas, section: Consumers, required: true,
		usage: "replicas of the streams, bucket and consumers created, a `number` from 1 to 5 (3 on a 3-node cluster)",
		def:   func(c Config) string { return strconv.Itoa(c.StreamReplicas) },
		apply: intRange(func(c *Config) *int { return &c.StreamReplicas }, 1, MaxStreamReplicas),
	},

	// API
	{
		env: envAPIToken, section: API, unused: besideCredentialsFile,
		usage: "Cloudflare API `token` (prefer --cloudflare-api-token-file or the variable: flags show in ps)",
		def:   noDefault,
		apply: secret(func(c *Config) *string { return &c.APIToken }),
	},
	{
		env: envAPITokenFile, section: API, unused: besideCredentialsFile,
		usage: "`file` holding the Cloudflare API token, re-read when it changes",
		def:   noDefault,
		apply: optionalFile(func(c *Config) *string { return &c.APITokenFile }, false),
	},
	{
		env: envCredentialsFile, section: API,
		usage: "`file` naming several Cloudflare credentials and their accounts (YAML or JSON), re-read when it changes",
		def:   noDefault,
		apply: optionalFile(func(c *Config) *string { return &c.CredentialsFile }, true),
	},
	{
		env: envEmail, section: API, unused: legacyUnused,
		usage: "Cloudflare account `email` (legacy auth, with --cloudflare-api-key)",
		def:   noDefault,
		apply: func(c *Config, v string) string {
			c.Email = v
			if v == "" {
				return ""
			}
			return checkEmail(v)
		},
	},
	{
		env: envAPIKey, section: API, unused: legacyUnused,
		usage: "Cloudflare global API `key` (legacy auth, with --cloudflare-email)",
		def:   noDefault,
		apply: secret(func(c *Config) *string { return &c.APIKey }),
	},
	{
		env: envBaseURL, section: API, required: true,
		usage: "Cloudflare API base `URL`",
		def:   func(c Config) string { return c.BaseURL },
		apply: func(c *Config, v string) string {
			u, p := parseBaseURL(v)
			c.BaseURL = u
			return p
		},
	},
	{
		env: envHTTPTimeout, section: API, required: true,
		usage: "timeout of one API call, a `duration`",
		def:   func(c Config) string { return c.HTTPTimeout.String() },
		apply: duration(func(c *Config) *time.Duration { return &c.HTTPTimeout }, 0),
	},

	// Worker
	{
		env: envConcurrency, section: Worker, required: true,
		usage: "API calls in flight at most, a `number` from 1 to 1024",
		def:   func(c Config) string { return strconv.Itoa(c.Concurrency) },
		apply: intRange(func(c *Config) *int { return &c.Concurrency }, 1, MaxConcurrency),
	},
	{
		env: envRateLimit, section: Rates, required: true,
		usage: "API calls per second for the credential, one budget shared by every replica using it, a `rate` (0 = no limit)",
		def:   func(c Config) string { return strconv.FormatFloat(c.RateLimit, 'g', -1, 64) },
		apply: rate(func(c *Config) *float64 { return &c.RateLimit }),
	},
	{
		env: envIPRateLimit, section: Rates, required: true,
		usage: "API calls per second of all credentials together from this fleet, a `rate` (0 = no limit)",
		def:   func(c Config) string { return strconv.FormatFloat(c.IPRateLimit, 'g', -1, 64) },
		apply: rate(func(c *Config) *float64 { return &c.IPRateLimit }),
	},
	{
		env: envRetryInitial, section: Worker, required: true,
		usage: "first retry interval, a `duration`",
		def:   func(c Config) string { return c.RetryInitial.String() },
		apply: duration(func(c *Config) *time.Duration { return &c.RetryInitial }, 0),
	},
	{
		env: envRetryMaxInterval, section: Worker, required: true,
		usage: "longest retry interval, a `duration`",
		def:   func(c Config) string { return c.RetryMaxInterval.String() },
		apply: duration(func(c *Config) *time.Duration { return &c.RetryMaxInterval }, 0),
	},
	{
		env: envRetryMaxElapsed, section: Worker, required: true,
		usage: "retry budget of one delivery, a `duration`",
		def:   func(c Config) string { return c.RetryMaxElapsed.String() },
		apply: duration(func(c *Config) *time.Duration { return &c.RetryMaxElapsed }, 0),
	},
	{
		env: envMaxDeliver, section: Worker, required: true,
		usage: "deliveries before a retryable failure is dead-lettered, a `number` of at least 1",
		def:   func(c Config) string { return strconv.Itoa(c.MaxDeliver) },
		apply: intRange(func(c *Config) *int { return &c.MaxDeliver }, 1, 0),
	},
	{
		env: envAckWait, section: Worker, required: true,
		usage: "the consumers' ack wait, a `duration` of at least 1s",
		def:   func(c Config) string { return c.AckWait.String() },
		apply: duration(func(c *Config) *time.Duration { return &c.AckWait }, MinAckWait),
	},
	{
		env: envNotFound, section: Worker, required: true,
		usage: "what a 404 does, a `mode`: ack or dead-letter",
		def:   func(c Config) string { return notFoundText(c.NotFoundDeadLetter) },
		apply: func(c *Config, v string) string {
			switch strings.ToLower(v) {
			case "ack":
				c.NotFoundDeadLetter = false
			case "dead-letter":
				c.NotFoundDeadLetter = true
			default:
				return quote(v) + ` is not "ack" or "dead-letter"`
			}
			return ""
		},
	},
	{
		env: envAllowedAccounts, section: Worker,
		usage: "account `ids` events may name, comma-separated (empty = all)",
		def:   func(c Config) string { return strings.Join(c.AllowedAccounts, ",") },
		apply: func(c *Config, v string) string {
			list, p := parseAccounts(v)
			c.AllowedAccounts = list
			return p
		},
	},
	{
		env: envShutdownTimeout, section: Worker, required: true,
		usage: "how long in-flight work may finish after SIGTERM, a `duration`",
		def:   func(c Config) string { return c.ShutdownTimeout.String() },
		apply: duration(func(c *Config) *time.Duration { return &c.ShutdownTimeout }, 0),
	},
	{
		env: envVerifyInterval, section: Worker, required: true, unused: outcomesOff,
		usage: "how often serve checks that revoked keys are gone, a `duration` (0 = never)",
		def:   func(c Config) string { return c.VerifyInterval.String() },
		apply: func(c *Config, v string) string {
			// Unlike the other durations, 0 is a value: never.
			d, err := time.ParseDuration(v)
			switch {
			case err != nil:
				return quote(v) + " is not a duration (Go syntax, such as 500ms, 30s or 2m)"
			case d < 0:
				return quote(v) + " is negative (0 = never)"
			}
			c.VerifyInterval = d
			return ""
		},
	},

	// Server
	{
		env: envHTTPAddr, section: Server, required: true,
		usage: "`address` serving /metrics, /healthz and /readyz",
		def:   func(c Config) string { return c.HTTPAddr },
		apply: func(c *Config, v string) string {
			c.HTTPAddr = v
			return checkListenAddr(v)
		},
	},
	{
		env: envDebugAddr, section: Server,
		usage: "loopback `address` serving Go's profiler, /debug/pprof/ (empty = off)",
		def:   func(c Config) string { return c.DebugAddr },
		apply: func(c *Config, v string) string {
			c.DebugAddr = v
			if v == "" {
				return ""
			}
			return checkDebugAddr(v)
		},
	},

	{
		env: envIngressAddr, section: Server,
		usage: "`address` of the HTTP ingress for incident automation (empty = off)",
		def:   func(c Config) string { return c.IngressAddr },
		apply: func(c *Config, v string) string {
			c.IngressAddr = v
			if v == "" {
				return ""
			}
			return checkListenAddr(v)
		},
	},
	{
		env: envIngressTLSCert, section: Server, unused: ingressOff,
		usage: "`file` with the ingress's TLS certificate chain (PEM), re-read when it changes",
		def:   noDefault,
		apply: optionalFile(func(c *Config) *string { return &c.IngressTLSCert }, true),
	},
	{
		env: envIngressTLSKey, section: Server, unused: ingressOff,
		usage: "`file` with the ingress's TLS private key (PEM), re-read when it changes",
		def:   noDefault,
		apply: optionalFile(func(c *Config) *string { return &c.IngressTLSKey }, false),
	},
	{
		env: envIngressCallers, section: Server, unused: ingressOff,
		usage: "`file` naming the ingress's callers, their credentials and permissions",
		def:   noDefault,
		apply: optionalFile(func(c *Config) *string { return &c.IngressCallersFile }, true),
	},
	{
		env: envIngressMaxWait, section: Server, required: true, unused: ingressOff,
		usage: "the longest Prefer: wait the ingress honours, a `duration`",
		def:   func(c Config) string { return c.IngressMaxWait.String() },
		apply: duration(func(c *Config) *time.Duration { return &c.IngressMaxWait }, 0),
	},

	// Logging
	{
		env: envLogLevel, section: Logging, required: true,
		usage: "log `level`: debug, info, warn or error",
		def:   func(c Config) string { return c.LogLevel },
		apply: enum(func(c *Config) *string { return &c.LogLevel }, "debug", "info", "warn", "error"),
	},
	{
		env: envLogFormat, section: Logging, required: true,
		usage: "log `format`: json or console",
		def:   func(c Config) string { return c.LogFormat },
		apply: enum(func(c *Config) *string { return &c.LogFormat }, "json", "console"),
	},
}

func notFoundText(deadLetter bool) string {
	if deadLetter {
		return "dead-letter"
	}
	return "ack"
}

// crossCheck checks settings against each other, after every single value
// has been read.
type crossCheck struct {
	section Section
	check   func(c *Config, st *state) *Error
}

// crossChecks run in this order after the single values.
var crossChecks = []crossCheck{
	{NATS, checkNATSCreds},
	{NATS, checkTLSPair},
	{Streams, checkStreams},
	{API, checkCredentials},
	{Server, checkIngress},
	{Server, checkAddrs},
	{Worker, checkRetry},
}
