package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/config"
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
	kv atomic.Pointer[jetstream.KeyValue]
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
		warnBucketReplicas(ctx, kv, want.Bucket, want.Replicas, log)
	case errors.Is(err, jetstream.ErrBucketNotFound):
		return nil, fmt.Errorf("%w: bucket %s does not exist and REVOKER_CREATE_STREAMS is false", ErrMissing, want.Bucket)
	default:
		return nil, fmt.Errorf("bind bucket %s: %w", want.Bucket, err)
	}
	return kv, nil
}

func ledgerKey(stream string, seq uint64) string {
	return stream + "." + strconv.FormatUint(seq, 10)
}

// Load returns what earlier deliveries of the event left; nothing is not
// an error.
func (l *Ledger) Load(ctx context.Context, stream string, seq uint64) (worker.Entry, error) {
	var e worker.Entry
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	kv := l.kv.Load()
	if kv == nil {
		return e, errLedgerUnbound
	}
	kve, err := (*kv).Get(ctx, ledgerKey(stream, seq))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return e, nil
	case err != nil:
		return e, fmt.Errorf("read ledger: %w", err)
	}
	if err := json.Unmarshal(kve.Value(), &e); err != nil {
		// An old plain count, or damage: keep what can be read.
		n, _ := strconv.Atoi(string(kve.Value()))
		return worker.Entry{Attempts: n}, nil
	}
	return e, nil
}

// Save stores e, replacing what the event had.
func (l *Ledger) Save(ctx context.Context, stream string, seq uint64, e worker.Entry) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	kv := l.kv.Load()
	if kv == nil {
		return errLedgerUnbound
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := (*kv).Put(ctx, ledgerKey(stream, seq), b); err != nil {
		return fmt.Errorf("write ledger: %w", err)
	}
	return nil
}

// warnBucketReplicas warns when an existing bucket has other replicas than
// configured; like streams, it is left as it is.
func warnBucketReplicas(ctx context.Context, kv jetstream.KeyValue, bucket string, want int, log *zap.Logger) {
	st, err := kv.Status(ctx)
	if err != nil {
		return
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return
	}
	if have := bs.StreamInfo().Config.Replicas; have != max(want, 1) {
		log.Warn("existing bucket differs from what revoker would create; leaving it as it is",
			zap.String("bucket", bucket), zap.String("setting", "replicas"),
			zap.String("have", strconv.Itoa(have)), zap.String("want", strconv.Itoa(want)))
	}
}
