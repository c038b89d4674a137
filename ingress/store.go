package ingress

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/event"
	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/tracing"
	"github.com/revoker/revoker/untrusted"
)

// The ingress's key-value bucket: one entry per event it stored, for the
// idempotency of repeats and for GET /v1/revocations/{id}. Entries live as
// long as the trail keeps records: an event's Location answers its record
// as long as there is one (SPEC §11), and repeats are answered for longer
// than the 24 hours asked.
const (
	Bucket    = "revoker_ingress"
	BucketTTL = queue.OutcomeMaxAge
	// StaleClaim is how long a "storing" claim that names no end (one
	// written before claims did) holds off others: a replica that died
	// while storing must not block its event's id for a day.
	StaleClaim = 30 * time.Second
	// claimMargin is how long past its end a claim is still taken as
	// being stored: for the clocks of replicas.
	claimMargin = 2 * time.Second
	// republishPause spaces the publishes of an event whose answer was
	// lost, within one request.
	republishPause = 500 * time.Millisecond
	// markTimeout bounds marking a claim whose store went unanswered,
	// after the request's own time is over.
	markTimeout = 2 * time.Second
	// clockMargin is how far a replica's clock may be from the server's
	// for the trail's records to be matched to a claim's times.
	clockMargin = time.Hour
)

// States of an entry.
const (
	stateStoring = "storing"
	stateStored  = "stored"
)

// BucketConfig is the bucket's configuration with replicas replicas.
func BucketConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "revoker: per event taken by the HTTP ingress, its caller, body digest and place in the work stream",
		History:     1,
		TTL:         BucketTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	}
}

// entry is what the bucket keeps of one event.
type entry struct {
	Caller     string    `json:"caller"`
	BodySHA256 string    `json:"body_sha256"`
	State      string    `json:"state"`
	EventID    string    `json:"event_id"`
	Subject    string    `json:"subject"`
	AccountID  string    `json:"account_id"`
	KeyID      string    `json:"key_id"`
	Urgent     bool      `json:"urgent,omitempty"`
	Stream     string    `json:"stream,omitempty"`
	Sequence   uint64    `json:"sequence,omitempty"`
	TraceID    string    `json:"trace_id,omitempty"`
	ClaimedAt  time.Time `json:"claimed_at"`
	StoredAt   time.Time `json:"stored_at,omitzero"`
	// EventStoredAt is when the work stream stored the event, where the
	// ingress could read it back (StoredAt is the ingress's own clock):
	// only records of that very event are believed.
	EventStoredAt time.Time `json:"event_stored_at,omitzero"`
	// EventStoredAfter, where EventStoredAt is not known, is when the work
	// stream that stored the event was made (queue.Published.StoredAfter).
	EventStoredAfter time.Time `json:"event_stored_after,omitzero"`
	// StoredAs is the id the event is stored under when it is not
	// EventID: another event held that id (see publish).
	StoredAs string `json:"stored_as,omitempty"`
	// Tried is when the event was first published under its id, by this
	// claim or one it took over: within the work stream's duplicate
	// window from then, publishing it again cannot store it twice.
	Tried time.Time `json:"tried,omitzero"`
	// Until is when the request that claimed it stops storing, answered
	// or not (its store time): a repeat after it takes the claim over
	// rather than be told 409, which paging tools drop.
	Until time.Time `json:"until,omitzero"`
	// Lost: the request that wrote this claim ended with a publish
	// unanswered; nobody is storing the event now.
	Lost bool `json:"lost,omitempty"`
	// Unsure: some try of the event, by this claim or one it took over,
	// went unanswered, so it may be stored whatever a later try is told.
	Unsure bool `json:"unsure,omitempty"`

	// repeat: a request before this one stored the event.
	repeat bool
	// written is when the server stored the entry, where it was read:
	// what the entry says of its own times is bounded by it.
	written time.Time
}

// published is the stored event an entry names.
func (e entry) published() queue.Published {
	return queue.Published{EventID: e.storedID(), AccountID: e.AccountID, KeyID: e.KeyID, Subject: e.Subject,
		Stream: e.Stream, Sequence: e.Sequence, TraceID: e.TraceID, StoredAt: e.EventStoredAt, StoredAfter: e.EventStoredAfter}
}

// end is when a "storing" claim stops holding off others: its request's
// end, and a margin for clocks (or StaleClaim, for a claim naming none).
func (e entry) end() time.Time {
	if e.Lost {
		// Its request has ended: nobody is storing it.
		return time.Time{}
	}
	// No later than StaleClaim after the claim, whatever it says, nor a
	// store time after the server stored it: a replica's clock ahead
	// must not hold its claim's key for as long.
	end := e.ClaimedAt.Add(StaleClaim)
	if !e.Until.IsZero() && e.Until.Add(claimMargin).Before(end) {
		end = e.Until.Add(claimMargin)
	}
	if !e.written.IsZero() && e.written.Add(storeTimeout+claimMargin).Before(end) {
		end = e.written.Add(storeTimeout + claimMargin)
	}
	return end
}

// storedID is the id the work stream holds the event under.
func (e entry) storedID() string {
	if e.StoredAs != "" {
		return e.StoredAs
	}
	return e.EventID
}

// sane reports whether an entry read from the bucket is one the ingress
// could have written for id (SPEC §4 "The proof", point 8: what is read
// from shared state is checked, not believed).
func (e entry) sane(id string) bool {
	ok := e.EventID == id && callerName.MatchString(e.Caller) && len(e.BodySHA256) == 64 &&
		cloudflare.ValidIdentifier(e.AccountID) && cloudflare.ValidIdentifier(e.KeyID) &&
		(e.StoredAs == "" || strings.HasPrefix(e.StoredAs, id+":"))
	switch e.State {
	case stateStoring:
		return ok
	case stateStored:
		return ok && e.Stream != "" && e.Sequence > 0
	}
	return false
}

// entryKey is the bucket key of an event id: a digest, since ids hold
// characters keys may not.
func entryKey(id string) string {
	sum := sha256.Sum256([]byte(id))
	return "e." + hex.EncodeToString(sum[:])
}

func bodyDigest(body []byte) string {
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:])
}

// bucket binds the bucket (creating it when told to) on first use, and
// again after a failure: NATS may be away when the ingress starts.
func (s *Server) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	return s.kv.Get(ctx)
}

// lookup returns the entry of event id, found false when there is none.
func (s *Server) lookup(ctx context.Context, id string) (e entry, found bool, err error) {
	kv, err := s.bucket(ctx)
	if err != nil {
		return e, false, err
	}
	got, err := kv.Get(ctx, entryKey(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return e, false, nil
	}
	if err != nil {
		s.kv.Drop(kv, err)
		return e, false, err
	}
	if json.Unmarshal(got.Value(), &e) != nil || !e.sane(id) {
		return entry{}, false, nil
	}
	e.written = got.Created()
	return e, true, nil
}

// store stores the event of claim (its body) once per event id, and
// returns its entry: the first
// request claims the id with a Create (one winner among racing replicas),
// publishes, and marks the entry stored; a repeat with the same body gets
// the stored event, one with another body 422, and one while the first is
// still storing 409.
func (s *Server) store(ctx context.Context, claim entry, ev event.Event, body []byte) (entry, *Problem) {
	kv, err := s.bucket(ctx)
	if err != nil {
		s.log.Warn("ingress: bucket unreachable", zap.Error(err))
		return entry{}, problem(KindUnavailable, "the ingress bucket cannot be reached: try again").retry(retryUnavailable)
	}
	key := entryKey(claim.EventID)
	for range 3 {
		claim.ClaimedAt, claim.Tried, claim.Until = s.now(), s.now(), s.now().Add(storeTimeout)
		value, _ := json.Marshal(claim)
		rev, err := kv.Create(ctx, key, value)
		if err == nil {
			return s.publish(ctx, kv, key, rev, claim, ev, body)
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			s.kv.Drop(kv, err) // a bucket lost is made again at the next request
			s.log.Warn("ingress: claim not stored", zap.Error(err))
			return entry{}, problem(KindUnavailable, "the event was not stored: try again").retry(retryUnavailable)
		}
		got, err := kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // released meanwhile: claim again
		}
		if err != nil {
			// A claim is there, unread: an earlier request's event may be
			// stored.
			return entry{}, s.storeUnknown()
		}
		var first entry
		first.written = got.Created()
		if json.Unmarshal(got.Value(), &first) != nil || !first.sane(claim.EventID) || first.Caller != claim.Caller {
			return entry{}, problem(KindIDTaken, "the idempotency key names an entry this request cannot use: use another key")
		}
		if first.BodySHA256 != claim.BodySHA256 {
			return entry{}, problem(KindKeyReused, "this idempotency key was used with another body: use another key")
		}
		if first.State == stateStored {
			first.repeat = true
			return first, nil
		}
		if s.now().Before(first.end()) {
			return entry{}, problem(KindInProgress, "a request with this idempotency key is still being stored: repeat it shortly").retry(1)
		}
		// The first request's replica stopped while storing, or lost the
		// stream's answer: take its claim over, on the first's subject.
		// Publishing under the same id is safe within the work stream's
		// duplicate window of the first's store; the trail is looked at
		// first all the same, since whether that window has passed is
		// known only by the first's replica's clock.
		claim.ClaimedAt, claim.Until, claim.Lost = s.now(), s.now().Add(storeTimeout), false
		// Unsure whatever the first says: a request that neither marked its
		// event stored nor released its claim may have stored it (a crash,
		// or NATS away before the mark).
		claim.StoredAs, claim.Tried, claim.Unsure, claim.Subject, claim.Urgent = first.StoredAs, first.Tried, true, first.Subject, first.Urgent
		if claim.Tried.IsZero() {
			claim.Tried = first.ClaimedAt
		}
		value, _ = json.Marshal(claim)
		rev, err = kv.Update(ctx, key, value, got.Revision())
		if err == nil {
			if claim.Unsure {
				if found, ok := s.recorded(ctx, claim); ok {
					s.mark(ctx, kv, key, rev, found)
					found.repeat = true
					return found, nil
				}
				// Or still waiting in the work stream, past the
				// duplicate window that would drop a second copy (a
				// backlog behind it): the same event, not stored again.
				if found, ok := s.stillQueued(ctx, claim, body); ok {
					s.mark(ctx, kv, key, rev, found)
					found.repeat = true
					return found, nil
				}
				if s.now().Sub(claim.Tried) > s.cfg.Client.RepublishWithin(ctx) {
					s.log.Warn("ingress: an event whose store went unanswered may be stored again past the work stream's duplicate window, with no record of it yet (a key revoked twice, never not at all)",
						zap.String("event_id", untrusted.Line(claim.EventID, 256)), zap.String("trace_id", tracing.TraceID(ctx)))
				}
			}
			return s.publish(ctx, kv, key, rev, claim, ev, body)
		}
		if !wrongLastSequence(err) {
			// The claim it would replace may have stored the event.
			return entry{}, s.storeUnknown()
		}
		// Another request took it over first: look again.
	}
	return entry{}, problem(KindInProgress, "a request with this idempotency key is still being stored: repeat it shortly").retry(1)
}

// publish stores the claimed event in the work stream and marks its entry
// stored.
//
// An id another event holds (a publisher may plant one under the id a
// caller's key will make) does not refuse the request: an incident's
// revocation must not be lost to a 409 a paging tool drops. The event is
// stored under the id, a colon and a suffix nobody can guess, kept in the
// claim first so that a request taking the claim over uses it too.
//
// A publish the stream refused releases the claim, so a retry is not
// refused as in progress. One whose answer was lost (a timeout, a dropped
// connection) is published again under the same id within the request;
// if none is answered, the event may have been stored: the claim is kept,
// marked lost, so that a repeat takes it over at once.
func (s *Server) publish(ctx context.Context, kv jetstream.KeyValue, key string, rev uint64, claim entry, ev event.Event, body []byte) (entry, *Problem) {
	var (
		p   queue.Published
		err error
		// unanswered: a publish of this request went unanswered, so the
		// event may be stored whatever a later one is told.
		unanswered bool
	)
	for {
		// An answer lost: the same id again, while the work stream would
		// drop a second copy as a duplicate, until one is answered.
		var lost bool
		p, lost, err = s.cfg.Client.Store(ctx, claim.Subject, claim.storedID(), ev, body, republishPause)
		unanswered = unanswered || lost
		if errors.Is(err, queue.ErrIDTaken) && claim.StoredAs == "" {
			s.log.Warn("ingress: another event holds the id this request makes; storing it under an id of its own",
				zap.String("event_id", untrusted.Line(claim.EventID, 256)), zap.String("trace_id", tracing.TraceID(ctx)))
			claim.StoredAs = claim.EventID + ":" + rand.Text()
			value, _ := json.Marshal(claim)
			next, uerr := kv.Update(ctx, key, value, rev)
			if uerr != nil {
				// Taken over meanwhile, or not written: the claim is not
				// this request's to release, nor to mark.
				s.log.Warn("ingress: a claim could not be given its own id; the request is left to a repeat", zap.Error(uerr))
				return entry{}, s.storeUnknown()
			}
			rev = next
			continue
		}
		break
	}
	if err != nil {
		// A claim marked lost before (taken over here) may be stored too.
		if !queue.Refused(err) || unanswered || claim.Unsure {
			// Marked for a repeat, and for a lookup to look in the trail;
			// with a moment of its own, as the request's time is over.
			claim.Lost, claim.Unsure, claim.Until = true, true, s.now()
			value, _ := json.Marshal(claim)
			mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), markTimeout)
			_, uerr := kv.Update(mctx, key, value, rev)
			cancel()
			if uerr != nil {
				s.log.Warn("ingress: a claim whose event may be stored could not be marked so; a repeat takes it over once its store time is over",
					zap.Error(uerr))
			}
			s.log.Warn("ingress: the work stream's answer was lost; the event may be stored", zap.Error(err))
			return entry{}, s.storeUnknown()
		}
		retry := retryUnavailable
		if derr := kv.Delete(ctx, key, jetstream.LastRevision(rev)); derr != nil {
			// A repeat before the claim's end would be told 409, which
			// paging tools drop: it is asked to come after.
			retry = max(retry, int(claim.end().Sub(s.now())/time.Second)+1)
			s.log.Warn("ingress: a failed claim could not be released; a repeat takes it over at its end",
				zap.Int("retry_after_seconds", retry), zap.Error(derr))
		}
		if errors.Is(err, queue.ErrIDTaken) {
			return entry{}, problem(KindIDTaken, "%v", err)
		}
		s.log.Warn("ingress: an event could not be stored", zap.Error(err))
		return entry{}, problem(KindUnavailable, "the event was not stored (NATS unreachable or the work stream refused it): try again").retry(retry)
	}
	stored := claim
	stored.State, stored.Stream, stored.Sequence, stored.TraceID, stored.StoredAt = stateStored, p.Stream, p.Sequence, p.TraceID, s.now()
	stored.EventStoredAt, stored.EventStoredAfter = p.StoredAt, p.StoredAfter
	s.mark(ctx, kv, key, rev, stored)
	return stored, nil
}

// storedWithin is when claim's publishes could have stored its event:
// from the first try to the end of the duplicate window of the last (a
// request taking the claim over may have stored it later), give or take
// clockMargin, since the claim's times are its replicas' clocks and a
// stored event's the server's. An older event under a reused key is older
// by BucketTTL at least: its entry held the key that long.
func (s *Server) storedWithin(ctx context.Context, claim entry) (from, until time.Time) {
	last := claim.Until
	if last.Before(claim.Tried) {
		last = claim.Tried
	}
	return claim.Tried.Add(-clockMargin), last.Add(s.cfg.Client.RepublishWithin(ctx) + queue.RepublishMargin + clockMargin)
}

// stillQueued finds claim's event still waiting in the work stream, for an
// event whose store went unanswered: stored under its id, on its subject,
// with body, while its publishes could have stored it. It returns the
// entry of the event so found.
func (s *Server) stillQueued(ctx context.Context, claim entry, body []byte) (entry, bool) {
	from, until := s.storedWithin(ctx, claim)
	p, found, err := s.cfg.Client.FindStored(ctx, claim.Subject, claim.storedID(), body, from, until)
	if err != nil {
		s.log.Warn("ingress: the work stream could not be read for an event whose store went unanswered", zap.Error(err))
	}
	if !found {
		return entry{}, false
	}
	e := claim
	e.State, e.Stream, e.Sequence, e.TraceID, e.StoredAt, e.EventStoredAt = stateStored, p.Stream, p.Sequence, p.TraceID, s.now(), p.StoredAt
	return e, true
}

// storeUnknown is the answer to a request whose event may be stored.
func (s *Server) storeUnknown() *Problem {
	return problem(KindStoreUnknown, "the work stream's answer was lost, and NATS did not answer again within the request: the event may have been stored; repeat the request with the same idempotency key, which looks for it before storing it again").retry(retryUnavailable)
}

// recorded finds claim's event in the trail, for an event whose store went
// unanswered: a record on its key's subject naming its id (as records cut
// it), its subject and the work stream, of an event the stream stored
// while this claim's publishes could have stored it (from its first try
// to the end of the stream's duplicate window, with a margin for clocks):
// an id and key reused after the bucket forgot them are another event. It
// returns the entry of the event so found.
func (s *Server) recorded(ctx context.Context, claim entry) (entry, bool) {
	cl := s.cfg.Client
	if cl.OutcomePrefix == "" {
		return entry{}, false
	}
	recs, err := queue.KeyOutcomes(ctx, cl.JetStream(), cl.OutcomeStream, cl.OutcomePrefix, claim.AccountID, claim.KeyID, cl.Stray)
	if err != nil {
		s.log.Warn("ingress: the trail could not be read for an event whose store went unanswered", zap.Error(err))
		return entry{}, false
	}
	id := untrusted.Chars(claim.storedID(), event.MaxRecordedID)
	from, until := s.storedWithin(ctx, claim)
	for i := len(recs) - 1; i >= 0; i-- {
		rec := recs[i]
		stored, err := time.Parse(time.RFC3339Nano, rec.PublishedAt)
		if rec.EventID != id || rec.Stream != cl.Stream || rec.Subject != claim.Subject || rec.Sequence == 0 ||
			rec.Reason == event.InvalidEvent || err != nil || stored.Before(from) || stored.After(until) {
			continue
		}
		found := claim
		found.State, found.Stream, found.Sequence, found.TraceID, found.StoredAt = stateStored, rec.Stream, rec.Sequence, rec.TraceID, s.now()
		found.EventStoredAt = stored
		return found, true
	}
	return entry{}, false
}

// mark writes the entry of a stored event over its claim (at rev); a
// write that fails is tried again in the background.
func (s *Server) mark(ctx context.Context, kv jetstream.KeyValue, key string, rev uint64, stored entry) {
	value, _ := json.Marshal(stored)
	var uerr error
	for range 3 {
		if _, uerr = kv.Update(ctx, key, value, rev); uerr == nil || wrongLastSequence(uerr) {
			break
		}
	}
	if uerr != nil {
		// The event is stored, and the answer says so. Marking it is
		// tried again in the background until the claim would go stale; a
		// GET meanwhile answers "storing", never "not found".
		s.log.Warn("ingress: a stored event's entry could not be marked stored; trying again", zap.Error(uerr))
		go s.markStored(kv, key, value, rev)
	}
}

// markStored writes a stored event's entry, retrying until it is written,
// someone else wrote the key, or StaleClaim has passed.
func (s *Server) markStored(kv jetstream.KeyValue, key string, value []byte, rev uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), StaleClaim)
	defer cancel()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			s.log.Error("ingress: a stored event's entry could not be marked stored; a repeat of its request stores it again under the same id")
			return
		case <-t.C:
		}
		if _, err := kv.Update(ctx, key, value, rev); err == nil || wrongLastSequence(err) {
			return
		}
	}
}

// wrongLastSequence reports a write refused because the key's revision
// was not the one expected.
func wrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
