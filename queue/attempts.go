package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/config"
)

// AttemptsBucket is the key-value bucket that remembers, per event, the API
// calls made on earlier deliveries, so Revoker-Attempts counts every
// delivery together whichever replica made them and across restarts.
const AttemptsBucket = "revoker_attempts"

// attemptsTTL outlives any event's retries by far: deliveries are given
// back at most REVOKER_MAX_DELIVER times, minutes apart.
const attemptsTTL = 7 * 24 * time.Hour

// Attempts is the call count of events that needed more than one delivery.
// It is touched only off the happy path: written when an event is given
// back after calls, read on a redelivery, removed at the end. Without its
// bucket it keeps counts in this process only.
type Attempts struct {
	kv  jetstream.KeyValue // nil: this process only
	log *zap.Logger

	mu    sync.Mutex
	local map[string]int
}

// maxLocal bounds the in-process counts.
const maxLocal = 100_000

// EnsureAttempts binds the attempts bucket, creating it when cfg allows. A
// missing bucket that may not be created leaves the counts in this process.
func EnsureAttempts(ctx context.Context, js jetstream.JetStream, cfg config.Config, log *zap.Logger) (*Attempts, error) {
	a := &Attempts{log: log, local: map[string]int{}}
	kv, err := js.KeyValue(ctx, AttemptsBucket)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound) && cfg.CreateStreams:
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      AttemptsBucket,
			Description: "revoker: API calls made for events on earlier deliveries",
			History:     1,
			TTL:         attemptsTTL,
			Storage:     jetstream.FileStorage,
			Replicas:    cfg.StreamReplicas,
		})
		if err != nil {
			return nil, fmt.Errorf("create bucket %s: %w", AttemptsBucket, err)
		}
	case err == nil:
		warnBucketReplicas(ctx, kv, cfg.StreamReplicas, log)
	case errors.Is(err, jetstream.ErrBucketNotFound):
		log.Warn("attempt counts kept in this process only: bucket missing and REVOKER_CREATE_STREAMS is false",
			zap.String("bucket", AttemptsBucket))
		return a, nil
	case err != nil:
		return nil, fmt.Errorf("bind bucket %s: %w", AttemptsBucket, err)
	}
	a.kv = kv
	return a, nil
}

func attemptsKey(stream string, seq uint64) string {
	return stream + "." + strconv.FormatUint(seq, 10)
}

// Get is the count of calls earlier deliveries of the event made.
func (a *Attempts) Get(ctx context.Context, stream string, seq uint64) int {
	key := attemptsKey(stream, seq)
	a.mu.Lock()
	n := a.local[key]
	a.mu.Unlock()
	if a.kv == nil {
		return n
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	e, err := a.kv.Get(ctx, key)
	if err != nil {
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			a.log.Warn("attempt count not read; counting from this process's", zap.String("key", key), zap.Error(err))
		}
		return n
	}
	stored, _ := strconv.Atoi(string(e.Value()))
	return max(n, stored)
}

// Set records that the event's deliveries so far made n calls.
func (a *Attempts) Set(ctx context.Context, stream string, seq uint64, n int) {
	key := attemptsKey(stream, seq)
	a.mu.Lock()
	if len(a.local) < maxLocal {
		a.local[key] = n
	}
	a.mu.Unlock()
	if a.kv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := a.kv.Put(ctx, key, []byte(strconv.Itoa(n))); err != nil {
		a.log.Warn("attempt count not stored", zap.String("key", key), zap.Error(err))
	}
}

// Forget drops the event's count once its outcome is final.
func (a *Attempts) Forget(ctx context.Context, stream string, seq uint64) {
	key := attemptsKey(stream, seq)
	a.mu.Lock()
	delete(a.local, key)
	a.mu.Unlock()
	if a.kv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := a.kv.Purge(ctx, key); err != nil {
		a.log.Debug("attempt count not removed (it expires on its own)", zap.String("key", key), zap.Error(err))
	}
}

// warnBucketReplicas warns when an existing bucket has other replicas than
// configured; like streams, it is left as it is.
func warnBucketReplicas(ctx context.Context, kv jetstream.KeyValue, want int, log *zap.Logger) {
	st, err := kv.Status(ctx)
	if err != nil {
		return
	}
	js, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return
	}
	if have := js.StreamInfo().Config.Replicas; have != want {
		log.Warn("existing bucket differs from what revoker would create; leaving it as it is",
			zap.String("bucket", AttemptsBucket), zap.String("setting", "replicas"),
			zap.String("have", strconv.Itoa(have)), zap.String("want", strconv.Itoa(want)))
	}
}
