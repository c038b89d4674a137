package queue_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// fitStack is a dead-letter stream whose message limit is a large event's
// whole record plus spare bytes, and the record's parts.
func fitStack(t *testing.T, spare int) (jetstream.JetStream, *queue.Records, event.DeadLetter, []byte) {
	t.Helper()
	srv := queuetest.Server(t)
	_, js := queuetest.Connect(t, srv)
	d := event.DeadLetter{Reason: event.InvalidEvent, Detail: "account_id is missing",
		EventID: "REVOCATIONS:7", Stream: "REVOCATIONS", Subject: "revoke.scheduled", Sequence: 7, FailedAt: time.Now()}
	body := []byte(`{"key_id":"k1","reason":"` + strings.Repeat("r", 80<<10) + `"}`)
	whole := queue.DeadLetterMsg("revoke.dlq", d, body, 0)
	// As written: with the stream it expects.
	size := len(body) + len("NATS/1.0\r\n\r\n") + len(jetstream.ExpectedStreamHeader+": REVOCATIONS_DLQ\r\n")
	for k, vs := range whole.Header {
		for _, v := range vs {
			size += len(k) + len(": \r\n") + len(v)
		}
	}
	if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "REVOCATIONS_DLQ", Subjects: []string{"revoke.dlq"},
		MaxMsgSize: int32(size + spare)}); err != nil {
		t.Fatal(err)
	}
	return js, &queue.Records{JS: js, Log: zap.NewNop(), DLQStream: "REVOCATIONS_DLQ", DLQSubject: "revoke.dlq", Timeout: 5 * time.Second}, d, body
}

func lastDeadLetter(t *testing.T, js jetstream.JetStream) *jetstream.RawStreamMsg {
	t.Helper()
	s, err := js.Stream(t.Context(), "REVOCATIONS_DLQ")
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(t.Context(), "revoke.dlq")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestDeadLetterBodyWholeWhereItFits: SPEC §5, the body byte for byte,
// cut only where body plus headers would exceed the stream's message
// size. A record that fits exactly keeps its body whole.
func TestDeadLetterBodyWholeWhereItFits(t *testing.T) {
	js, r, d, body := fitStack(t, 0)
	if err := r.DeadLetter(t.Context(), d, body); err != nil {
		t.Fatal(err)
	}
	m := lastDeadLetter(t, js)
	if got := m.Header.Get(queue.HeaderBodyTruncated); got != "" || len(m.Data) != len(body) {
		t.Fatalf("record body cut to %d of %d bytes (%s: %q), though the whole record fits the stream's limit",
			len(m.Data), len(body), queue.HeaderBodyTruncated, got)
	}
}

// TestDeadLetterUnderANewIDStillFits: a record planted under the dead
// letter's id makes the worker write its own under a longer one. A record
// that fitted exactly under its own id no longer does whole: it is cut,
// and stored, never refused.
func TestDeadLetterUnderANewIDStillFits(t *testing.T) {
	js, r, d, body := fitStack(t, 0)
	plant := queue.DeadLetterMsg("revoke.dlq", event.DeadLetter{Reason: event.APIRejected, Stream: d.Stream, Sequence: d.Sequence, EventID: "planted"}, []byte(`{}`), 0)
	if _, err := js.PublishMsg(t.Context(), plant); err != nil {
		t.Fatal(err)
	}
	if err := r.DeadLetter(t.Context(), d, body); err != nil {
		t.Fatalf("the record under a new id: %v", err)
	}
	m := lastDeadLetter(t, js)
	if m.Header.Get(queue.HeaderEventID) != d.EventID || m.Header.Get(queue.HeaderBodyTruncated) == "" || len(m.Data) != 64<<10 {
		t.Fatalf("stored %s with a body of %d bytes (%s: %q); want the worker's record, its body cut to 64 KiB",
			m.Header.Get(queue.HeaderEventID), len(m.Data), queue.HeaderBodyTruncated, m.Header.Get(queue.HeaderBodyTruncated))
	}
}
