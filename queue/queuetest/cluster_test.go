package queuetest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/queue/queuetest"
)

// An R3 stream on the test cluster keeps every message through the loss of
// its leader, a restart of that node and a rolling restart of all three.
func TestClusterKeepsR3StreamThroughFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := queuetest.Cluster(t, 3)
	_, js := queuetest.ConnectURL(t, c.URLs())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := queuetest.Answered(ctx, func(ctx context.Context) error {
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s"}, Replicas: 3})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	published := 0
	publish := func(n int) {
		t.Helper()
		for range n {
			// A publish may land while a leader changes; retry it under
			// the same id so it is stored once.
			id := fmt.Sprint(published)
			deadline := time.Now().Add(20 * time.Second)
			for {
				_, err := js.Publish(ctx, "s", []byte(id), jetstream.WithMsgID(id))
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("publish %s: %v", id, err)
				}
			}
			published++
		}
	}
	count := func() uint64 {
		t.Helper()
		var n uint64
		deadline := time.Now().Add(20 * time.Second)
		for {
			s, err := js.Stream(ctx, "S")
			if err == nil {
				n = s.CachedInfo().State.Msgs
				if n == uint64(published) {
					return n
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("stream holds %d messages of %d (last error %v)", n, published, err)
			}
		}
	}

	publish(50)
	leader := c.WaitStreamLeader("S")
	c.Kill(leader)
	if c.Node(leader) != nil {
		t.Fatal("killed node still running")
	}
	if got := c.WaitStreamLeader("S"); got == leader {
		t.Fatalf("node %d still leads after it was killed", got)
	}
	publish(50)
	count()
	c.Restart(leader)
	c.WaitHealthy()
	count()

	c.RollingRestart(func(int) { publish(10) })
	if got := count(); got != 130 || published != 130 {
		t.Fatalf("stream holds %d messages of %d published, want 130", got, published)
	}
}
