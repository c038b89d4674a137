package config

import "time"

// Connection is what a NATS connection needs of the configuration.
type Connection struct {
	URL                           string // one URL or a comma-separated list
	Creds, TLSCA, TLSCert, TLSKey string // paths, "" = none
	// InboxPrefix starts the connection's reply subjects ("" = the
	// client's _INBOX).
	InboxPrefix string
}

// Connection returns the NATS connection settings.
func (c Config) Connection() Connection {
	return Connection{URL: c.NATSURL, Creds: c.NATSCreds, TLSCA: c.NATSTLSCA, TLSCert: c.NATSTLSCert, TLSKey: c.NATSTLSKey,
		InboxPrefix: c.NATSInboxPrefix}
}

// RedactedURL is the URL (list) with passwords and tokens replaced, for
// messages.
func (c Connection) RedactedURL() string { return redactURLList(c.URL) }

// Topology is revoker's part of JetStream: the streams, consumers and
// buckets it binds, and creates when told to.
type Topology struct {
	Stream   string
	Subjects []string // highest priority first
	Durables []string // the durable consumer of each subject
	// DLQStream and DLQSubject take the dead letters.
	DLQStream, DLQSubject string
	// OutcomeStream holds the outcome records, on OutcomePrefix.<account>.<key>;
	// an empty prefix turns them off.
	OutcomeStream, OutcomePrefix string
	Create                       bool // create what is missing
	Replicas                     int  // of what is created
	// AckWait and MaxDeliver are the lane consumers'.
	AckWait    time.Duration
	MaxDeliver int
	// Concurrency is the API calls in flight at most: a lane holds up to
	// twice as many events.
	Concurrency int
}

// Topology returns the JetStream settings.
func (c Config) Topology() Topology {
	t := Topology{
		Stream: c.Stream, Subjects: c.Subjects,
		DLQStream: c.DLQStream, DLQSubject: c.DLQSubject,
		OutcomeStream: c.OutcomeStream, OutcomePrefix: c.OutcomeSubject,
		Create: c.CreateStreams, Replicas: c.StreamReplicas,
		AckWait: c.AckWait, MaxDeliver: c.MaxDeliver, Concurrency: c.Concurrency,
	}
	for _, s := range c.Subjects {
		t.Durables = append(t.Durables, c.Durable(s))
	}
	return t
}

// Durable is the durable consumer of a work subject ("" for another).
func (t Topology) Durable(subject string) string {
	for i, s := range t.Subjects {
		if s == subject {
			return t.Durables[i]
		}
	}
	return ""
}
