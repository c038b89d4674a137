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

// TestDeadLetterFitsAfterTheLimitIsLowered: SPEC §5, a record always
// fits. An operator lowers the dead-letter stream's message size while
// the worker runs; the record of a large event is then cut to the new
// limit, not refused on every try.
func TestDeadLetterFitsAfterTheLimitIsLowered(t *testing.T) {
	srv := queuetest.Server(t)
	_, js := queuetest.Connect(t, srv)
	ctx := context.Background()
	cfg := jetstream.StreamConfig{Name: "REVOCATIONS_DLQ", Subjects: []string{"revoke.dlq"}}
	if _, err := js.CreateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	r := &queue.Records{JS: js, Log: zap.NewNop(), DLQStream: "REVOCATIONS_DLQ", DLQSubject: "revoke.dlq", Timeout: 5 * time.Second}
	d := event.DeadLetter{Reason: event.InvalidEvent, Detail: "account_id is missing",
		EventID: "REVOCATIONS:1", Stream: "REVOCATIONS", Subject: "revoke.scheduled", Sequence: 1, FailedAt: time.Now()}
	if err := r.DeadLetter(ctx, d, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	cfg.MaxMsgSize = 100 << 10 // lowered by an operator while the worker runs
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	big := []byte(`{"key_id":"k1","reason":"` + strings.Repeat("r", 120<<10) + `"}`)
	d.Sequence, d.EventID = 2, "REVOCATIONS:2"
	for try := 1; try <= 3; try++ {
		if err := r.DeadLetter(ctx, d, big); err != nil {
			t.Errorf("try %d: record of a %d-byte event not stored: %v", try, len(big), err)
		}
	}
}
