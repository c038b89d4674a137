package queue_test

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/zap/zaptest"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// slowPath is a TCP proxy that delays every byte by delay in each
// direction, order kept: a replica with a slower path to the server (in
// another zone, say), or one that stalls for a while.
type slowPath struct {
	ln    net.Listener
	delay atomic.Int64 // ns, each way
	back  atomic.Int64 // ns more, on what the server sends back only
}

func newSlowPath(t testing.TB, target string, delay time.Duration) *slowPath {
	t.Helper()
	p := &slowPath{}
	p.delay.Store(int64(delay))
	p.ln = tcpProxy(t, target,
		func(toServer, fromClient net.Conn) { p.forward(toServer, fromClient, nil) },
		func(toClient, fromServer net.Conn) { p.forward(toClient, fromServer, &p.back) })
	return p
}

func (p *slowPath) URL() string { return "nats://" + p.ln.Addr().String() }

// tcpProxy listens on a loopback port and joins each connection to
// target, copying each way with the function given; everything is closed
// with the test.
func tcpProxy(t testing.TB, target string, up, down func(dst, src net.Conn)) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, s)
			mu.Unlock()
			go up(s, c)
			go down(c, s)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln
}

// forward copies src to dst, each read delivered delay (and more, when
// given) after it came.
func (p *slowPath) forward(dst, src net.Conn, more *atomic.Int64) {
	type chunk struct {
		due  time.Time
		data []byte
	}
	ch := make(chan chunk, 4096)
	go func() {
		for c := range ch {
			if d := time.Until(c.due); d > 0 {
				time.Sleep(d) // the path's latency itself, not a synchronisation
			}
			if _, err := dst.Write(c.data); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			d := p.delay.Load()
			if more != nil {
				d += more.Load()
			}
			ch <- chunk{due: time.Now().Add(time.Duration(d)), data: append([]byte(nil), buf[:n]...)}
		}
		if err != nil {
			close(ch)
			return
		}
	}
}

// TestBudgetSlowPathReplicaCalls: a replica whose path to the NATS server
// takes 20 ms each way, alone on the budget with scheduled work at rate 4,
// calls at the rate (SPEC §9: replicas with a slower path still get their
// share). A slot reserved on arrival at the server's now was already late
// when the write's answer came back, was moved to now, late again: the
// replica never called.
func TestBudgetSlowPathReplicaCalls(t *testing.T) {
	_, api, slow := slowReplicaAtWork(t, 4, 20*time.Millisecond)
	queuetest.Eventually(t, 15*time.Second, "8 calls of the replica with a slow path", func() bool { return api.Count() >= 8 })
	t.Logf("budget: %+v", slow.budget.Stats())
}

// TestBudgetSlowPathHoldsNobodyUp: with a replica on a slow path at work
// on the budget, a replica near the server calls too: moving a late slot
// again and again pushed every sharer's next slot back with it.
func TestBudgetSlowPathHoldsNobodyUp(t *testing.T) {
	srv, api, slow := slowReplicaAtWork(t, 4, 20*time.Millisecond)
	queuetest.Eventually(t, 15*time.Second, "the replica with a slow path at work on the budget", func() bool {
		st := slow.budget.Stats()
		return slow.calls.Load() > 0 || st.Rebooked > 5
	})
	near := newBReplica(t, srv, api, "a", 4, 2)
	near.work(1, 2, keysOf("a", 1000))
	queuetest.Eventually(t, 15*time.Second, "8 calls of the replica near the server", func() bool { return near.calls.Load() >= 8 })
	t.Logf("near %d calls, slow %d; slow budget %+v", near.calls.Load(), slow.calls.Load(), slow.budget.Stats())
}

// TestBudgetSlowPathAtAHighRate: at rate 20 (an interval of 51 ms), a
// replica 80 ms each way from the server calls too: its round trip is
// longer than an interval, and a slot booked at most an interval ahead was
// late on arrival, moved, late again.
func TestBudgetSlowPathAtAHighRate(t *testing.T) {
	_, _, slow := slowReplicaAtWork(t, 20, 80*time.Millisecond)
	queuetest.Eventually(t, 15*time.Second, "4 calls of the replica 160 ms from the server", func() bool { return slow.calls.Load() >= 4 })
	t.Logf("budget: %+v", slow.budget.Stats())
}

// TestBudgetSlowPathGetsItsShare: a replica 20 ms each way from the
// server and one next to it, both with scheduled work on one budget, share
// its slots (SPEC §9: a slower path still gets its fair share). Both woke
// for a slot at the same point before it was due, and the near one's write
// always landed first: the far one got 0 to 2 of 40 calls.
func TestBudgetSlowPathGetsItsShare(t *testing.T) {
	srv, api, slow := slowReplicaAtWork(t, 4, 20*time.Millisecond)
	near := newBReplica(t, srv, api, "a", 4, 2)
	near.work(1, 2, keysOf("a", 1000))
	const calls, least = 40, 6 // a fair share is about 20; noise helps the far one
	queuetest.Eventually(t, 30*time.Second, "40 calls", func() bool { return slow.calls.Load()+near.calls.Load() >= calls })
	n, s := near.calls.Load(), slow.calls.Load()
	t.Logf("near %d calls, far %d; far budget %+v", n, s, slow.budget.Stats())
	if s < least*(n+s)/calls {
		t.Errorf("the far replica made %d of %d calls, want at least %d", s, n+s, least*(n+s)/calls)
	}
}

// TestBudgetFarReplicasUrgentFirst: at rate 20 (an interval of 51 ms), a
// replica 80 ms each way from the server has urgent work while one next
// to the server calls for a scheduled backlog. The far replica's claim of
// its level, written only in the shared entry, lost every compare-and-swap
// to the near one's reservations (each landing within its round trip): no
// urgent call was made in 30 s, and the scheduled calls went on (SPEC §9:
// an urgent event held by any replica is served before newer scheduled
// ones anywhere).
func TestBudgetFarReplicasUrgentFirst(t *testing.T) {
	const rate = 20
	srv := queuetest.Server(t)
	api := cloudflaretest.NewServer()
	t.Cleanup(api.Close)
	path := newSlowPath(t, srv.ClientURL()[len("nats://"):], 80*time.Millisecond)
	far := newBReplicaClock(t, path.URL(), 1, api, "f", rate, 2, nil)
	near := newBReplica(t, srv, api, "a", rate, 2)
	near.work(1, 2, keysOf("a", 1000))
	queuetest.Eventually(t, 15*time.Second, "the near replica calling", func() bool { return near.calls.Load() >= 20 })
	before, start := near.calls.Load(), time.Now()
	far.work(0, 2, keysOf("f", 10))
	queuetest.Eventually(t, 20*time.Second, "10 urgent calls of the far replica", func() bool { return far.calls.Load() >= 10 })
	took, scheduled := time.Since(start), near.calls.Load()-before
	t.Logf("10 urgent calls in %v, %d scheduled calls meanwhile; far budget %+v", took.Round(time.Millisecond), scheduled, far.budget.Stats())
	// Each far reservation takes its round trip (160 ms), so 10 take
	// about 2 s: at rate 20 the scheduled backlog would have had 40 calls.
	// A few slip in while the claim travels, or while every urgent event
	// is in a call and none waits.
	if limit := int64(took.Seconds()*rate) / 4; scheduled > limit {
		t.Errorf("%d scheduled calls while the far replica's urgent events waited, want at most %d", scheduled, limit)
	}
}

// TestBudgetFarClaimKeptWhileEntryBusy: a replica 80 ms each way from the
// server claims the urgent level all along while the shared entry changes
// every 51 ms (a replica of the previous version reserving at rate 20; it
// reads claims in the entry only, where the far one's never lands). The
// claim key was renewed only after the entry's write, whose conflicts
// ended in a backoff growing to 2 s: the key went unrenewed for longer
// than it lives, and a near replica was free to take scheduled slots.
func TestBudgetFarClaimKeptWhileEntryBusy(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 14 s")
	}
	const rate = 20
	srv := queuetest.Server(t)
	_, js := queuetest.Connect(t, srv)
	path := newSlowPath(t, srv.ClientURL()[len("nats://"):], 80*time.Millisecond)
	near := bareBudget(t, srv.ClientURL(), rate)
	far := bareBudget(t, path.URL(), rate)
	reserveNow(t, near, 1) // the bucket and the entry exist
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kv, err := js.KeyValue(ctx, queue.BudgetBucket)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		for ctx.Err() == nil {
			if e, err := kv.Get(ctx, "token_0a1b2c3d"); err == nil {
				next := time.Now().UTC().Add(51 * time.Millisecond).Format(time.RFC3339Nano)
				_, _ = kv.Update(ctx, "token_0a1b2c3d", []byte(`{"next":"`+next+`"}`), e.Revision())
			}
			select {
			case <-ctx.Done():
			case <-time.After(51 * time.Millisecond): // the old replica's rate, not a synchronisation
			}
		}
	})

	far.Claim(0)
	queuetest.Eventually(t, 10*time.Second, "the far replica's claim seen by the near one", func() bool { return !near.Allows(1) })
	free := 0
	for start := time.Now(); time.Since(start) < 14*time.Second; {
		if near.Allows(1) {
			free++
		}
		<-time.After(10 * time.Millisecond) // sampling the near replica's view, not a synchronisation
	}
	t.Logf("far budget %+v", far.Stats())
	if free > 0 {
		t.Errorf("the near replica was free to take scheduled slots in %d checks while the far replica claimed the urgent level", free)
	}
}

// slowReplicaAtWork starts a server, the API stand-in, and a replica each
// way from the server calling for scheduled keys at rate.
func slowReplicaAtWork(t *testing.T, rate float64, each time.Duration) (*server.Server, *cloudflaretest.Server, *bReplica) {
	t.Helper()
	srv := queuetest.Server(t)
	api := cloudflaretest.NewServer()
	t.Cleanup(api.Close)
	path := newSlowPath(t, srv.ClientURL()[len("nats://"):], each)
	slow := newBReplicaClock(t, path.URL(), 1, api, "s", rate, 2, nil)
	slow.work(1, 2, keysOf("s", 1000))
	return srv, api, slow
}

// TestBudgetOneSlowWriteHoldsNobodyUp: a replica's path to the server
// stalls once for 1.2 s, long enough to slow one write of the entry, well
// short of its timeout; then it is fast again. Its slots are not booked
// that far ahead from then on: an urgent event arriving at a replica next
// to the server waits about one interval, not seconds (SPEC §3; §9: a
// slower path holds nobody up).
func TestBudgetOneSlowWriteHoldsNobodyUp(t *testing.T) {
	const rate = 10 // an interval of 100 ms
	srv := queuetest.Server(t)
	path := newSlowPath(t, srv.ClientURL()[len("nats://"):], 0)
	near := bareBudget(t, srv.ClientURL(), rate)
	far := bareBudget(t, path.URL(), rate)
	reserveNow(t, near, 1)
	queuetest.Eventually(t, 10*time.Second, "the far replica watching the entry", func() bool { return far.Stats().Watched >= 1 })

	path.delay.Store(int64(600 * time.Millisecond)) // each way
	reserveNow(t, far, 1)
	path.delay.Store(0)
	queuetest.Eventually(t, 10*time.Second, "the far replica seeing its own write", func() bool { return far.Stats().Watched >= 2 })

	for i := range 3 {
		asked := time.Now()
		s := reserveNow(t, far, 1)
		t.Logf("far replica, slot %d: %v after it asked", i+1, s.Sub(asked).Round(time.Millisecond))
	}
	urgentAt := time.Now()
	wait := reserveNow(t, near, 0).Sub(urgentAt)
	t.Logf("near replica: urgent slot %v after the urgent work came", wait.Round(time.Millisecond))
	// One interval and the far replica's booking ahead (at most one
	// interval), with a wide margin for a loaded machine.
	if limit := 500 * time.Millisecond; wait > limit {
		t.Fatalf("the near replica's urgent call waits %v for a slot, more than %v", wait.Round(time.Millisecond), limit)
	}
}

// bareBudget is a budget at rate on the server at url, without a gate.
func bareBudget(t *testing.T, url string, rate float64) *queue.Budget {
	t.Helper()
	_, js := queuetest.ConnectURL(t, url)
	b, err := queue.NewBudget(js, queue.BudgetConfig{
		ID: func() string { return "token:0a1b2c3d" }, Rate: rate, Create: true, Log: zaptest.NewLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

// reserveNow asks b for a slot at priority p as the gate does, again at
// the time each refusal names, until one is reserved, and returns it.
func reserveNow(t *testing.T, b *queue.Budget, p int) time.Time {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		at, ok, err := b.Reserve(ctx, p)
		cancel()
		if err != nil {
			t.Fatalf("reserve: %v", err)
		}
		if ok {
			return at
		}
		if d := time.Until(at); d > 0 {
			<-time.After(d) // the time the budget names, as the gate's timer would wait
		}
	}
	t.Fatal("no slot reserved in 20 s")
	return time.Time{}
}
