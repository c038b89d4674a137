package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/untrusted"
	"github.com/revoker/revoker/worker"
)

// unrecordedPrefix is where the ledger keeps revoked records the trail
// refused, one key per event, until a sweep writes them to the trail. Its
// first token holds a '/', which no stream name may: an entry's key
// (<stream>.<seq>..., entryKey) can never fall under it.
const unrecordedPrefix = "trail/unrecorded."

// unrecordedKey is the key of rec, the revoked record of an event: its
// stream, sequence, account, key and storing time (published_at). A stream
// made again reuses sequences, and may store the same request again at
// one: one event's kept record must not replace another's.
func unrecordedKey(rec event.Record) string {
	stored := "0"
	if t, err := time.Parse(time.RFC3339Nano, rec.PublishedAt); err == nil {
		stored = strconv.FormatInt(t.UnixNano(), 10)
	}
	return unrecordedPrefix + rec.Stream + "." + strconv.FormatUint(rec.Sequence, 10) + "." + rec.AccountID + "." + rec.KeyID + "." + stored
}

// unrecordedOlderKey is where versions before unrecordedKey named the
// event kept rec: a sweep still writes what they kept.
func unrecordedOlderKey(rec event.Record) string {
	return unrecordedPrefix + rec.Stream + "." + strconv.FormatUint(rec.Sequence, 10)
}

// Unrecorded implements worker.Ledger: rec is kept under a key of its own
// (unrecordedKey: a write retried replaces itself), for SweepUnrecorded.
func (l *Ledger) Unrecorded(ctx context.Context, rec event.Record) error {
	kv := l.kv.Load()
	if kv == nil {
		return errLedgerUnbound
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := (*kv).Put(ctx, unrecordedKey(rec), rec.AppendJSON(nil)); err != nil {
		return fmt.Errorf("keep the revoked record in the ledger: %w", err)
	}
	return nil
}

// unrecordedSweepEvery is how often serve sweeps the revoked records the
// trail refused into it.
const unrecordedSweepEvery = 30 * time.Second

// SweepUnrecorded writes every revoked record the ledger keeps (Unrecorded)
// to the trail through recs, which stores it unless the trail believes a
// revoked record of the event already, and corrects any other (SPEC §4,
// "The proof", point 3): a confirmation whose record the trail refused is
// recorded even when no delivery of its event comes again. A record is
// dropped from the ledger once the trail believes the event revoked. What
// no worker could have written there (not a revoked record of a valid key,
// stored under another event's key) is reported and dropped. It returns
// how many records it wrote.
func (l *Ledger) SweepUnrecorded(ctx context.Context, recs worker.Records, log *zap.Logger) (int, error) {
	kv, js := l.kv.Load(), l.js.Load()
	if kv == nil || js == nil {
		return 0, errLedgerUnbound
	}
	// Read as the journal is, message by message (the bucket keeps one
	// per key): the shipped permissions let the worker read its buckets'
	// messages, not make consumers on them.
	prefix := ledgerSubject(unrecordedPrefix)
	written := 0
	for next := uint64(0); ; {
		m, err := msgGet(ctx, *js, "KV_"+LedgerBucket, msgGetRequest{Seq: next, NextFor: prefix + ">"})
		if err != nil {
			return written, fmt.Errorf("read the ledger's revoked records: %w", err)
		}
		if m == nil {
			return written, nil
		}
		next = m.Seq + 1
		if op := m.header().Get("KV-Operation"); op == "DEL" || op == "PURGE" {
			continue // a record swept: its delete marker
		}
		key := strings.TrimPrefix(m.Subject, ledgerSubject(""))
		var rec event.Record
		if json.Unmarshal(m.Data, &rec) != nil || rec.Outcome != event.Revoked ||
			!cloudflare.ValidIdentifier(rec.AccountID) || !cloudflare.ValidIdentifier(rec.KeyID) ||
			unrecordedKey(rec) != key && unrecordedOlderKey(rec) != key {
			log.Warn("the ledger holds, among the revoked records for the trail, one no worker wrote; dropped",
				zap.String("key", untrusted.Line(key, 256)))
			_ = (*kv).Delete(ctx, key, jetstream.LastRevision(m.Seq))
			continue
		}
		believed, err := recs.Outcome(ctx, rec)
		if err != nil {
			return written, fmt.Errorf("write the revoked record of %s: %w", key, err)
		}
		if believed.Outcome != event.Revoked {
			continue // not believed: kept for the next sweep
		}
		if believed.SameFacts(rec) && believed.CompletedAt == rec.CompletedAt {
			written++
			log.Warn("a revocation whose record the trail refused is recorded now, from the ledger",
				zap.String("event_id", untrusted.Line(rec.EventID, 256)), zap.String("account", rec.AccountID),
				zap.String("key", rec.KeyID), zap.Int("status", rec.Status), zap.String("cf_ray", untrusted.Line(rec.CFRay, 128)),
				zap.String("trace_id", rec.TraceID), zap.Uint64("supersedes", believed.Supersedes))
		}
		// Believed revoked: by this record or an earlier one.
		_ = (*kv).Delete(ctx, key, jetstream.LastRevision(m.Seq))
	}
}

// SweepingUnrecorded sweeps now and every unrecordedSweepEvery until ctx
// ends; trouble is logged once per distinct cause.
func (l *Ledger) SweepingUnrecorded(ctx context.Context, recs worker.Records, log *zap.Logger) {
	t := time.NewTicker(unrecordedSweepEvery)
	defer t.Stop()
	var last string
	for {
		_, err := l.SweepUnrecorded(ctx, recs, log)
		switch {
		case err == nil || errors.Is(err, errLedgerUnbound) || ctx.Err() != nil:
			last = ""
		case err.Error() != last:
			last = err.Error()
			log.Warn("the sweep of revoked records the trail refused failed; it runs again", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
