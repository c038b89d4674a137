package queue_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"github.com/revoker/revoker/queue"
)

// TestOversizedEventIsDeadLettered: on a work stream created without the
// 128 KiB limit, an event near the server's payload limit cannot have its
// whole body in a dead-letter record. The record is written all the same,
// with the body cut to 64 KiB and its size and digest kept, so the event
// is not given back for ever.
func TestOversizedEventIsDeadLettered(t *testing.T) {
	s := newStack(t, nil)
	ctx := context.Background()
	ws := queue.WorkStream(s.cfg.Topology())
	ws.MaxMsgSize = -1 // as an operator may have created it
	if _, err := s.js.CreateStream(ctx, ws); err != nil {
		t.Fatal(err)
	}
	s.start()
	max := int(s.nc.MaxPayload())
	body := `{"account_id":"acct01","key_id":"k1","reason":"` + strings.Repeat("r", max-2048) + `"}`
	s.publish(s.cfg.LowestPriority(), body, "big-1")
	s.waitFor("the record written", func() bool { return s.count(s.cfg.DLQStream) == 1 })
	s.waitFor("the original removed", func() bool { return s.count(s.cfg.Stream) == 0 })
	rec := s.msgs(s.cfg.DLQStream)[0]
	sum := sha256.Sum256([]byte(body))
	want := fmt.Sprintf("%d sha256:%s", len(body), hex.EncodeToString(sum[:]))
	if got := rec.Header.Get(queue.HeaderBodyTruncated); got != want {
		t.Fatalf("%s = %q, want %q", queue.HeaderBodyTruncated, got, want)
	}
	if len(rec.Data) != 64<<10 || string(rec.Data) != body[:64<<10] {
		t.Fatalf("record body is %d bytes, want the first 64 KiB of the event", len(rec.Data))
	}
	if rec.Header.Get(queue.HeaderReason) != "invalid_event" {
		t.Fatalf("reason %q", rec.Header.Get(queue.HeaderReason))
	}
}

// TestWorkStreamRefusesOversizedEvents: the work stream revoker creates
// refuses, at publish time, an event too large to be valid.
func TestWorkStreamRefusesOversizedEvents(t *testing.T) {
	s := newStack(t, nil)
	s.start()
	_, err := s.js.Publish(context.Background(), s.cfg.LowestPriority(), make([]byte, queue.MaxEventMsg+1))
	if err == nil {
		t.Fatal("a message over the work stream's limit was stored")
	}
}
