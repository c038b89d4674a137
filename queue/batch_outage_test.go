package queue_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestBatchPublishDuringAnOutageIsRefusedNotStoredLater: `publish
// --from-file` keeps its connection through a NATS outage, so an event
// published meanwhile must not wait in the client's buffer to be stored
// once the server is back: the command tells the operator what became of
// each line, and one reported not published must not be stored later
// (the operator would publish it again).
func TestBatchPublishDuringAnOutageIsRefusedNotStoredLater(t *testing.T) {
	o := newOutageServer(t, config.NATS|config.Work)
	cfg := o.cfg
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	nc, js := queuetest.Connect(t, o.srv)
	if _, err := js.CreateStream(ctx, queue.WorkStream(cfg.Topology())); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	c, err := queue.Dial(cfg.Connection(), cfg.Topology(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	subject := cfg.Subjects[len(cfg.Subjects)-1]

	var mu sync.Mutex
	results := map[string]error{}
	b := c.NewBatch(subject, func(p queue.Published, err error) {
		mu.Lock()
		defer mu.Unlock()
		results[p.EventID] = err
	})
	add := func(id, key string) {
		ev := event.Event{AccountID: "acct01", KeyID: key}
		body, _ := json.Marshal(ev)
		b.Add(ctx, id, ev, body)
	}
	add("ev-before", "keyA")
	b.Wait(ctx)
	if err := results["ev-before"]; err != nil {
		t.Fatalf("first publish: %v", err)
	}

	o.stop()
	conn := c.JetStream().Conn()
	queuetest.Eventually(t, 10*time.Second, "the client to see the outage", func() bool { return !conn.IsConnected() })

	add("ev-during", "keyB")
	b.Wait(ctx)
	mu.Lock()
	reported := results["ev-during"]
	mu.Unlock()
	if reported == nil {
		t.Fatalf("the event published during the outage was acknowledged")
	}
	if !queue.Refused(reported) {
		t.Errorf("the publish during the outage failed with %v, which does not prove it was not stored", reported)
	}

	o.start()
	queuetest.Eventually(t, 20*time.Second, "the command's connection back, or given up", func() bool {
		return conn.Status() == nats.CONNECTED || conn.IsClosed()
	})
	if !conn.IsClosed() {
		if err := conn.FlushTimeout(5 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	_, js2 := queuetest.Connect(t, o.srv)
	st, err := js2.Stream(ctx, cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= 5; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		if m.Header.Get(jetstream.MsgIDHeader) == "ev-during" {
			t.Fatalf("event ev-during was reported not published (%v), yet the work stream stored it at sequence %d after the outage", reported, seq)
		}
	}
}
