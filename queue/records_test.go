package queue_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
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
	// Fits its own message, but not a record beside the record's headers.
	body := `{"account_id":"acct01","key_id":"k1","reason":"` + strings.Repeat("r", max-256) + `"}`
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

// TestDeadLetterBodyCutOnlyWhereItMustBe: a record's body is kept whole
// where body and headers fit the dead-letter stream's limit, and cut to
// 64 KiB where they do not and 64 KiB does; only where even that would
// not fit is it cut shorter (SPEC §5). Each record is stored in a stream
// of that limit: the headers are counted as the server counts them.
func TestDeadLetterBodyCutOnlyWhereItMustBe(t *testing.T) {
	srv := queuetest.Server(t)
	_, js := queuetest.Connect(t, srv)
	// Headers near their longest: a detail of 1,024 four-byte characters.
	long := event.DeadLetter{Reason: event.APIRejected, Detail: strings.Repeat("\U0001F511", 1024), Called: true, Status: 400,
		Attempts: 1, EventID: strings.Repeat("é", 256), Stream: "REVOCATIONS", Subject: "revoke.scheduled", Sequence: 7, FailedAt: time.Now()}
	body := []byte(`{"account_id":"a","key_id":"k","reason":"` + strings.Repeat("r", 97<<10) + `"}`)
	for i, tc := range []struct {
		name   string
		limit  int
		keep   int
		marked bool
	}{
		// Its headers take about 5 KiB: 6 KiB more than the body is room.
		{"fits whole", len(body) + 6<<10, len(body), false},
		{"cut to 64 KiB", 70 << 10, 64 << 10, true},
		{"cut shorter only where 64 KiB does not fit", 66 << 10, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			subject := fmt.Sprintf("dlq.%d", i)
			if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: fmt.Sprintf("DLQ%d", i),
				Subjects: []string{subject}, MaxMsgSize: int32(tc.limit)}); err != nil {
				t.Fatal(err)
			}
			m := queue.DeadLetterMsg(subject, long, body, tc.limit)
			if got := m.Header.Get(queue.HeaderBodyTruncated) != ""; got != tc.marked {
				t.Errorf("marked cut: %v, want %v", got, tc.marked)
			}
			switch {
			case tc.keep > 0 && len(m.Data) != tc.keep:
				t.Errorf("body kept %d bytes, want %d", len(m.Data), tc.keep)
			case tc.keep == 0 && (len(m.Data) >= 64<<10 || len(m.Data) < 60<<10):
				t.Errorf("body kept %d bytes, want just under 64 KiB", len(m.Data))
			}
			if _, err := js.PublishMsg(context.Background(), m); err != nil {
				t.Fatalf("the record does not fit its stream: %v", err)
			}
		})
	}
}

// TestRecordsCountCharacters: header values and the records' event id are
// bounded in characters (SPEC §5: "at most 256 characters (the detail at
// most 1024)"): an id of 200 two-byte characters is kept whole, as is a
// detail of 615 characters; longer ones are cut to the limit, the
// ellipsis one of them, and a reader cuts its own id alike.
func TestRecordsCountCharacters(t *testing.T) {
	id := strings.Repeat("é", 200)
	detail := "HTTP 400: 1234 " + strings.Repeat("é", 600)
	d := event.DeadLetter{Reason: event.APIRejected, Detail: detail, Called: true, Status: 400, Attempts: 1,
		EventID: id, Stream: "REVOCATIONS", Subject: "revoke.scheduled", Sequence: 7, FailedAt: time.Now()}
	dl := queue.DeadLetterMsg("revoke.dlq", d, []byte("{}"), 0)
	if got := dl.Header.Get(queue.HeaderDetail); got != detail {
		t.Errorf("Revoker-Detail kept %d of %d characters", utf8.RuneCountInString(got), utf8.RuneCountInString(detail))
	}
	if got := dl.Header.Get(queue.HeaderEventID); got != id {
		t.Errorf("dead letter's Revoker-Event-Id kept %d of 200 characters", utf8.RuneCountInString(got))
	}
	rec := event.Record{EventID: id, AccountID: "a", KeyID: "k", Outcome: event.Revoked}
	if got := queue.OutcomeMsg("revoke.outcome", rec).Header.Get(queue.HeaderEventID); got != id {
		t.Errorf("outcome's Revoker-Event-Id kept %d of 200 characters", utf8.RuneCountInString(got))
	}

	d.EventID = strings.Repeat("é", 300)
	got := queue.DeadLetterMsg("revoke.dlq", d, []byte("{}"), 0).Header.Get(queue.HeaderEventID)
	if want := strings.Repeat("é", 255) + "…"; got != want {
		t.Errorf("a 300-character id kept as %d characters, want 255 and the ellipsis", utf8.RuneCountInString(got))
	}
	p := queue.Published{AccountID: "a", KeyID: "k", Stream: "REVOCATIONS", Sequence: 7, EventID: d.EventID}
	if !p.Answers(event.Record{EventID: got, AccountID: "a", KeyID: "k", Stream: "REVOCATIONS", Sequence: 7, Outcome: event.Revoked}) {
		t.Error("the record of an event with a long id does not answer its publisher")
	}
}
