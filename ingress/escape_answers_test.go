package ingress

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/untrusted"
)

// TestAnswersEscapeUnsafeCharacters: an event's requested_by is free text
// that the worker keeps in its record as it is. The ingress answers
// records as `revoker outcomes --json` prints them, C1 and bidirectional
// controls escaped, so an on-call's `curl` never prints them raw (SPEC
// §10).
func TestAnswersEscapeUnsafeCharacters(t *testing.T) {
	h := newHarness(t)
	body := evBody(tAccount, "bidikey", `"requested_by":"ops \u202egnp.exe\u0085"`)
	r := h.do(h.post(body, hdrs(bearer(tToken), []string{HeaderIdempotencyKey, "bidi-1"})...))
	r.want(t, http.StatusAccepted)

	// The worker's part: the record of the event, requested_by as the
	// event says (as worker.go writes it), then the ack.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := h.js.Consumer(ctx, h.topo.Stream, h.topo.Durable(h.topo.Subjects[len(h.topo.Subjects)-1]))
	if err != nil {
		t.Fatal(err)
	}
	m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	meta, _ := m.Metadata()
	ev, err := event.Decode(m.Data())
	if err != nil {
		t.Fatal(err)
	}
	recs := &queue.Records{JS: h.js, Log: zap.NewNop(), Timeout: 5 * time.Second,
		DLQStream: h.topo.DLQStream, DLQSubject: h.topo.DLQSubject,
		OutcomeStream: h.topo.OutcomeStream, OutcomePrefix: h.topo.OutcomePrefix}
	if _, err := recs.Outcome(ctx, event.Record{
		EventID: m.Headers().Get(jetstream.MsgIDHeader), AccountID: ev.AccountID, KeyID: ev.KeyID,
		Outcome: event.Revoked, Status: 200, CFRay: "8f00-AMS", Attempts: 1, Subject: m.Subject(),
		Sequence: meta.Sequence.Stream, Stream: meta.Stream, RequestedBy: ev.RequestedBy,
		PublishedAt: meta.Timestamp.UTC().Format(time.RFC3339Nano), CompletedAt: time.Now().UTC().Format(time.RFC3339Nano), Worker: "test",
	}); err != nil {
		t.Fatal(err)
	}
	_ = m.Ack()

	for _, path := range []string{r.Header.Get("Location"), "/v1/keys/" + tAccount + "/bidikey"} {
		got := h.do(h.get(path, bearer(tToken)...))
		got.want(t, http.StatusOK)
		if i := strings.IndexFunc(string(got.body), untrusted.Unsafe); i >= 0 {
			t.Errorf("GET %s answered an unsafe character raw at byte %d: %q", path, i, got.body[max(0, i-20):min(len(got.body), i+20)])
		}
	}
}
