package queue

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare"
)

// The bucket of the NATS service's event index.
const (
	EventIndexBucket = "revoker_service"
	EventIndexTTL    = 24 * time.Hour
)

// EventIndexConfig is the bucket revoker creates for the index.
func EventIndexConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      EventIndexBucket,
		Description: "revoker: where the events stored through the NATS service are, by id",
		History:     1,
		TTL:         EventIndexTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	}
}

// EventIndex remembers for a day where each event stored through the NATS
// service is, by its id, so that revoker.status can answer for an id
// (SPEC §12) without scanning the trail. Only the worker writes the
// bucket; an entry read back is believed only for the id it names, and
// names the event by stream and sequence, which the answer is then read
// by, never by the id. The bucket is bound at first use: NATS may be away
// when the service starts.
type EventIndex struct {
	stream string // the work stream: an entry naming another is not believed
	log    *zap.Logger
	kv     *LazyBucket
}

// indexEntry is the value kept under an event id's key.
type indexEntry struct {
	EventID   string    `json:"event_id"`
	AccountID string    `json:"account_id"`
	KeyID     string    `json:"key_id"`
	Subject   string    `json:"subject,omitempty"`
	Stream    string    `json:"stream"`
	Sequence  uint64    `json:"sequence"`
	StoredAt  time.Time `json:"stored_at,omitzero"`
	// StoredAfter: Published.StoredAfter.
	StoredAfter time.Time `json:"stored_after,omitzero"`
	// Several: the id was stored for more than one event within the
	// index's day (ids can be reused): it names none of them alone.
	Several bool `json:"several,omitempty"`
}

// ErrSeveralEvents is Find's answer for an id stored for more than one
// event within the index's day: an id alone proves nothing (SPEC §5a).
var ErrSeveralEvents = errors.New("more than one event was stored under this id")

// indexKey is an id's key: ids may hold what keys may not.
func indexKey(id string) string {
	sum := sha256.Sum256([]byte(id))
	return "id." + hex.EncodeToString(sum[:16])
}

// Remember notes where p is, under its event id. An id already noted for
// another event is marked as naming several, for as long as the entry
// lives: Find then names neither. A compare-and-swap, so two replicas
// noting one id at once cannot hide each other's event.
func (x *EventIndex) Remember(ctx context.Context, p Published) error {
	kv, err := x.kv.Get(ctx)
	if err != nil {
		return err
	}
	v := indexEntry{EventID: p.EventID, AccountID: p.AccountID, KeyID: p.KeyID,
		Subject: p.Subject, Stream: p.Stream, Sequence: p.Sequence, StoredAt: p.StoredAt, StoredAfter: p.StoredAfter}
	key := indexKey(p.EventID)
	for try := 0; ; try++ {
		e, err := kv.Get(ctx, key)
		var rev uint64
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			x.kv.Drop(kv, err)
			return err
		default:
			rev = e.Revision()
			var old indexEntry
			if json.Unmarshal(e.Value(), &old) == nil && old.EventID == p.EventID &&
				(old.Several || old.Stream != v.Stream || old.Sequence != v.Sequence) {
				v.Several = true
			}
		}
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		if rev == 0 {
			_, err = kv.Create(ctx, key, b)
		} else {
			_, err = kv.Update(ctx, key, b, rev)
		}
		if err != nil && try < 3 && (errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) || wrongLastSequence(err)) {
			continue
		}
		if err != nil {
			x.kv.Drop(kv, err)
			return err
		}
		// And as its key's latest event, for revoker.status by key while
		// the key has no record yet.
		v.Several = false
		b, err = json.Marshal(v)
		if err != nil {
			return err
		}
		_, err = kv.Put(ctx, keyIndexKey(p.AccountID, p.KeyID), b)
		x.kv.Drop(kv, err)
		return err
	}
}

// keyIndexKey is the key of a signing key's latest event.
func keyIndexKey(account, key string) string {
	sum := sha256.Sum256([]byte(account + "/" + key))
	return "key." + hex.EncodeToString(sum[:16])
}

// FindKey returns where the latest event of account's key stored through
// the service in the last day is; found is false when the index knows of
// none. The answer is read by stream and sequence, which name the key.
func (x *EventIndex) FindKey(ctx context.Context, account, key string) (p Published, found bool, err error) {
	v, found, err := x.read(ctx, keyIndexKey(account, key), func(v indexEntry) bool {
		return v.AccountID == account && v.KeyID == key
	})
	return v.published(), found, err
}

// Find returns where the event with id was stored through the service in
// the last day; found is false when the index knows of none, and the
// error ErrSeveralEvents when it knows of more than one.
func (x *EventIndex) Find(ctx context.Context, id string) (p Published, found bool, err error) {
	v, found, err := x.read(ctx, indexKey(id), func(v indexEntry) bool {
		return v.EventID == id && cloudflare.ValidIdentifier(v.AccountID) && cloudflare.ValidIdentifier(v.KeyID)
	})
	if found && v.Several {
		return p, false, ErrSeveralEvents
	}
	return v.published(), found, err
}

// read is the entry under key, believed only where it names an event of
// the work stream and names what it is kept for (names).
func (x *EventIndex) read(ctx context.Context, key string, names func(indexEntry) bool) (v indexEntry, found bool, err error) {
	kv, err := x.kv.Get(ctx)
	if err != nil {
		return v, false, err
	}
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return v, false, nil
	}
	if err != nil {
		x.kv.Drop(kv, err)
		return v, false, err
	}
	if json.Unmarshal(e.Value(), &v) != nil || v.Stream != x.stream || v.Sequence == 0 || !names(v) {
		x.log.Warn("an event index entry does not name what it is kept for; not believed", zap.String("key", e.Key()))
		return indexEntry{}, false, nil
	}
	return v, true, nil
}

// published is where v says its event is.
func (v indexEntry) published() Published {
	if v.Sequence == 0 {
		return Published{}
	}
	return Published{EventID: v.EventID, AccountID: v.AccountID, KeyID: v.KeyID, Subject: v.Subject,
		Stream: v.Stream, Sequence: v.Sequence, StoredAt: v.StoredAt, StoredAfter: v.StoredAfter}
}

// NewEventIndex is the index of the events of stream, in a bucket of
// replicas replicas, created when create is set.
func NewEventIndex(js jetstream.JetStream, stream string, replicas int, create bool, log *zap.Logger) *EventIndex {
	return &EventIndex{stream: stream, log: log, kv: NewLazyBucket(js, EventIndexConfig(replicas), create, log)}
}
