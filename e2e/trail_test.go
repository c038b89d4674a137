package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/revoker/revoker/cloudflare/cloudflaretest"
	"github.com/revoker/revoker/event"
)

// The audit trail under faults (SPEC §4 "A revocation happens once", §5a):
// whatever is killed mid-run, every event ends with exactly one outcome
// record, and a key the API confirmed is recorded revoked with the CF-Ray
// of the confirming call.

const (
	outcomeStream = "REVOCATION_OUTCOMES"
	workStream    = "REVOCATIONS"
	// trailConcurrency is the worker's REVOKER_CONCURRENCY in these tests:
	// at most that many calls are in flight when something is killed.
	trailConcurrency = 16
)

// trailEnv runs the worker flat out (no rate limit) against a stand-in
// with latency, so that calls are in flight whenever a fault lands.
var trailEnv = []string{
	"REVOKER_RATE_LIMIT=0",
	"REVOKER_IP_RATE_LIMIT=0",
	"REVOKER_CONCURRENCY=" + strconv.Itoa(trailConcurrency),
}

// rays maps the stand-in's request log to the CF-Ray of each answer. The
// stand-in numbers its CF-Rays from a random start, one per request in the
// order of its log (both are taken under one lock), so a probe made before
// anything else reads the start.
type rays struct{ base uint64 }

// probeRays makes the stand-in's first request and reads its CF-Ray.
func probeRays(t *testing.T, api *cloudflaretest.Server) rays {
	t.Helper()
	if api.Count() != 0 {
		t.Fatal("probe the stand-in before any other request")
	}
	resp, err := http.Get(api.URL + "/probe")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	hex, _, ok := strings.Cut(resp.Header.Get("Cf-Ray"), "-")
	if !ok {
		t.Fatalf("stand-in CF-Ray %q: want <hex>-<colo>", resp.Header.Get("Cf-Ray"))
	}
	base, err := strconv.ParseUint(hex, 16, 64)
	if err != nil {
		t.Fatalf("stand-in CF-Ray %q: %v", resp.Header.Get("Cf-Ray"), err)
	}
	return rays{base: base}
}

// of is the CF-Ray of the i-th request of the stand-in's log.
func (r rays) of(i int) string { return fmt.Sprintf("%016x-SJC", r.base+uint64(i)) }

// readTrail reads every record of the outcome stream.
func readTrail(t *testing.T, js jetstream.JetStream) []event.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Read right after nodes restart: a cluster just healed may not
	// answer at once, so each step is tried again, as the fetches are.
	var (
		s    jetstream.Stream
		cons jetstream.Consumer
		err  error
	)
	waitUntil(t, 60*time.Second, "the outcome stream's info", func() bool {
		s, err = js.Stream(ctx, outcomeStream)
		return err == nil
	})
	total := s.CachedInfo().State.Msgs
	waitUntil(t, 60*time.Second, "a consumer reading the outcome stream", func() bool {
		cons, err = s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
		return err == nil
	})
	var out []event.Record
	for uint64(len(out)) < total {
		batch, err := cons.Fetch(int(min(total-uint64(len(out)), 500)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			// A cluster just healed may not answer at once: try again
			// until the deadline rather than lose the figures.
			if ctx.Err() != nil {
				t.Fatalf("read outcome stream: %d of %d: %v", len(out), total, err)
			}
			t.Logf("read outcome stream: %d of %d: %v; retrying", len(out), total, err)
			time.Sleep(200 * time.Millisecond) // a pause between attempts, not a synchronisation
			continue
		}
		n := 0
		for m := range batch.Messages() {
			n++
			var rec event.Record
			if err := json.Unmarshal(m.Data(), &rec); err != nil {
				t.Fatalf("outcome record %q: %v", m.Data(), err)
			}
			out = append(out, rec)
		}
		if err := batch.Error(); err != nil && n == 0 {
			if ctx.Err() != nil {
				t.Fatalf("read outcome stream: %d of %d: %v", len(out), total, err)
			}
			t.Logf("read outcome stream: %d of %d: %v; retrying", len(out), total, err)
			time.Sleep(200 * time.Millisecond) // a pause between attempts, not a synchronisation
		}
	}
	return out
}

// streamMsgs is the number of messages in stream, -1 when it cannot be read.
func streamMsgs(js jetstream.JetStream, stream string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return -1
	}
	return int(s.CachedInfo().State.Msgs)
}

// waitSettled waits until every event has left the work stream (each is
// acked only once its record is stored) and the trail holds a record for
// each.
func waitSettled(t *testing.T, js jetstream.JetStream, events int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		work, records := streamMsgs(js, workStream), streamMsgs(js, outcomeStream)
		if work == 0 && records >= events {
			return
		}
		if time.Now().After(deadline) {
			// Say where it stands, so that a failure can be read: events
			// left in the stream, records missing, or the test's own view.
			t.Fatalf("timed out after %v waiting for every event settled: %d events in %s (-1: not readable), %d of %d records; %s",
				within, work, workStream, records, events, consumerStates(js))
		}
		time.Sleep(50 * time.Millisecond) // polling a condition with a deadline
	}
}

// consumerStates describes the work stream's consumers: what each has
// pending, in hand and acked, and the stream's first and last sequence.
func consumerStates(js jetstream.JetStream) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, workStream)
	if err != nil {
		return "stream not readable: " + err.Error()
	}
	st := s.CachedInfo().State
	out := fmt.Sprintf("stream sequences %d-%d", st.FirstSeq, st.LastSeq)
	for name := range s.ConsumerNames(ctx).Name() {
		c, err := s.Consumer(ctx, name)
		if err != nil {
			out += fmt.Sprintf("; %s: %v", name, err)
			continue
		}
		ci := c.CachedInfo()
		out += fmt.Sprintf("; %s: %d pending, %d in hand, %d redelivered, ack floor %d, delivered %d",
			name, ci.NumPending, ci.NumAckPending, ci.NumRedelivered, ci.AckFloor.Stream, ci.Delivered.Stream)
	}
	return out
}

// trailFigures are what checkTrail found.
type trailFigures struct {
	events, records, calls int
	// duplicates are DELETEs for a key after its first 2xx.
	duplicates int
	// unheard are keys whose first 2xx the worker never learnt of: it was
	// killed with the answer in flight, so a later delivery called again
	// and heard 404. No worker can record a confirmation it never received.
	unheard []string
}

func (f trailFigures) String() string {
	return fmt.Sprintf("%d events, %d records, %d API calls, %d duplicate DELETEs, %d confirmations lost in flight",
		f.events, f.records, f.calls, f.duplicates, len(f.unheard))
}

// checkTrail asserts the audit trail against the stand-in's log: one
// record per event, and each record true. maxUnheard bounds the calls that
// can have been in flight at the faults.
func checkTrail(t *testing.T, api *cloudflaretest.Server, r rays, js jetstream.JetStream, ks []string, maxUnheard int) trailFigures {
	t.Helper()
	recs := readTrail(t, js)
	f := trailFigures{events: len(ks), records: len(recs)}

	// Exactly one record per event, by its position in the work stream.
	type pos struct {
		stream string
		seq    uint64
	}
	perPos := map[pos]int{}
	perKey := map[string]event.Record{}
	for _, rec := range recs {
		p := pos{rec.Stream, rec.Sequence}
		perPos[p]++
		if perPos[p] == 2 {
			t.Errorf("event %s:%d (key %s) has more than one record", p.stream, p.seq, rec.KeyID)
		}
		if rec.AccountID != account {
			t.Errorf("record of %s:%d names account %q", p.stream, p.seq, rec.AccountID)
		}
		perKey[rec.KeyID] = rec
	}
	if len(perPos) != len(ks) {
		t.Errorf("records for %d events, want %d", len(perPos), len(ks))
	}
	for _, k := range ks {
		if _, ok := perKey[k]; !ok {
			t.Errorf("key %s has no record", k)
		}
	}

	// What the API did for each key: its calls, and the first 2xx.
	reqs := api.Requests()
	calls := map[string]int{}
	first2xx := map[string]int{} // request index
	after := map[string]int{}    // calls after the first 2xx
	for i, q := range reqs {
		if q.Method != http.MethodDelete || q.AccountID != account {
			continue
		}
		f.calls++
		calls[q.KeyID]++
		if _, ok := first2xx[q.KeyID]; ok {
			after[q.KeyID]++
			f.duplicates++
			continue
		}
		if q.Status >= 200 && q.Status < 300 {
			first2xx[q.KeyID] = i
		}
	}

	for _, k := range ks {
		rec, ok := perKey[k]
		if !ok {
			continue
		}
		i, confirmed := first2xx[k]
		if !confirmed {
			t.Errorf("key %s: the stand-in never answered 2xx; record says %s", k, rec.Outcome)
			continue
		}
		if rec.Outcome == event.Revoked && rec.Status == reqs[i].Status && rec.CFRay == r.of(i) {
			if seen := calls[k] - after[k]; rec.Attempts < seen || rec.Attempts-seen > rec.UnansweredCalls {
				// Calls after the confirmation are made by no delivery
				// that knew of it; calls before it are all counted. A call
				// is counted once stored ahead, so a worker killed between
				// storing and sending counts one the API never saw: as
				// unanswered.
				t.Errorf("key %s: record counts %d attempts (%d unanswered), the stand-in saw %d calls up to the confirmation",
					k, rec.Attempts, rec.UnansweredCalls, seen)
			}
			if after[k] > 0 {
				t.Errorf("key %s: %d DELETEs after a confirmation the worker had kept", k, after[k])
			}
			continue
		}
		if after[k] > 0 && rec.Outcome == event.NotFound {
			// The worker was killed before the 2xx reached it: the record
			// is true to what the worker was told (a later 404).
			f.unheard = append(f.unheard, k)
			continue
		}
		t.Errorf("key %s: record says %s status %d cf_ray %q; the stand-in confirmed with %d, CF-Ray %s",
			k, rec.Outcome, rec.Status, rec.CFRay, reqs[i].Status, r.of(i))
	}
	if f.duplicates > maxUnheard {
		t.Errorf("%d duplicate DELETEs; at most %d calls can have been in flight at the faults", f.duplicates, maxUnheard)
	}
	if len(f.unheard) > 0 {
		sort.Strings(f.unheard)
		show := f.unheard
		if len(show) > 5 {
			show = show[:5]
		}
		t.Logf("confirmations lost in flight (recorded not_found): %d, e.g. %v", len(f.unheard), show)
	}
	return f
}

// logCount counts the worker's log lines that contain s.
func (w *worker) logCount(s string) int {
	b, err := os.ReadFile(w.log)
	if err != nil {
		return -1
	}
	return strings.Count(string(b), s)
}

// holdFigures are what the worker's log says of its holds and
// redeliveries: the figures that show which path a fault took.
func holdFigures(ws ...*worker) string {
	var held, ledger, fromLedger, requeued, ackFailed int
	for _, w := range ws {
		held += w.logCount("outcome record not written; holding the event")
		ledger += w.logCount("revocation not written; holding the event")
		fromLedger += w.logCount("revoked on an earlier delivery")
		requeued += w.logCount(`"msg":"event requeued"`)
		ackFailed += w.logCount(`"msg":"ack failed"`)
	}
	return fmt.Sprintf("held for a record %d, held for the ledger %d, answered from the ledger %d, requeued %d, acks failed %d",
		held, ledger, fromLedger, requeued, ackFailed)
}
