package queue_test

import (
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
)

// TestPlantedRecordLogNamesTheEvent: SPEC §13, the trace id goes into
// "every log line about the event". The line Records logs when a record
// planted under the event's dead-letter id is found (and the event's
// record is written again under a new id) is one: it names the event's id
// and trace.
func TestPlantedRecordLogNamesTheEvent(t *testing.T) {
	js, cfg := dlqTSetup(t)
	body := `{"account_id":"a","key_id":"k"}`
	const trace = "4bf92f3577b34da6a3ce929d0e0e4736"
	real := event.DeadLetter{Reason: event.APIRejected, Detail: "HTTP 400: 1234 bad request", Status: 400, Called: true, Attempts: 3,
		EventID: "ev-1", Stream: cfg.Stream, Subject: "revoke.urgent", Sequence: 9, FailedAt: time.Now(), TraceID: trace}
	planted := real
	planted.Attempts, planted.Status, planted.Called = 0, 0, false
	dlqTWrite(t, js, cfg, planted, body)

	core, logs := observer.New(zapcore.InfoLevel)
	recs := &queue.Records{JS: js, Log: zap.New(core), DLQStream: cfg.DLQStream, DLQSubject: cfg.DLQSubject,
		OutcomeStream: cfg.OutcomeStream, OutcomePrefix: cfg.OutcomeSubject, Timeout: 5 * time.Second}
	if err := recs.DeadLetter(dlqTCtx(t), real, []byte(body)); err != nil {
		t.Fatal(err)
	}
	lines := logs.All()
	if len(lines) == 0 {
		t.Fatal("no log line about the planted record")
	}
	for _, l := range lines {
		f := l.ContextMap()
		if f["trace_id"] != trace || f["event_id"] != "ev-1" {
			t.Errorf("log line %q about event ev-1 has trace_id %v and event_id %v, want %s and ev-1 (fields %v)",
				l.Message, f["trace_id"], f["event_id"], trace, f)
		}
	}
}
