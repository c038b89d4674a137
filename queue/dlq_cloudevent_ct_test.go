package queue_test

import (
	"strings"
	"testing"
	"time"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
)

// TestDeadLetterKeepsCloudEventContentType: a dead letter keeps the
// original's Content-Type so that a replay is read as the original was (a
// CloudEvent again). A Content-Type the worker read as a CloudEvent must
// still read as one from the record: cut at 256 characters with an
// ellipsis inside a parameter, it no longer parses, and the replay is read as a plain event
// (whose top-level fields are the envelope's, SPEC §5, §14).
func TestDeadLetterKeepsCloudEventContentType(t *testing.T) {
	for name, ct := range map[string]string{
		"long parameter":    "application/cloudevents+json; profile=" + strings.Repeat("p", 300),
		"C1 in a parameter": "application/cloudevents+json; profile=\"a\u0085b\"",
		"bidi in parameter": "application/cloudevents+json; profile=\"a\u202eb\"",
	} {
		t.Run(name, func(t *testing.T) {
			if !event.IsCloudEvent(ct) {
				t.Skipf("the worker does not read %q as a CloudEvent either", ct)
			}
			d := event.DeadLetter{Reason: event.InvalidEvent, Detail: "x", EventID: "e", Stream: "REVOCATIONS",
				Subject: "revoke.scheduled", Sequence: 9, FailedAt: time.Now(), ContentType: ct}
			m := queue.DeadLetterMsg("revoke.dlq", d, []byte(`{}`), 128<<10)
			kept := m.Header.Get(queue.HeaderContentType)
			if !event.IsCloudEvent(kept) {
				t.Fatalf("Content-Type of %d chars kept as %q, which no longer reads as a CloudEvent: a replay is read as a plain event", len(ct), "…"+kept[max(len(kept)-24, 0):])
			}
		})
	}
}
