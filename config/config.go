// Package config reads revoker's settings (SPEC §3 and §6) from environment
// variables and command-line flags, applies the defaults and checks every
// value a command actually uses.
//
// Every variable has a matching flag: REVOKER_NATS_URL ↔ --nats-url (the
// REVOKER_ prefix is dropped, the rest lower-cased with '_' turned into '-');
// the CLOUDFLARE_* variables keep their prefix (CLOUDFLARE_API_TOKEN ↔
// --cloudflare-api-token). A flag overrides its variable.
//
// Usage:
//
//	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
//	ld := config.Register(fs, config.All)
//	if err := fs.Parse(args); err != nil { /* exit 2 */ }
//	cfg, err := ld.Load(os.LookupEnv)
//	if err != nil { /* print err (one line), exit 2 */ }
//
// Values are taken as follows:
//
//   - A variable that is not set, and a flag that is not given, leave the
//     default in place.
//   - A variable set to the empty string counts as set. For settings that
//     need a value (stream names, numbers, durations, ...) an empty value is
//     a bad value, not a request for the default: unset the variable instead.
//     Empty is meaningful for the optional settings: NATS creds and TLS files,
//     the Cloudflare credentials (empty = not given), REVOKER_ALLOWED_ACCOUNTS
//     (empty = every account) and REVOKER_OUTCOME_SUBJECT (empty = outcome
//     records off).
//   - Enumerations (log level, log format, not-found mode) are matched without
//     regard to case; booleans use strconv.ParseBool.
//   - The Cloudflare token and API key have surrounding white space trimmed
//     (secrets often arrive with a trailing newline).
//   - A trailing '/' of CLOUDFLARE_BASE_URL is removed.
//
// Only the settings of the sections given to Register are read and checked;
// the others keep their defaults in the returned Config.
//
// Secrets (the API token and API key) never appear in an Error. Neither do
// the values of CLOUDFLARE_API_TOKEN_FILE, REVOKER_NATS_CREDS and
// REVOKER_NATS_TLS_KEY, because a secret pasted there by mistake must not end
// up on stderr; user:password parts of URLs are replaced by "[redacted]".
// To log a Config use LogFields, Redacted or String, which all redact; fmt
// (%v, %+v, %#v) and encoding/json show a Config redacted too.
package config

import (
	"strings"
	"time"
)

// Config holds every setting of SPEC §6 (and the names of §3).
type Config struct {
	// NATS
	NATSURL     string // REVOKER_NATS_URL: one URL or a comma-separated list
	NATSCreds   string // REVOKER_NATS_CREDS: path of a .creds file, "" = none
	NATSTLSCA   string // REVOKER_NATS_TLS_CA: path, "" = system roots
	NATSTLSCert string // REVOKER_NATS_TLS_CERT: path; set together with NATSTLSKey
	NATSTLSKey  string // REVOKER_NATS_TLS_KEY: path; set together with NATSTLSCert
	// NATSInboxPrefix starts this process's reply subjects, so each role's
	// permissions can let it read only its own replies.
	NATSInboxPrefix string // REVOKER_NATS_INBOX_PREFIX

	// Streams
	Stream         string   // REVOKER_STREAM
	Subjects       []string // REVOKER_SUBJECTS, highest priority first
	Consumer       string   // REVOKER_CONSUMER: durable name prefix (see Durable)
	DLQStream      string   // REVOKER_DLQ_STREAM
	DLQSubject     string   // REVOKER_DLQ_SUBJECT
	OutcomeStream  string   // REVOKER_OUTCOME_STREAM
	OutcomeSubject string   // REVOKER_OUTCOME_SUBJECT: "" = outcome records off
	CreateStreams  bool     // REVOKER_CREATE_STREAMS
	StreamReplicas int      // REVOKER_STREAM_REPLICAS: replicas of what the worker creates

	// API
	APIToken     string // CLOUDFLARE_API_TOKEN (secret)
	APITokenFile string // CLOUDFLARE_API_TOKEN_FILE: path; read and watched elsewhere
	// CredentialsFile names several credentials and their accounts; when
	// set, the single-credential settings above are ignored.
	CredentialsFile string        // REVOKER_CREDENTIALS_FILE: path
	Email           string        // CLOUDFLARE_EMAIL (legacy pair)
	APIKey          string        // CLOUDFLARE_API_KEY (legacy pair, secret)
	BaseURL         string        // CLOUDFLARE_BASE_URL, without a trailing '/'
	HTTPTimeout     time.Duration // REVOKER_HTTP_TIMEOUT: per API call

	// Worker
	Concurrency        int           // REVOKER_CONCURRENCY: API calls in flight at most
	RateLimit          float64       // REVOKER_RATE_LIMIT: calls per second, 0 = no limit
	IPRateLimit        float64       // REVOKER_IP_RATE_LIMIT: calls per second of every credential together, 0 = no limit
	RetryInitial       time.Duration // REVOKER_RETRY_INITIAL
	RetryMaxInterval   time.Duration // REVOKER_RETRY_MAX_INTERVAL
	RetryMaxElapsed    time.Duration // REVOKER_RETRY_MAX_ELAPSED
	MaxDeliver         int           // REVOKER_MAX_DELIVER
	AckWait            time.Duration // REVOKER_ACK_WAIT
	NotFoundDeadLetter bool          // REVOKER_NOT_FOUND=dead-letter (default "ack": false)
	AllowedAccounts    []string      // REVOKER_ALLOWED_ACCOUNTS: nil = every account
	ShutdownTimeout    time.Duration // REVOKER_SHUTDOWN_TIMEOUT
	VerifyInterval     time.Duration // REVOKER_VERIFY_INTERVAL: 0 = serve never checks

	// Server
	HTTPAddr string // REVOKER_HTTP_ADDR
	// DebugAddr serves net/http/pprof when set; a loopback address only.
	DebugAddr string // REVOKER_DEBUG_ADDR: "" = off

	// Ingress: the HTTP front door for incident automation (SPEC §11).
	IngressAddr        string        // REVOKER_INGRESS_ADDR: "" = off
	IngressTLSCert     string        // REVOKER_INGRESS_TLS_CERT: path
	IngressTLSKey      string        // REVOKER_INGRESS_TLS_KEY: path
	IngressCallersFile string        // REVOKER_INGRESS_CALLERS_FILE: path
	IngressMaxWait     time.Duration // REVOKER_INGRESS_MAX_WAIT: the longest Prefer: wait honoured

	// Logging
	LogLevel  string // REVOKER_LOG_LEVEL: debug, info, warn or error (lower case)
	LogFormat string // REVOKER_LOG_FORMAT: json or console (lower case)

	// unused names the settings given but not used, and so not read
	// (setting.unused).
	unused []string
}

// Section says which settings a command uses; only those are read and
// checked (SPEC §6: "Only the value actually used is checked").
type Section uint

const (
	// NATS: nats-url, nats-creds, nats-tls-ca, nats-tls-cert, nats-tls-key.
	NATS Section = 1 << iota
	// Work: stream, subjects.
	Work
	// Consumers: consumer, create-streams, stream-replicas.
	Consumers
	// DeadLetters: dlq-stream, dlq-subject.
	DeadLetters
	// Outcomes: outcome-stream, outcome-subject.
	Outcomes
	// API: cloudflare-api-token, cloudflare-api-token-file, credentials-file,
	// cloudflare-email, cloudflare-api-key, cloudflare-base-url, http-timeout.
	API
	// Worker: concurrency, retry-initial, retry-max-interval,
	// retry-max-elapsed, max-deliver, ack-wait, not-found, allowed-accounts,
	// shutdown-timeout, verify-interval.
	Worker
	// Rates: rate-limit, ip-rate-limit (what paces any API call, `verify`'s
	// key lists included).
	Rates
	// Server: http-addr, debug-addr, and the ingress-* settings.
	Server
	// Logging: log-level, log-format.
	Logging

	// Streams is every stream and consumer setting.
	Streams = Work | Consumers | DeadLetters | Outcomes
	// All is every section: what `revoker serve` uses.
	All = NATS | Streams | API | Worker | Rates | Server | Logging
)

// The defaults of SPEC §3 and §6.
const (
	DefaultNATSURL          = "nats://127.0.0.1:4222"
	DefaultNATSInboxPrefix  = "_INBOX"
	DefaultStream           = "REVOCATIONS"
	DefaultConsumer         = "revoker"
	DefaultDLQStream        = "REVOCATIONS_DLQ"
	DefaultDLQSubject       = "revoke.dlq"
	DefaultOutcomeStream    = "REVOCATION_OUTCOMES"
	DefaultOutcomeSubject   = "revoke.outcome"
	DefaultBaseURL          = "https://api.cloudflare.com/client/v4"
	DefaultHTTPAddr         = ":8080"
	DefaultIPRateLimit      = 150
	DefaultIngressMaxWait   = time.Minute
	DefaultLogLevel         = "info"
	DefaultLogFormat        = "json"
	DefaultConcurrency      = 16
	DefaultRateLimit        = 4.0
	DefaultMaxDeliver       = 10
	DefaultHTTPTimeout      = 10 * time.Second
	DefaultRetryInitial     = 500 * time.Millisecond
	DefaultRetryMaxInterval = 30 * time.Second
	DefaultRetryMaxElapsed  = 2 * time.Minute
	DefaultAckWait          = 30 * time.Second
	DefaultShutdownTimeout  = 25 * time.Second
	DefaultVerifyInterval   = time.Hour
	DefaultStreamReplicas   = 1

	// MaxConcurrency is the largest REVOKER_CONCURRENCY accepted.
	MaxConcurrency = 1024
	// MaxStreamReplicas is the largest REVOKER_STREAM_REPLICAS accepted:
	// JetStream keeps at most 5 replicas of a stream.
	MaxStreamReplicas = 5
	// MinAckWait is the smallest REVOKER_ACK_WAIT accepted.
	MinAckWait = time.Second
)

// DefaultSubjects returns the default work subjects, highest priority first.
func DefaultSubjects() []string { return []string{"revoke.urgent", "revoke.scheduled"} }

// Default returns the defaults of SPEC §6. No Cloudflare credential is set.
func Default() Config {
	return Config{
		NATSURL:         DefaultNATSURL,
		NATSInboxPrefix: DefaultNATSInboxPrefix,

		Stream:         DefaultStream,
		Subjects:       DefaultSubjects(),
		Consumer:       DefaultConsumer,
		DLQStream:      DefaultDLQStream,
		DLQSubject:     DefaultDLQSubject,
		OutcomeStream:  DefaultOutcomeStream,
		OutcomeSubject: DefaultOutcomeSubject,
		CreateStreams:  true,
		StreamReplicas: DefaultStreamReplicas,

		BaseURL:     DefaultBaseURL,
		HTTPTimeout: DefaultHTTPTimeout,

		Concurrency:      DefaultConcurrency,
		RateLimit:        DefaultRateLimit,
		IPRateLimit:      DefaultIPRateLimit,
		RetryInitial:     DefaultRetryInitial,
		RetryMaxInterval: DefaultRetryMaxInterval,
		RetryMaxElapsed:  DefaultRetryMaxElapsed,
		MaxDeliver:       DefaultMaxDeliver,
		AckWait:          DefaultAckWait,
		ShutdownTimeout:  DefaultShutdownTimeout,
		VerifyInterval:   DefaultVerifyInterval,

		HTTPAddr:       DefaultHTTPAddr,
		IngressMaxWait: DefaultIngressMaxWait,

		LogLevel:  DefaultLogLevel,
		LogFormat: DefaultLogFormat,
	}
}

// Durable returns the durable consumer name for a work subject: the prefix,
// "-", and the subject with every '.' replaced by '_'
// (Consumer "revoker", subject "revoke.urgent" → "revoker-revoke_urgent").
// Load guarantees these names are valid and distinct for the configured
// subjects.
func (c Config) Durable(subject string) string {
	return c.Consumer + "-" + strings.ReplaceAll(subject, ".", "_")
}

// OutcomeEnabled reports whether outcome records are published
// (REVOKER_OUTCOME_SUBJECT is not empty).
func (c Config) OutcomeEnabled() bool { return c.OutcomeSubject != "" }

// HighestPriority returns the highest-priority work subject (what
// `revoker publish --urgent` uses), or "" when there is none.
func (c Config) HighestPriority() string {
	if len(c.Subjects) == 0 {
		return ""
	}
	return c.Subjects[0]
}

// LowestPriority returns the lowest-priority work subject (the default of
// `revoker publish`), or "" when there is none.
func (c Config) LowestPriority() string {
	if len(c.Subjects) == 0 {
		return ""
	}
	return c.Subjects[len(c.Subjects)-1]
}
