package queue_test

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// TestDialedClientOutlivesALongOutage: a command's connection (the one
// `outcomes --follow` reads through until interrupted) rides out a NATS
// outage however many reconnects it takes, and follows the records stored
// once the server is back. The outage lasts until the client has tried to
// reconnect more often than a bounded client would.
func TestDialedClientOutlivesALongOutage(t *testing.T) {
	o := newOutageServer(t, config.NATS|config.Streams)
	cfg := o.cfg
	// The test's own connection is closed before the outage, so that
	// every connection the port sees then is the command's.
	nc, js := queuetest.Connect(t, o.srv)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := js.CreateStream(ctx, queue.OutcomeStream(cfg.Topology())); err != nil {
		t.Fatal(err)
	}
	c, err := queue.Dial(cfg.Connection(), cfg.Topology(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make(chan string, 4)
	followed := make(chan error, 1)
	go func() {
		followed <- queue.FollowOutcomes(ctx, c.JetStream(), cfg.OutcomeStream, cfg.OutcomeSubject+".a.*", time.Time{}, func(r event.Record) error {
			got <- r.KeyID
			return nil
		}, nil)
	}()
	pub := func(js jetstream.JetStream, key string) {
		t.Helper()
		m := queue.OutcomeMsg(cfg.OutcomeSubject, event.Record{EventID: "e-" + key, AccountID: "a", KeyID: key,
			Outcome: event.Revoked, Stream: cfg.Stream, Sequence: 1})
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	want := func(key string) {
		t.Helper()
		select {
		case k := <-got:
			if k != key {
				t.Fatalf("followed %s, want %s", k, key)
			}
		case err := <-followed:
			t.Fatalf("following ended before record %s: %v", key, err)
		case <-ctx.Done():
			t.Fatalf("no record %s (connection %v)", key, c.JetStream().Conn().Status())
		}
	}
	pub(js, "before")
	want("before")
	nc.Close()

	o.stop()
	// While the server is away, its port answers every connection by
	// closing it: each is one failed reconnect, counted.
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", o.port))
	if err != nil {
		t.Fatal(err)
	}
	var tries atomic.Int32
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			tries.Add(1)
			conn.Close()
		}
	}()
	conn := c.JetStream().Conn()
	queuetest.Eventually(t, 45*time.Second, "ten reconnects refused, or the connection given up", func() bool {
		return tries.Load() >= 10 || conn.IsClosed()
	})
	ln.Close()
	if conn.IsClosed() {
		t.Fatalf("the command's connection was given up after %d reconnects", tries.Load())
	}

	o.start()
	_, js2 := queuetest.Connect(t, o.srv)
	pub(js2, "after")
	want("after")
}
