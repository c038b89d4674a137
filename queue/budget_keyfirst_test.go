package queue_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// dropPath is a TCP proxy that, once armed, loses the client's publishes
// of claim-key puts (PUB, no headers; deletes are HPUB): a put that fails
// (a request lost in a leader change, say) while the entry's writes pass.
type dropPath struct {
	ln      net.Listener
	armed   atomic.Bool
	dropped atomic.Int64
}

func newDropPath(t *testing.T, target string) *dropPath {
	p := &dropPath{}
	p.ln = tcpProxy(t, target, p.filter, func(dst, src net.Conn) { _, _ = io.Copy(dst, src) })
	return p
}

func (p *dropPath) URL() string { return "nats://" + p.ln.Addr().String() }

func (p *dropPath) filter(dst, src net.Conn) {
	r := bufio.NewReader(src)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		out := []byte(line)
		f := strings.Fields(line)
		if len(f) >= 3 && (f[0] == "PUB" || f[0] == "HPUB") {
			n, _ := strconv.Atoi(f[len(f)-1])
			body := make([]byte, n+2)
			if _, err := io.ReadFull(r, body); err != nil {
				return
			}
			if f[0] == "PUB" && strings.Contains(f[1], ".claim.") && p.armed.Load() {
				p.dropped.Add(1)
				continue
			}
			out = append(out, body...)
		}
		if _, err := dst.Write(out); err != nil {
			return
		}
	}
}

// TestBudgetFailedClaimPutHidesEntryClaim: replica A claims the urgent
// level, ends it, and claims it again within claimTTL. The new put of its
// claim key fails (lost), while its entry write carries the claim. The
// key's delete marker, written less than claimTTL ago, speaks for A over
// the entry: B reserves a scheduled slot while A's urgent work waits
// (SPEC §3). Before cf2cb6c the entry's claim held B.
func TestBudgetFailedClaimPutHidesEntryClaim(t *testing.T) {
	srv, path, a, b, kv := claimPutsLost(t)
	live := entryClaims(t, srv.ClientURL())

	a.Claim(0)
	queuetest.Eventually(t, 5*time.Second, "A's claim seen by B", func() bool { return !b.Allows(1) })
	a.Claim(-1)
	queuetest.Eventually(t, 5*time.Second, "A's claim ended", func() bool {
		return live() == 0 && liveClaimKeys(t, kv) == 0 && b.Allows(1)
	})
	path.armed.Store(true)
	a.Claim(0) // urgent work waits at A again
	queuetest.Eventually(t, 5*time.Second, "A's claim in the entry", func() bool { return live() == 1 })
	armedAt := time.Now()
	t.Logf("claim puts lost: %d", path.dropped.Load())

	// B's scheduled work: a slot reserved now is a scheduled call started
	// while A's urgent claim stands in the entry B wrote over.
	noScheduledSlot(t, b, kv, armedAt)
}

// TestBudgetFailedClaimPutHidesRaisedClaim: A claims level 1 (its key
// says 1), then urgent work comes: Claim(0). The put of 0 in its key is
// lost, the entry says 0; the key's older 1 speaks for A, and B starts a
// level-1 call while A's urgent work waits. No quick end of a claim is
// needed.
func TestBudgetFailedClaimPutHidesRaisedClaim(t *testing.T) {
	_, path, a, b, kv := claimPutsLost(t)
	a.Claim(1)
	queuetest.Eventually(t, 5*time.Second, "A's level-1 claim seen by B", func() bool { return !b.Allows(2) })
	path.armed.Store(true)
	a.Claim(0)
	queuetest.Eventually(t, 5*time.Second, "A's urgent claim in the entry", func() bool {
		e, err := kv.Get(context.Background(), "token_0a1b2c3d")
		return err == nil && strings.Contains(string(e.Value()), `"p":0`)
	})
	armedAt := time.Now()
	noScheduledSlot(t, b, kv, armedAt)
}

// claimPutsLost is replica A, whose path drops its claim-key puts once
// armed, and replica B next to the server, both with a rate of 4 and the
// entry made; and the bucket.
func claimPutsLost(t *testing.T) (*server.Server, *dropPath, *queue.Budget, *queue.Budget, jetstream.KeyValue) {
	t.Helper()
	srv := queuetest.Server(t)
	path := newDropPath(t, srv.ClientURL()[len("nats://"):])
	a := bareBudget(t, path.URL(), 4)
	b := bareBudget(t, srv.ClientURL(), 4)
	reserveNow(t, a, 1)
	reserveNow(t, b, 1)
	_, js := queuetest.Connect(t, srv)
	kv, err := js.KeyValue(context.Background(), queue.BudgetBucket)
	if err != nil {
		t.Fatal(err)
	}
	return srv, path, a, b, kv
}

// noScheduledSlot fails t if b reserves a level-1 slot within 2 s of
// since, asking again when the budget says, as the gate's timer would.
func noScheduledSlot(t *testing.T, b *queue.Budget, kv jetstream.KeyValue, since time.Time) {
	t.Helper()
	for time.Since(since) < 2*time.Second {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		at, ok, err := b.Reserve(ctx, 1)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			e, _ := kv.Get(context.Background(), "token_0a1b2c3d")
			t.Fatalf("B reserved a level-1 slot %v after A's urgent claim reached the entry (entry now: %s)",
				time.Since(since).Round(time.Millisecond), e.Value())
		}
		if d := time.Until(at); d > 0 {
			<-time.After(d) // the time the budget names, not a synchronisation
		}
	}
}
