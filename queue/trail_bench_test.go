package queue_test

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// BenchmarkKeyLookup: looking one key up in an outcome stream (file
// storage) of 10k, 100k and 1M records must cost the same whatever the
// size. The trail holds n/3 keys with three records each, a key's records
// n/3 apart (the first, the middle and the last third of the stream: the
// spread that would show a scan), and one key with a single record in the
// middle. Run:
//
//	go test -run '^$' -bench KeyLookup -benchtime 2s ./queue/
func BenchmarkKeyLookup(b *testing.B) {
	b.Logf("%d cores (GOMAXPROCS %d)", runtime.NumCPU(), runtime.GOMAXPROCS(0))
	for _, n := range []int{10_000, 100_000, 1_000_000} {
		b.Run("records="+strconv.Itoa(n), func(b *testing.B) {
			srv, _, js := queuetest.JetStream(b)
			cfg := config.Default()
			cfg.NATSURL = srv.ClientURL()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			if _, err := js.CreateStream(ctx, queue.OutcomeStream(cfg.Topology())); err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			trailFill(b, js, cfg, n)
			b.Logf("filled %d records in %s", n, time.Since(start).Round(time.Millisecond))

			c, err := queue.Dial(cfg.Connection(), cfg.Topology(), nil)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			// key 0's last record opens the last third of the stream.
			last := queue.Published{AccountID: "acct", KeyID: "k0", Stream: cfg.Stream,
				Sequence: uint64(2*(n/3)) + 1, Duplicate: true}

			b.Run("KeyOutcomes/3", func(b *testing.B) {
				for range b.N {
					recs, err := queue.KeyOutcomes(ctx, js, cfg.OutcomeStream, cfg.OutcomeSubject, "acct", "k0", nil)
					if err != nil || len(recs) != 3 {
						b.Fatalf("%d records, %v", len(recs), err)
					}
				}
			})
			b.Run("KeyOutcomes/1", func(b *testing.B) {
				for range b.N {
					recs, err := queue.KeyOutcomes(ctx, js, cfg.OutcomeStream, cfg.OutcomeSubject, "acct", "solo", nil)
					if err != nil || len(recs) != 1 {
						b.Fatalf("%d records, %v", len(recs), err)
					}
				}
			})
			b.Run("Recorded", func(b *testing.B) {
				for range b.N {
					rec, ok, err := c.Recorded(ctx, last)
					if err != nil || !ok || rec.Sequence != last.Sequence {
						b.Fatalf("%+v %v %v", rec, ok, err)
					}
				}
			})
			// What `revoker outcomes --key` calls: an ordered consumer on
			// the key's subject.
			b.Run("EachOutcome/3", func(b *testing.B) {
				for range b.N {
					got := 0
					err := queue.EachOutcome(ctx, js, cfg.OutcomeStream, queue.OutcomeSubject(cfg.OutcomeSubject, "acct", "k0"), time.Time{},
						func(event.Record) error { got++; return nil }, nil)
					if err != nil || got != 3 {
						b.Fatalf("%d records, %v", got, err)
					}
				}
			})
		})
	}
}

// trailFill stores n outcome records with async publishes: record i of the
// first 3*(n/3) is of key k<i mod n/3>, with sequence i+1; one record of
// key solo in the middle makes up the count.
func trailFill(b *testing.B, js0 jetstream.JetStream, cfg config.Config, n int) {
	b.Helper()
	js, err := jetstream.New(js0.Conn(), jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		b.Fatal(err)
	}
	keys := n / 3
	pub := func(key string, seq uint64) {
		rec := event.Record{EventID: fmt.Sprintf("ev-%d", seq), AccountID: "acct", KeyID: key, Outcome: event.Revoked,
			Status: 200, CFRay: "8f00000000000000-AMS", Attempts: 1, Subject: "revoke.scheduled", Sequence: seq, Stream: cfg.Stream,
			PublishedAt: "2025-01-01T00:00:00Z", CompletedAt: "2025-01-01T00:00:01Z", Worker: "bench"}
		body, err := json.Marshal(rec)
		if err != nil {
			b.Fatal(err)
		}
		m := nats.NewMsg(queue.OutcomeSubject(cfg.OutcomeSubject, rec.AccountID, rec.KeyID))
		m.Data = body
		// A slow server (under -race) stalls the window; wait for it.
		if _, err := js.PublishMsgAsync(m, jetstream.WithStallWait(time.Minute)); err != nil {
			b.Fatal(err)
		}
	}
	for i := range 3 * keys {
		if i == n/2 {
			pub("solo", uint64(n+1))
		}
		pub("k"+strconv.Itoa(i%keys), uint64(i+1))
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		b.Fatal("publish acks did not arrive")
	}
	s, err := js.Stream(context.Background(), cfg.OutcomeStream)
	if err != nil {
		b.Fatal(err)
	}
	if got := s.CachedInfo().State.Msgs; got != uint64(3*keys+1) {
		b.Fatalf("stream holds %d records, want %d", got, 3*keys+1)
	}
}
