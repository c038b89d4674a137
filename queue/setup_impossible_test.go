package queue_test

import (
	"context"
	"errors"
	"testing"

	"go.uber.org/zap"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/queue"
)

// A lane's durable consumer that exists as a push consumer (a deliver
// subject) cannot be fetched from: the work is impossible with it, so the
// start must stop (SPEC §3: ErrIncompatible, exit status 2), not retry
// for ever.
func TestEnsureRefusesAPushConsumer(t *testing.T) {
	ctx := context.Background()
	js := setupJS(t)
	cfg := config.Default()
	if _, err := js.CreateStream(ctx, queue.WorkStream(cfg.Topology())); err != nil {
		t.Fatal(err)
	}
	push := queue.LaneConsumer(cfg.Topology(), cfg.Subjects[0])
	push.DeliverSubject = "elsewhere.push"
	push.MaxAckPending = 0
	if _, err := js.CreateOrUpdatePushConsumer(ctx, cfg.Stream, push); err != nil {
		t.Fatal(err)
	}
	err := queue.Ensure(ctx, js, cfg.Topology(), zap.NewNop())
	if !errors.Is(err, queue.ErrIncompatible) {
		t.Fatalf("err = %v, want ErrIncompatible", err)
	}
}

// A lane's consumer that delivers headers only (HeadersOnly) hands the
// worker no event bodies: every event would read as empty. The work is
// impossible with it; the start must stop (SPEC §3).
func TestEnsureRefusesAHeadersOnlyConsumer(t *testing.T) {
	ctx := context.Background()
	js := setupJS(t)
	cfg := config.Default()
	if _, err := js.CreateStream(ctx, queue.WorkStream(cfg.Topology())); err != nil {
		t.Fatal(err)
	}
	hdrs := queue.LaneConsumer(cfg.Topology(), cfg.Subjects[0])
	hdrs.HeadersOnly = true
	if _, err := js.CreateConsumer(ctx, cfg.Stream, hdrs); err != nil {
		t.Fatal(err)
	}
	err := queue.Ensure(ctx, js, cfg.Topology(), zap.NewNop())
	if !errors.Is(err, queue.ErrIncompatible) {
		t.Fatalf("err = %v, want ErrIncompatible", err)
	}
}
