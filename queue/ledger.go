package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/config"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/worker"
)

// LedgerBucket is the key-value bucket in which the worker keeps, per
// event, what one delivery leaves for the next: the API calls made, and the
// call that revoked the key. Every replica reads it, so a redelivery on
// another replica or after a restart neither calls again nor counts wrong.
const LedgerBucket = "revoker_attempts"

// ledgerTTL outlives any event's deliveries by far: an event is given back
// at most REVOKER_MAX_DELIVER times, minutes apart.
const ledgerTTL = 7 * 24 * time.Hour

// Ledger meets worker.Ledger with a key-value bucket. It is usable once
// the consumer's setup has bound the bucket.
type Ledger struct {
	// Replica names this process in the journal's messages.
	Replica string

	kv      atomic.Pointer[jetstream.KeyValue]
	js      atomic.Pointer[jetstream.JetStream] // reads the journal
	journal journal
}

// errLedgerUnbound means the bucket is not bound yet.
var errLedgerUnbound = errors.New("ledger bucket not bound yet")

var _ worker.Ledger = (*Ledger)(nil)

// LedgerConfig is the bucket revoker creates.
func LedgerConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      LedgerBucket,
		Description: "revoker: per event, the API calls made and the confirming call",
		History:     1,
		TTL:         ledgerTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	}
}

// BindLedger binds (and where cfg allows, creates) the ledger's bucket.
func BindLedger(ctx context.Context, js jetstream.JetStream, cfg config.Topology, log *zap.Logger) (*Ledger, error) {
	l := &Ledger{}
	return l, l.bind(ctx, js, cfg.Create, cfg.Replicas, log)
}

// bind binds the ledger's bucket, creating it when create is set.
func (l *Ledger) bind(ctx context.Context, js jetstream.JetStream, create bool, replicas int, log *zap.Logger) error {
	kv, err := bindBucket(ctx, js, LedgerConfig(replicas), create, log)
	if err != nil {
		return err
	}
	l.kv.Store(&kv)
	l.js.Store(&js)
	return nil
}

// bindBucket binds the bucket want describes, creating it when create is
// set (and binding the one another replica created meanwhile). Like
// streams, an existing bucket is never altered: other replicas are a
// warning.
func bindBucket(ctx context.Context, js jetstream.JetStream, want jetstream.KeyValueConfig, create bool, log *zap.Logger) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, want.Bucket)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound) && create:
		kv, err = js.CreateKeyValue(ctx, want)
		if errors.Is(err, jetstream.ErrBucketExists) {
			return bindBucket(ctx, js, want, false, log) // another replica was first
		}
		if err != nil {
			return nil, fmt.Errorf("create bucket %s: %w", want.Bucket, err)
		}
		log.Info("created bucket", zap.String("bucket", want.Bucket))
	case err == nil:
		warnBucketDiffs(ctx, kv, want, log)
	case errors.Is(err, jetstream.ErrBucketNotFound):
		return nil, fmt.Errorf("%w: bucket %s does not exist and REVOKER_CREATE_STREAMS is false", ErrMissing, want.Bucket)
	default:
		return nil, fmt.Errorf("bind bucket %s: %w", want.Bucket, err)
	}
	return kv, nil
}

// entryKey is the key of ref's entry: its stream, sequence, account, key
// and storing time. A stream made again reuses sequences while older
// deliveries may still be in hand, and may store the same request again at
// the same sequence: every event keeps an entry of its own, and none can
// replace another's calls or confirmation (SPEC §4, "The proof", point 5).
// An event that does not decode keeps its entry (the mark of its dead
// letter) under a key of its own too.
func entryKey(ref worker.Ref) string {
	key := ref.Stream + "." + strconv.FormatUint(ref.Seq, 10)
	if ref.Account == event.NoKey {
		return key + "." + event.NoKey
	}
	stored := "0"
	if !ref.Stored.IsZero() {
		stored = strconv.FormatInt(ref.Stored.UnixNano(), 10)
	}
	return key + "." + ref.Account + "." + ref.Key + "." + stored
}

// olderEntryKey is where versions before entryKey named the event kept a
// valid event's entry. What that key holds of the event counts too (get):
// what replicas of those versions kept before an upgrade, or beside this
// one during it, is not lost to it. They do not read this version's
// entries (README, "Upgrading").
func olderEntryKey(ref worker.Ref) string {
	return ref.Stream + "." + strconv.FormatUint(ref.Seq, 10)
}

// mergeEntries is what two entries of one event say together: each call,
// answer and confirmation either holds.
func mergeEntries(a, b worker.Entry) worker.Entry {
	switch {
	case b.Account == "":
		return a
	case a.Account == "":
		return b
	}
	a.Calls, a.Journaled, a.Answered = max(a.Calls, b.Calls), max(a.Journaled, b.Journaled), max(a.Answered, b.Answered)
	if a.Confirmed == nil {
		a.Confirmed = b.Confirmed
	}
	if a.Last == nil || b.Last != nil && b.Last.At.After(a.Last.At) {
		a.Last = b.Last
	}
	return a
}

// Bounds of what a replica could have written in an entry: anything read
// beyond them was not written by a worker and is clamped (SPEC §4, "The
// proof", point 8).
const (
	maxLedgerCalls = 1 << 20
	// maxLedgerRay is in characters, as cloudflare.CutRay keeps a ray:
	// 128 of them and its "…" when cut.
	maxLedgerRay = cloudflare.MaxCFRay
)

// Load returns what is kept for the event, its entry and its first calls
// in the journal; nothing, or an entry naming another account or key (a
// stream made again reuses sequences), is an empty entry, not an error.
func (l *Ledger) Load(ctx context.Context, ref worker.Ref) (worker.Entry, error) {
	e, _, err := l.get(ctx, ref)
	return e, err
}

// get reads the event's entry and its revision (0 when there is none),
// with the journal's first calls that the entry does not count yet
// counted in (none for an event that does not decode: it is never called
// for).
func (l *Ledger) get(ctx context.Context, ref worker.Ref) (worker.Entry, uint64, error) {
	kv := l.kv.Load()
	if kv == nil {
		return worker.Entry{}, 0, errLedgerUnbound
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var (
		e   worker.Entry
		rev uint64
	)
	kve, err := (*kv).Get(ctx, entryKey(ref))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return worker.Entry{}, 0, fmt.Errorf("read ledger: %w", err)
	default:
		e, rev = decodeEntry(kve.Value(), ref), kve.Revision()
	}
	if ref.Account != event.NoKey {
		// What an older version's replica kept of the event (only if it
		// names the event: decodeEntry) counts too.
		switch old, err := (*kv).Get(ctx, olderEntryKey(ref)); {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return worker.Entry{}, 0, fmt.Errorf("read ledger: %w", err)
		default:
			e = mergeEntries(e, decodeEntry(old.Value(), ref))
		}
	}
	if ref.Account == event.NoKey {
		return e, rev, nil // never called for: nothing of its in the journal
	}
	j, err := l.journaled(ctx, ref)
	if err != nil {
		return worker.Entry{}, 0, err
	}
	if j > e.Journaled {
		e.Calls = min(e.Calls+j-e.Journaled, maxLedgerCalls)
	}
	e.Journaled = j
	return e, rev, nil
}

// decodeEntry is the entry b holds for ref, clamped to what a worker could
// have written; an entry of another event, or one that does not parse,
// is empty.
func decodeEntry(b []byte, ref worker.Ref) worker.Entry {
	var e worker.Entry
	if json.Unmarshal(b, &e) != nil || e.Account != ref.Account || e.Key != ref.Key ||
		!ref.Stored.IsZero() && !e.Stored.IsZero() && !e.Stored.Equal(ref.Stored) {
		return worker.Entry{}
	}
	if ref.Account == event.NoKey {
		// An event that does not decode: its storing time is all that
		// tells it from another at the sequence, and no call is ever made
		// for it, so only its dead letter is kept.
		if ref.Stored.IsZero() || !e.Stored.Equal(ref.Stored) {
			return worker.Entry{}
		}
		kept := worker.Entry{Account: e.Account, Key: e.Key, Stored: e.Stored}
		if e.DeadLettered == event.InvalidEvent {
			kept.DeadLettered = e.DeadLettered // the only reason kept here
		}
		return kept
	}
	e.Calls = min(max(e.Calls, 0), maxLedgerCalls)
	// Journaled may exceed Calls by the first calls taken back (never made).
	e.Journaled = min(max(e.Journaled, 0), maxLedgerCalls)
	e.Answered = min(max(e.Answered, 0), e.Calls)
	if c := e.Confirmed; c != nil && (c.Status < 200 || c.Status > 299 || utf8.RuneCountInString(c.CFRay) > maxLedgerRay) {
		e.Confirmed = nil // not a confirmation any worker records
	}
	if c := e.Confirmed; c != nil && c.Credential != "" && !event.ValidCredential(c.Credential) {
		c.Credential = "" // not a name any worker records: the record names its own route's
	}
	if c := e.Last; c != nil && (c.Status != 0 && (c.Status < 100 || c.Status > 599) || utf8.RuneCountInString(c.CFRay) > maxLedgerRay) {
		e.Last = nil // not an answer any worker records
	}
	e.DeadLettered = "" // kept only for an event that does not decode
	return e
}

// Update applies change to the event's entry by compare-and-swap, again on
// the entry as stored after a conflict, and returns the entry it stored.
// If change fails on the entry as stored, nothing is stored and that entry
// is returned with change's error. The entry change sees counts the
// journal's first calls, so a write-ahead refused on calls it did not know
// of sees them all, not only those of the entry.
func (l *Ledger) Update(ctx context.Context, ref worker.Ref, change func(*worker.Entry) error) (worker.Entry, error) {
	kv := l.kv.Load()
	if kv == nil {
		return worker.Entry{}, errLedgerUnbound
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	key := entryKey(ref)
	e, rev, err := l.get(ctx, ref)
	if err != nil {
		return e, err
	}
	create := false // the key holds a delete or purge marker (removed by hand)
	for {
		before := e
		if err := change(&e); err != nil {
			return before, err
		}
		e.Account, e.Key = ref.Account, ref.Key
		if !ref.Stored.IsZero() {
			e.Stored = ref.Stored.UTC()
		}
		b, err := json.Marshal(e)
		if err != nil {
			return before, err
		}
		if create {
			_, err = (*kv).Create(ctx, key, b) // writes over the marker
		} else {
			_, err = (*kv).Update(ctx, key, b, rev)
		}
		if err == nil {
			return e, nil
		}
		if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) && !errors.Is(err, jetstream.ErrKeyExists) {
			return before, fmt.Errorf("write ledger: %w", err)
		}
		// Someone wrote first (another delivery, another replica): read and
		// decide again, change seeing what is there now.
		if e, rev, err = l.get(ctx, ref); err != nil {
			return e, err
		}
		// Refused, and still nothing to read: a delete or purge marker.
		create = rev == 0
	}
}

// warnBucketDiffs warns of each setting of SPEC §3 (storage, age,
// replicas) in which an existing bucket differs from want; like streams,
// it is left as it is. A ledger kept in memory, or for a minute, forgets
// confirmations: an operator must hear of it.
func warnBucketDiffs(ctx context.Context, kv jetstream.KeyValue, want jetstream.KeyValueConfig, log *zap.Logger) {
	st, err := kv.Status(ctx)
	if err != nil {
		return
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return
	}
	have := bs.StreamInfo().Config
	if have.Storage != want.Storage {
		WarnBucketDiffers(log, want.Bucket, "storage", have.Storage.String(), want.Storage.String())
	}
	if have.MaxAge != want.TTL {
		WarnBucketDiffers(log, want.Bucket, "max_age", have.MaxAge.String(), want.TTL.String())
	}
	if have.Replicas != max(want.Replicas, 1) {
		WarnBucketDiffers(log, want.Bucket, "replicas", strconv.Itoa(have.Replicas), strconv.Itoa(max(want.Replicas, 1)))
	}
}

// WarnBucketDiffers logs that an existing bucket's setting differs from
// what revoker would create, and that it is used as it is (SPEC §3).
func WarnBucketDiffers(log *zap.Logger, bucket, setting, have, want string) {
	log.Warn("existing bucket differs from what revoker would create; leaving it as it is",
		zap.String("bucket", bucket), zap.String("setting", setting),
		zap.String("have", have), zap.String("want", want))
}

// LazyBucket binds a key-value bucket at its first use, and again after a
// failure: NATS may be away when its user starts. One caller binds at a
// time and the others wait for it with their own context, then use what
// it bound: a burst of first requests each creating the bucket would be a
// burst of identical stream proposals, and on a loaded cluster some went
// unanswered for the whole store timeout.
type LazyBucket struct {
	js      jetstream.JetStream
	want    jetstream.KeyValueConfig
	create  bool
	log     *zap.Logger
	binding chan struct{} // held by the one caller binding
	kv      atomic.Pointer[jetstream.KeyValue]
}

// NewLazyBucket binds the bucket want describes on js at first use,
// creating it when create is set.
func NewLazyBucket(js jetstream.JetStream, want jetstream.KeyValueConfig, create bool, log *zap.Logger) *LazyBucket {
	return &LazyBucket{js: js, want: want, create: create, log: log, binding: make(chan struct{}, 1)}
}

// Drop forgets kv, the bucket as bound, when err says that its stream is
// not there (deleted by hand, lost with its only replica): the next Get
// binds it again, making it when told to. Kept, every use would fail until
// a restart. Any other error keeps it.
func (b *LazyBucket) Drop(kv jetstream.KeyValue, err error) {
	if kv == nil || !bucketGone(err) {
		return
	}
	if cur := b.kv.Load(); cur != nil && *cur == kv {
		b.kv.CompareAndSwap(cur, nil)
	}
}

// bucketGone reports whether err, from a use of a bound bucket, may mean
// that its stream is gone. No responders is also what a cluster answers
// while it elects the stream's leader: binding again then finds the
// bucket as it was.
func bucketGone(err error) bool {
	return errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders)
}

// Get returns the bucket, binding it first if no caller has yet.
func (b *LazyBucket) Get(ctx context.Context) (jetstream.KeyValue, error) {
	if kv := b.kv.Load(); kv != nil {
		return *kv, nil
	}
	select {
	case b.binding <- struct{}{}:
		defer func() { <-b.binding }()
	case <-ctx.Done():
		return nil, fmt.Errorf("bucket %s: %w", b.want.Bucket, ctx.Err())
	}
	if kv := b.kv.Load(); kv != nil {
		return *kv, nil // bound while this caller waited
	}
	kv, err := bindBucket(ctx, b.js, b.want, b.create, b.log)
	if err != nil {
		return nil, err
	}
	b.kv.Store(&kv)
	return kv, nil
}
