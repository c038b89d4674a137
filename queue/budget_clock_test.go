package queue

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/throttle"
)

// TestClampState: every value of an entry is bounded by what a replica
// could have written at the entry's server time; values a little beyond
// (a replica's estimate of server time running ahead) are bounded but not
// reported.
func TestClampState(t *testing.T) {
	created := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	const interval = 100 * time.Millisecond
	far := created.AddDate(100, 0, 0)
	tests := []struct {
		name string
		in   budgetState
		want budgetState
		out  []string
	}{
		{"in range",
			budgetState{Next: created.Add(interval), Hold: created.Add(time.Minute), Cause: "429",
				Claims: map[string]budgetClaim{"r": {P: 0, At: created.Add(-time.Second)}}},
			budgetState{Next: created.Add(interval), Hold: created.Add(time.Minute), Cause: "429",
				Claims: map[string]budgetClaim{"r": {P: 0, At: created.Add(-time.Second)}}},
			nil},
		{"claim renewed by this write",
			budgetState{Claims: map[string]budgetClaim{"r": {P: 1, Until: created.Add(claimTTL)}}},
			budgetState{Claims: map[string]budgetClaim{"r": {P: 1, At: created, Until: created.Add(claimTTL)}}},
			nil},
		{"hold years ahead",
			budgetState{Hold: far},
			budgetState{Hold: created.Add(throttle.MaxPause)},
			[]string{"hold"}},
		{"next years ahead",
			budgetState{Next: far},
			budgetState{Next: created.Add(throttle.MaxPause)},
			[]string{"next"}},
		{"spacing beyond the cap",
			budgetState{Spacing: time.Hour},
			budgetState{Spacing: throttle.MaxPause},
			[]string{"spacing"}},
		{"spacing below zero",
			budgetState{Spacing: -time.Second},
			budgetState{},
			[]string{"spacing"}},
		{"estimate a little ahead of the server",
			budgetState{Hold: created.Add(throttle.MaxPause + time.Millisecond),
				Claims: map[string]budgetClaim{"r": {P: 0, At: created.Add(time.Millisecond), Until: created.Add(claimTTL + time.Millisecond)}}},
			budgetState{Hold: created.Add(throttle.MaxPause),
				Claims: map[string]budgetClaim{"r": {P: 0, At: created, Until: created.Add(claimTTL)}}},
			nil},
		{"claim from the future",
			budgetState{Claims: map[string]budgetClaim{"x": {P: -3, At: far, Until: far}}},
			budgetState{Claims: map[string]budgetClaim{"x": {P: 0, At: created, Until: created.Add(claimTTL)}}},
			[]string{"claims"}},
		{"cause not one line",
			budgetState{Cause: "a\nb\u202e"},
			budgetState{Cause: "a b"},
			[]string{"cause"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, out := clampState(tt.in, created, interval)
			if !slices.Equal(out, tt.out) {
				t.Errorf("out of range %v, want %v", out, tt.out)
			}
			if !got.Next.Equal(tt.want.Next) || !got.Hold.Equal(tt.want.Hold) || got.Cause != tt.want.Cause || got.Spacing != tt.want.Spacing || len(got.Claims) != len(tt.want.Claims) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			for o, w := range tt.want.Claims {
				if g := got.Claims[o]; g.P != w.P || !g.At.Equal(w.At) || !g.Until.Equal(w.Until) {
					t.Errorf("claim %s: got %+v, want %+v", o, g, w)
				}
			}
		})
	}
	// A configured rate slower than one call per cap: its next slot, one
	// of its intervals ahead, is what a replica writes, not out of range.
	slow := BudgetInterval(0.001)
	if got, out := clampState(budgetState{Next: created.Add(slow)}, created, slow); !got.Next.Equal(created.Add(slow)) || out != nil {
		t.Errorf("a next slot one interval of a rate of 0.001/s ahead read as %v (out of range %v)", got.Next.Sub(created), out)
	}
	// The input is not changed: it may be a cached entry.
	in := budgetState{Claims: map[string]budgetClaim{"r": {P: 0}}}
	clampState(in, created, interval)
	if !in.Claims["r"].At.IsZero() {
		t.Error("clampState changed its input's claims")
	}
}

// TestClaimLapse: a claim counts claimTTL after the server stored it, or
// until its writer's own estimate, whichever is sooner.
func TestClaimLapse(t *testing.T) {
	at := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	if got := (budgetClaim{At: at}).lapse(); !got.Equal(at.Add(claimTTL)) {
		t.Errorf("lapse %v, want %v", got, at.Add(claimTTL))
	}
	if got := (budgetClaim{At: at, Until: at.Add(time.Second)}).lapse(); !got.Equal(at.Add(time.Second)) {
		t.Errorf("lapse %v, want %v", got, at.Add(time.Second))
	}
}

// TestServerClockOffer: a sample replaces the estimate when it is better,
// allowing for the estimate's age, or when the two disagree beyond their
// errors (a clock was stepped); a worse, consistent one is dropped.
func TestServerClockOffer(t *testing.T) {
	l0 := time.Now()
	s0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	c := &serverClock{now: time.Now}
	c.offer(l0, s0, time.Millisecond)

	c.offer(l0.Add(time.Second), s0.Add(time.Second+3*time.Millisecond), 5*time.Millisecond)
	if got := c.toServer(l0.Add(time.Second)); !got.Equal(s0.Add(time.Second)) {
		t.Errorf("a worse, consistent sample was taken: %v", got.Sub(s0))
	}
	c.offer(l0.Add(2*time.Second), s0.Add(2*time.Second+100*time.Microsecond), 200*time.Microsecond)
	if got := c.toServer(l0.Add(2 * time.Second)); !got.Equal(s0.Add(2*time.Second + 100*time.Microsecond)) {
		t.Errorf("a better sample was dropped: %v", got.Sub(s0))
	}
	c.offer(l0.Add(3*time.Second), s0.Add(3*time.Second+time.Minute), 5*time.Millisecond)
	if got := c.toServer(l0.Add(3 * time.Second)); !got.Equal(s0.Add(3*time.Second + time.Minute)) {
		t.Errorf("a stepped server clock was not followed: %v", got.Sub(s0))
	}
	if got := c.toLocal(c.toServer(l0)); !got.Equal(l0) {
		t.Errorf("toLocal(toServer(l)) = l%+v", got.Sub(l0))
	}
	if !c.toLocal(time.Time{}).IsZero() {
		t.Error("the zero time is not kept zero")
	}
}

// TestServerClockIgnoresWallClock: replicas whose clocks are an hour apart
// read the same server time, to within the round trips.
func TestServerClockIgnoresWallClock(t *testing.T) {
	srv, err := StartServer(&server.Options{Host: "127.0.0.1", Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c := &serverClock{now: time.Now}
	if err := c.sync(ctx, js); err == nil || !strings.Contains(err.Error(), "server time") {
		t.Fatalf("sync without the bucket: %v", err)
	}
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: BudgetBucket}); err != nil {
		t.Fatal(err)
	}
	var clocks []*serverClock
	for _, skew := range []time.Duration{0, time.Hour, -time.Hour} {
		c := &serverClock{now: func() time.Time { return time.Now().Add(skew) }}
		if err := c.sync(ctx, js); err != nil {
			t.Fatal(err)
		}
		clocks = append(clocks, c)
	}
	for _, c := range clocks[1:] {
		a, _ := clocks[0].serverNow()
		b, _ := c.serverNow()
		if d := b.Sub(a); d < -50*time.Millisecond || d > 50*time.Millisecond {
			t.Errorf("server time read %v apart by replicas an hour apart", d)
		}
	}
}

// TestBookingAheadBounded: a slot is booked ahead by the shortest of the
// last writes' round trips, and never further than maxAhead: one write
// answered late (a stall, a process paused for minutes) books nothing far
// ahead, which would hold every sharer.
func TestBookingAheadBounded(t *testing.T) {
	var b Budget
	now := time.Now()
	if got := b.ahead(now, now); !got.Equal(now) {
		t.Fatalf("no write timed yet: booked %v ahead, want 0", got.Sub(now))
	}
	b.timeWrite(6 * time.Minute)
	if got := b.ahead(now, now).Sub(now); got != maxAhead {
		t.Fatalf("after one write answered in 6 minutes: booked %v ahead, want at most %v", got, maxAhead)
	}
	b.timeWrite(30 * time.Millisecond)
	for range writeTrips - 1 {
		b.timeWrite(1200 * time.Millisecond)
	}
	if got := b.ahead(now, now).Sub(now); got != 30*time.Millisecond {
		t.Fatalf("the last writes took 30 ms once and 1.2 s since: booked %v ahead, want 30 ms", got)
	}
	later := now.Add(time.Second)
	if got := b.ahead(later, now); !got.Equal(later) {
		t.Fatalf("a slot already later than the write's answer moved to %v", got.Sub(now))
	}
}
