package queue

import (
	"errors"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestBudgetTroublesAlternatingSaidOnce: during one outage the
// reservations fail in turn with two causes (the write, then the read);
// each is logged once until the budget answers again, then again once.
// Keeping only the last cause, a loaded CI run logged each twice
// (TestBudgetOutageLogsEachCauseOnce).
func TestBudgetTroublesAlternatingSaidOnce(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	b := &Budget{log: zap.New(core)}
	write, read := errors.New("write budget: context deadline exceeded"), errors.New("read budget: context deadline exceeded")
	for range 3 {
		_ = b.failed(write)
		_ = b.failed(read)
	}
	if n := logs.Len(); n != 2 {
		t.Fatalf("%d warnings for two causes taking turns, want 2", n)
	}
	b.ok()
	_ = b.failed(write)
	if n := logs.Len(); n != 3 {
		t.Fatalf("%d warnings after the budget answered and failed again, want 3", n)
	}
}
