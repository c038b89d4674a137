package queue_test

import (
	"encoding/json"
	"errors"
	"testing"

	"go.uber.org/zap"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
)

// TestPublishWithAnIDTaken: publishing under an id that names another
// key's event in the duplicate window is refused (nothing was stored for
// this key); publishing the same event again is an ordinary duplicate.
func TestPublishWithAnIDTaken(t *testing.T) {
	s := newStack(t, nil)
	if err := queue.Ensure(dlqTCtx(t), s.js, s.cfg.Topology(), zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	c, err := queue.Dial(s.cfg.Connection(), s.cfg.Topology(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pub := func(key string) (queue.Published, error) {
		ev := event.Event{AccountID: "acct01", KeyID: key}
		body, _ := json.Marshal(ev)
		return c.Publish(dlqTCtx(t), s.cfg.LowestPriority(), "X", ev, body)
	}
	if _, err := pub("keyA"); err != nil {
		t.Fatal(err)
	}
	if p, err := pub("keyA"); err != nil || !p.Duplicate {
		t.Fatalf("same event again: %+v, %v", p, err)
	}
	if _, err := pub("keyB"); !errors.Is(err, queue.ErrIDTaken) {
		t.Fatalf("another key under a taken id: %v, want ErrIDTaken", err)
	}
}
