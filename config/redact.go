package config

import (
	"encoding/json"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Redacted returns a copy that is safe to log or print: the API token and
// API key are replaced by "[redacted]" when set, and the user:password part
// of the NATS and Cloudflare URLs likewise. Never use the copy to connect.
func (c Config) Redacted() Config {
	r := c
	r.NATSURL = redactURLList(c.NATSURL)
	r.BaseURL = redactURL(c.BaseURL)
	r.APIToken = redactSecret(c.APIToken)
	r.APIKey = redactSecret(c.APIKey)
	r.Subjects = slices.Clone(c.Subjects)
	r.AllowedAccounts = slices.Clone(c.AllowedAccounts)
	return r
}

func redactSecret(s string) string {
	if s == "" {
		return ""
	}
	return redactedText
}

// LogFields returns the redacted configuration as fields for a structured
// logger, keyed by flag name ("nats-url", "rate-limit", ...). Durations are
// given in Go syntax ("30s"), lists as []string, secrets as "[redacted]"
// when set and "" when not; "cloudflare-auth" says which credential is in
// use ("token", "token-file", "email-key" or "").
func (c Config) LogFields() map[string]any {
	r := c.Redacted()
	accounts := r.AllowedAccounts
	if accounts == nil {
		accounts = []string{}
	}
	return map[string]any{
		"nats-url":          r.NATSURL,
		"nats-creds":        r.NATSCreds,
		"nats-tls-ca":       r.NATSTLSCA,
		"nats-tls-cert":     r.NATSTLSCert,
		"nats-tls-key":      r.NATSTLSKey,
		"nats-inbox-prefix": r.NATSInboxPrefix,

		"stream":          r.Stream,
		"subjects":        r.Subjects,
		"consumer":        r.Consumer,
		"dlq-stream":      r.DLQStream,
		"dlq-subject":     r.DLQSubject,
		"outcome-stream":  r.OutcomeStream,
		"outcome-subject": r.OutcomeSubject,
		"create-streams":  r.CreateStreams,
		"stream-replicas": r.StreamReplicas,

		"cloudflare-auth":           c.authMode(),
		"cloudflare-api-token":      r.APIToken,
		"cloudflare-api-token-file": r.APITokenFile,
		"credentials-file":          r.CredentialsFile,
		"cloudflare-email":          r.Email,
		"cloudflare-api-key":        r.APIKey,
		"cloudflare-base-url":       r.BaseURL,
		"http-timeout":              r.HTTPTimeout.String(),

		"concurrency":        r.Concurrency,
		"rate-limit":         r.RateLimit,
		"ip-rate-limit":      r.IPRateLimit,
		"retry-initial":      r.RetryInitial.String(),
		"retry-max-interval": r.RetryMaxInterval.String(),
		"retry-max-elapsed":  r.RetryMaxElapsed.String(),
		"max-deliver":        r.MaxDeliver,
		"ack-wait":           r.AckWait.String(),
		"not-found":          notFoundText(r.NotFoundDeadLetter),
		"allowed-accounts":   accounts,
		"shutdown-timeout":   r.ShutdownTimeout.String(),
		"verify-interval":    r.VerifyInterval.String(),

		"http-addr":  r.HTTPAddr,
		"debug-addr": r.DebugAddr,

		"ingress-addr":         r.IngressAddr,
		"ingress-tls-cert":     r.IngressTLSCert,
		"ingress-tls-key":      r.IngressTLSKey,
		"ingress-callers-file": r.IngressCallersFile,
		"ingress-max-wait":     r.IngressMaxWait.String(),

		"log-level":  r.LogLevel,
		"log-format": r.LogFormat,
	}
}

// authMode names the Cloudflare credential in use.
func (c Config) authMode() string {
	switch {
	case c.CredentialsFile != "":
		return "credentials-file"
	case c.APIToken != "":
		return "token"
	case c.APITokenFile != "":
		return "token-file"
	case c.Email != "" || c.APIKey != "":
		return "email-key"
	}
	return ""
}

// String returns the redacted configuration on one line, as
// key=value pairs sorted by key (see LogFields). fmt uses it for %v and %s,
// so printing a Config never shows a secret.
func (c Config) String() string {
	fields := c.LogFields()
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("config{")
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k)
		b.WriteByte('=')
		switch v := fields[k].(type) {
		case string:
			b.WriteString(strconv.Quote(v))
		case []string:
			b.WriteByte('[')
			for j, s := range v {
				if j > 0 {
					b.WriteByte(',')
				}
				b.WriteString(strconv.Quote(s))
			}
			b.WriteByte(']')
		case bool:
			b.WriteString(strconv.FormatBool(v))
		case int:
			b.WriteString(strconv.Itoa(v))
		case float64:
			b.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
		}
	}
	b.WriteByte('}')
	return b.String()
}

// GoString makes %#v redact too.
func (c Config) GoString() string { return c.String() }

// MarshalJSON encodes the redacted configuration (LogFields), so that a
// Config handed to a JSON encoder or a reflecting logger never shows a
// secret.
func (c Config) MarshalJSON() ([]byte, error) { return json.Marshal(c.LogFields()) }
