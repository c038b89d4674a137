package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/untrusted"
)

// Bucket is the KV bucket shared by the replicas' checks: the lease
// (only its holder checks) and the count of the last check.
const Bucket = "revoker_verify"

const (
	leaseKey = "lease"
	lastKey  = "last"
	clockKey = "clock" // written to learn the server's time
	firstKey = "first" // when the fleet first took the lease
)

// Window is what a scheduled check covers: a signed URL lives at most
// 24 h, so a key revoked earlier than that protects nothing any more.
const Window = 24 * time.Hour

// DefaultLeaseTTL bounds one check. A replica that dies holding the lease
// holds up the others this long at most; a check still running then is
// stopped, so two never overlap.
const DefaultLeaseTTL = 15 * time.Minute

// maxCount is the largest count of still-listed keys believed when read
// from the bucket (SPEC §4 "The proof" point 8: shared state is clamped to
// what a worker could have written).
const maxCount = 1 << 20

// Gauge is where a count is exported; prometheus.Gauge meets it.
type Gauge interface{ Set(float64) }

// Schedule runs a check every Interval over the last Window, one replica
// at a time, and exports the count of the last check any replica ran.
type Schedule struct {
	Check    Config
	Interval time.Duration
	// Create makes the bucket when it is missing (REVOKER_CREATE_STREAMS);
	// an existing bucket is never altered.
	Create   bool
	Replicas int
	Gauge    Gauge
	Log      *zap.Logger
	// Replica names this process in the lease, for operators.
	Replica string
	// LeaseTTL: 0 means DefaultLeaseTTL.
	LeaseTTL time.Duration

	bucket *queue.LazyBucket // bound on first use
	// first is the server's time of the fleet's first lease, as the
	// bucket keeps it: with no check on record, the first is due an
	// Interval after it, so a starting fleet does not list every account
	// at once, and one restarted more often than that still checks.
	first time.Time
	// ttlsOffSaid: the bucket's missing per-key TTLs were logged.
	ttlsOffSaid bool
}

// errCodeTTLsOff is the server's error code for a per-key TTL asked of a
// stream that does not allow them.
const errCodeTTLsOff = 10166

func ttlsOff(err error) bool {
	var api *jetstream.APIError
	return errors.As(err, &api) && api.ErrorCode == errCodeTTLsOff
}

// last is the bucket's record of the last check.
type last struct {
	StillListed int    `json:"still_listed"`
	Checked     int    `json:"checked"`
	Failed      int    `json:"failed_accounts"`
	At          string `json:"at"`
	By          string `json:"by"`
}

// BucketConfig is the bucket as a replica creates it: per-key TTLs (the
// lease's) need limit markers.
func BucketConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:         Bucket,
		Description:    "revoker verify: the lease of the running check and the count of the last one",
		History:        1,
		Storage:        jetstream.FileStorage,
		Replicas:       max(replicas, 1),
		LimitMarkerTTL: time.Minute,
	}
}

// Start runs s until ctx ends or the returned stop is called; stop waits
// for it to finish.
func Start(ctx context.Context, s *Schedule) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.Run(ctx)
	}()
	return func() {
		cancel()
		wg.Wait()
	}
}

// Run polls until ctx ends, a few times per Interval (at most a minute
// apart): each poll exports the last count and runs a check when one is
// due and the lease is free.
func (s *Schedule) Run(ctx context.Context) {
	poll := min(max(s.Interval/4, 10*time.Millisecond), time.Minute)
	t := time.NewTicker(poll)
	defer t.Stop()
	logged := "" // a repeated error is logged once
	for {
		_, err := s.Tick(ctx)
		switch {
		case ctx.Err() != nil:
		case err == nil:
			logged = ""
		case err.Error() != logged:
			logged = err.Error()
			s.Log.Error("verify: scheduled check not run", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Tick exports the last count and, when a check is due and no other
// replica holds the lease, runs one. It reports whether it ran one.
func (s *Schedule) Tick(ctx context.Context) (bool, error) {
	kv, err := s.bind(ctx)
	if err != nil {
		return false, err
	}
	ttl := s.LeaseTTL
	if ttl <= 0 {
		ttl = DefaultLeaseTTL
	}
	rev, err := kv.Create(ctx, leaseKey, []byte(untrusted.Line(s.Replica, 256)), jetstream.KeyTTL(ttl))
	if ttlsOff(err) {
		// A bucket made without per-key TTLs (by hand, an older build)
		// is used as it is (SPEC §3): the lease is taken without one,
		// and dropStaleLease removes it once it outlives ttl, as it
		// does any lease a holder left behind.
		if !s.ttlsOffSaid {
			s.ttlsOffSaid = true
			queue.WarnBucketDiffers(s.Log, Bucket, "per-key TTLs (allow_msg_ttl)", "off", "on")
		}
		rev, err = kv.Create(ctx, leaseKey, []byte(untrusted.Line(s.Replica, 256)))
	}
	if errors.Is(err, jetstream.ErrKeyExists) {
		s.export(ctx, kv) // another replica checks; show what the last check found
		s.dropStaleLease(ctx, kv, ttl)
		return false, nil
	}
	if err != nil {
		s.bucket.Drop(kv, err) // a bucket lost is made again at the next tick
		return false, fmt.Errorf("take the lease: %w", err)
	}
	// The lease is ours until deleted or expired; release only our own.
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := kv.Delete(dctx, leaseKey, jetstream.LastRevision(rev)); err != nil {
			s.Log.Warn("verify: lease not released; it expires by itself", zap.Error(err), zap.Duration("ttl", ttl))
		}
	}()
	// Read after taking the lease, so a check finished meanwhile by
	// another replica is seen. Both times are the server's: no replica's
	// clock decides when a check is due.
	lastAt, ok := s.export(ctx, kv)
	lease, err := kv.GetRevision(ctx, leaseKey, rev)
	if err != nil {
		return false, fmt.Errorf("read the lease: %w", err)
	}
	if !ok {
		if s.first.IsZero() {
			s.first = s.fleetFirst(ctx, kv, lease.Created())
		}
		lastAt = s.first
	}
	if lease.Created().Sub(lastAt) < s.Interval {
		return false, nil
	}

	cctx, cancel := context.WithTimeout(ctx, ttl*9/10)
	defer cancel()
	r, err := Check(cctx, s.Check, "", time.Now().Add(-Window))
	switch {
	case err != nil && (ctx.Err() != nil || r.Checked == 0 && len(r.Failed) == 0):
		return false, fmt.Errorf("check: %w", err)
	case err != nil:
		// Out of the lease's time: what was judged is reported, and
		// counted; the accounts not reached are among the failed.
		s.Log.Warn("verify: the check ran out of its lease's time; the accounts it did not reach are not judged",
			zap.Duration("lease", ttl), zap.Error(err))
	}
	for _, c := range r.StillListed {
		s.Log.Error("verify: the trail says this key is gone, but its account still lists it",
			zap.String("account", c.AccountID), zap.String("key", c.KeyID), zap.String("outcome", c.Says()),
			zap.String("completed_at", untrusted.Line(c.CompletedAt, 64)), zap.String("cf_ray", untrusted.Line(c.CFRay, 128)))
	}
	for _, f := range r.Failed {
		s.Log.Warn("verify: the account's key list could not be fetched; its keys are not judged",
			zap.String("account", f.AccountID), zap.String("why", f.Why))
	}
	for _, m := range r.Strays {
		s.Log.Warn("verify: a message on a key's outcome subject is not a record of that key: not believed",
			zap.String("subject", untrusted.Line(m.Subject, 256)), zap.Uint64("sequence", m.Sequence))
	}
	listed := len(r.StillListed)
	s.Gauge.Set(float64(listed))
	body, _ := json.Marshal(last{StillListed: listed, Checked: r.Checked, Failed: len(r.Failed),
		At: time.Now().UTC().Format(time.RFC3339Nano), By: untrusted.Line(s.Replica, 256)})
	if _, err := kv.Put(ctx, lastKey, body); err != nil {
		return true, fmt.Errorf("store the count: %w", err)
	}
	s.Log.Info("verify: check done", zap.Int("checked", r.Checked), zap.Int("still_listed", listed),
		zap.Int("failed_accounts", len(r.Failed)))
	return true, nil
}

// fleetFirst is when the fleet first took the lease, kept in the bucket
// by the first replica to write it (the server's time): kept only in
// memory, each restart would put the first check an Interval further
// off, for ever in a fleet restarted more often. If it cannot be kept or
// read, this lease's time stands in, as before.
func (s *Schedule) fleetFirst(ctx context.Context, kv jetstream.KeyValue, leased time.Time) time.Time {
	if _, err := kv.Create(ctx, firstKey, nil); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return leased
	}
	e, err := kv.Get(ctx, firstKey)
	if err != nil || e.Created().After(leased) {
		return leased
	}
	return e.Created()
}

// dropStaleLease removes a lease older than any a replica writes could
// be: each is written with the lease's TTL and expires by then, so one
// that outlived it was not written so (by hand, an older build, a
// restore), and would stop every check for ever (SPEC §4, "The proof",
// point 8: what is read from shared state is held to what the worker
// could have written). Its age is judged on the server's clock: a probe
// written now says what time it is there. The next tick takes the lease.
func (s *Schedule) dropStaleLease(ctx context.Context, kv jetstream.KeyValue, ttl time.Duration) {
	lease, err := kv.Get(ctx, leaseKey)
	if err != nil {
		return
	}
	rev, err := kv.Put(ctx, clockKey, nil)
	if err != nil {
		return
	}
	now, err := kv.GetRevision(ctx, clockKey, rev)
	if err != nil || now.Created().Sub(lease.Created()) <= ttl+ttl/2 {
		return
	}
	if err := kv.Delete(ctx, leaseKey, jetstream.LastRevision(lease.Revision())); err == nil {
		s.Log.Warn("verify: removed a lease older than any a replica writes; the next check takes it",
			zap.Duration("age", now.Created().Sub(lease.Created()).Round(time.Second)), zap.Duration("lease_ttl", ttl))
	}
}

// export sets the gauge to the count of the last check any replica ran,
// and returns when the server stored it (ok false when there is none).
func (s *Schedule) export(ctx context.Context, kv jetstream.KeyValue) (time.Time, bool) {
	e, err := kv.Get(ctx, lastKey)
	if err != nil {
		return time.Time{}, false
	}
	var l last
	if json.Unmarshal(e.Value(), &l) != nil {
		// Not what a worker writes: the check is due, and its count
		// replaces this.
		return time.Time{}, false
	}
	s.Gauge.Set(float64(min(max(l.StillListed, 0), maxCount)))
	return e.Created(), true
}

// bind finds the bucket, or makes it (when Create) if it is missing.
func (s *Schedule) bind(ctx context.Context) (jetstream.KeyValue, error) {
	if s.bucket == nil {
		// Bound as the worker's other buckets are: an existing one is
		// never altered, and other settings (replicas) are a warning.
		s.bucket = queue.NewLazyBucket(s.Check.JS, BucketConfig(s.Replicas), s.Create, s.Log)
	}
	return s.bucket.Get(ctx)
}
