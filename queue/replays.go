package queue

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/revoker/revoker/config"
)

// ReplaysBucket is the key-value bucket in which `revoker dlq replay`
// notes, before each republish, the Nats-Msg-Id it republishes under and
// the id of the event it replays. Anyone who may publish events can set
// Revoker-Replay-Of; only the operator may write this bucket, so the header
// is believed only where an entry confirms it.
const ReplaysBucket = "revoker_replays"

// replaysTTL outlives any replay's deliveries by far, like the ledger's.
const replaysTTL = 7 * 24 * time.Hour

// ReplaysConfig is the bucket revoker creates.
func ReplaysConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      ReplaysBucket,
		Description: "revoker: per replayed dead letter, the replay's message id and the event it replays",
		History:     1,
		TTL:         replaysTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	}
}

// Replays verifies the Revoker-Replay-Of of a delivery, and lets the
// replayer note its replays. It is usable once bound.
type Replays struct {
	kv atomic.Pointer[jetstream.KeyValue]
	js atomic.Pointer[jetstream.JetStream] // reads go by STREAM.MSG.GET (see load)
	// DLQStream is the dead-letter stream, whose replayed records the
	// worker removes (Take); "" removes none.
	DLQStream string
}

// errReplaysUnbound means the bucket is not bound yet.
var errReplaysUnbound = errors.New("replays bucket not bound yet")

// replayNote is one entry of the bucket.
type replayNote struct {
	ReplayOf string `json:"replay_of"`
	// BodySHA256 is the hex SHA-256 of the body republished: the replay's
	// id is guessable, and once the work stream's duplicate window has
	// passed anyone may publish under it again.
	BodySHA256 string `json:"body_sha256"`
	// WorkSequence is where the work stream stored the replay, set once it
	// acknowledged the replay as new: a later duplicate answer naming this
	// sequence is the replay itself, even after the worker consumed it.
	WorkSequence uint64 `json:"work_sequence,omitempty"`
	// DeadLetter is the sequence of the record replayed, in the
	// dead-letter stream: the worker removes it once it takes the replay.
	DeadLetter uint64 `json:"dead_letter,omitempty"`
}

func bodyDigest(body []byte) string {
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:])
}

// BindReplays binds (and where cfg allows, creates) the replays bucket.
func BindReplays(ctx context.Context, js jetstream.JetStream, cfg config.Topology, log *zap.Logger) (*Replays, error) {
	r := &Replays{DLQStream: cfg.DLQStream}
	return r, r.bind(ctx, js, cfg.Create, cfg.Replicas, log)
}

// bind binds the bucket, creating it when create is set.
func (r *Replays) bind(ctx context.Context, js jetstream.JetStream, create bool, replicas int, log *zap.Logger) error {
	kv, err := bindBucket(ctx, js, ReplaysConfig(replicas), create, log)
	if err != nil {
		return err
	}
	r.kv.Store(&kv)
	r.js.Store(&js)
	return nil
}

// replayKey is the entry's key: message ids may hold characters a key
// may not, a digest never does.
func replayKey(msgID string) string {
	sum := sha256.Sum256([]byte(msgID))
	return hex.EncodeToString(sum[:])
}

func (r *Replays) bucket() (jetstream.KeyValue, error) {
	kv := r.kv.Load()
	if kv == nil {
		return nil, errReplaysUnbound
	}
	return *kv, nil
}

// load returns the entry for msgID; found is false when there is none.
func (r *Replays) load(ctx context.Context, msgID string) (n replayNote, found bool, err error) {
	found, err = r.loadKey(ctx, replayKey(msgID), &n)
	return n, found, err
}

// loadKey reads the entry key into v; found is false when there is none
// (or it is damaged: it confirms nothing). It reads with STREAM.MSG.GET,
// not the bucket's direct get: the shipped permissions give the operator
// no direct get, whose answer is the stored bytes (the operator's own) and
// could be sent to any subject.
func (r *Replays) loadKey(ctx context.Context, key string, v any) (found bool, err error) {
	js := r.js.Load()
	if js == nil {
		return false, errReplaysUnbound
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	m, err := msgGet(ctx, *js, "KV_"+ReplaysBucket, msgGetRequest{LastFor: "$KV." + ReplaysBucket + "." + key})
	switch {
	case err != nil:
		return false, fmt.Errorf("read %s: %w", ReplaysBucket, err)
	case m == nil:
		return false, nil
	}
	if op := m.header().Get("KV-Operation"); op == "DEL" || op == "PURGE" {
		return false, nil
	}
	return json.Unmarshal(m.Data, v) == nil, nil
}

func (r *Replays) save(ctx context.Context, msgID string, n replayNote) error {
	return r.saveKey(ctx, replayKey(msgID), n)
}

// saveKey writes v as the entry key.
func (r *Replays) saveKey(ctx context.Context, key string, v any) error {
	kv, err := r.bucket()
	if err != nil {
		return err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := kv.Put(ctx, key, b); err != nil {
		return fmt.Errorf("write %s: %w", ReplaysBucket, err)
	}
	return nil
}

// replayPlace is where a dead letter's latest replay went: its message id
// (an unguessable one where a planted message took replay:<seq>) and its
// sequence in the work stream. It is kept under placeKey, which no
// message id's key (a hex digest) can be.
type replayPlace struct {
	MsgID        string `json:"msg_id"`
	WorkSequence uint64 `json:"work_sequence"`
}

func placeKey(deadLetter uint64) string { return "dead-letter-" + strconv.FormatUint(deadLetter, 10) }

// place returns where the dead letter's latest replay went.
func (r *Replays) place(ctx context.Context, deadLetter uint64) (p replayPlace, found bool, err error) {
	found, err = r.loadKey(ctx, placeKey(deadLetter), &p)
	return p, found, err
}

// Note records that the message msgID about to be published with body
// replays the event originalID, kept at deadLetter in the dead-letter
// stream. The replayer calls it before publishing, so no delivery of the
// replay can come before its entry. An entry already saying so is kept as
// it is (with what it knows of the publish).
func (r *Replays) Note(ctx context.Context, msgID, originalID string, body []byte, deadLetter uint64) error {
	want := replayNote{ReplayOf: originalID, BodySHA256: bodyDigest(body), DeadLetter: deadLetter}
	kv, err := r.bucket()
	if err != nil {
		return err
	}
	b, err := json.Marshal(want)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err = kv.Create(cctx, replayKey(msgID), b)
	cancel()
	if !errors.Is(err, jetstream.ErrKeyExists) {
		if err != nil {
			return fmt.Errorf("write %s: %w", ReplaysBucket, err)
		}
		return nil
	}
	// Noted before: by an earlier run of this replay, which may have
	// recorded where the work stream stored it.
	n, found, err := r.load(ctx, msgID)
	if err != nil {
		return err
	}
	if found && n.names(originalID, body) && n.DeadLetter == deadLetter {
		return nil
	}
	return r.save(ctx, msgID, want)
}

// published records that the work stream stored the replay msgID of the
// dead letter at seq, in its note and as where that dead letter's replay
// went.
func (r *Replays) published(ctx context.Context, msgID, originalID string, body []byte, seq, deadLetter uint64) error {
	if err := r.save(ctx, msgID, replayNote{ReplayOf: originalID, BodySHA256: bodyDigest(body), WorkSequence: seq, DeadLetter: deadLetter}); err != nil {
		return err
	}
	return r.saveKey(ctx, placeKey(deadLetter), replayPlace{MsgID: msgID, WorkSequence: seq})
}

// names reports whether n says that msgID, published with body, replays
// originalID.
func (n replayNote) names(originalID string, body []byte) bool {
	return n.ReplayOf == originalID && n.BodySHA256 == bodyDigest(body)
}

// forget removes the entry for msgID: the message stored under that id is
// not the replay, and must not be believed to be one.
func (r *Replays) forget(ctx context.Context, msgID string) error {
	kv, err := r.bucket()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := kv.Delete(ctx, replayKey(msgID)); err != nil {
		return fmt.Errorf("write %s: %w", ReplaysBucket, err)
	}
	return nil
}

// Verify reports whether the delivery with Nats-Msg-Id msgID is a replay
// of the event claimed: true only if the replayer noted msgID as a replay
// of exactly that event. It cannot tell the replay from a message published
// under the same id after the work stream's duplicate window (the id is
// guessable): VerifyBody can, and is the one to use where the body is at
// hand. An error means the bucket could not be read, not that the claim is
// false.
func (r *Replays) Verify(ctx context.Context, msgID, claimed string) (bool, error) {
	if msgID == "" || claimed == "" {
		return false, nil
	}
	n, found, err := r.load(ctx, msgID)
	if err != nil {
		return false, err
	}
	return found && n.ReplayOf == claimed, nil
}

// VerifyBody is Verify that also requires the delivery's body to be the
// one the replayer republished under msgID and, once the replayer knows
// where the work stream stored it, the delivery's sequence seq to be
// that: a message published later under the same id, claiming the same
// event with the same body, does not pass.
func (r *Replays) VerifyBody(ctx context.Context, msgID, claimed string, body []byte, seq uint64) (bool, error) {
	_, ok, err := r.verifyBody(ctx, msgID, claimed, body, seq)
	return ok, err
}

// verifyBody is VerifyBody, with the entry that confirms the claim.
func (r *Replays) verifyBody(ctx context.Context, msgID, claimed string, body []byte, seq uint64) (replayNote, bool, error) {
	if msgID == "" || claimed == "" {
		return replayNote{}, false, nil
	}
	n, found, err := r.load(ctx, msgID)
	if err != nil {
		return n, false, err
	}
	return n, found && n.names(claimed, body) && (n.WorkSequence == 0 || n.WorkSequence == seq), nil
}

// Take is VerifyBody for the worker taking a delivery on subject, read
// as contentType says, which also removes the dead letter a true replay
// puts back: the replay is stored in the work stream, so the record is no
// longer the only copy of the event. Only the worker removes records
// (SPEC §4, "The proof", point 8; §5: no one who may publish events can
// make a dead letter vanish), and only one whose event the delivery is as
// the worker reads it: the same body, read the same way (its
// Content-Type: the same bytes may be another event as a CloudEvent), on
// the same subject, claimed by its event id (ReplayClaim); never a record
// that keeps only the start of its event. A record already gone (taken
// by an earlier delivery) is fine; one that cannot be removed now is an
// error the caller reports.
func (r *Replays) Take(ctx context.Context, msgID, claimed string, body []byte, seq uint64, subject, contentType string) (verified bool, err error) {
	n, ok, err := r.verifyBody(ctx, msgID, claimed, body, seq)
	if err != nil || !ok || n.DeadLetter == 0 || r.DLQStream == "" {
		return ok, err
	}
	js := r.js.Load()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	m, err := msgGet(ctx, *js, r.DLQStream, msgGetRequest{Seq: n.DeadLetter})
	switch {
	case err != nil:
		return true, fmt.Errorf("read dead letter %d: %w", n.DeadLetter, err)
	case m == nil:
		return true, nil
	}
	rec := deadLetterRecord(n.DeadLetter, m.Time, m.header(), m.Data)
	if rec.BodyTruncated != "" || !bytes.Equal(rec.Body, body) || rec.ContentType != contentType ||
		rec.SourceSubject != subject || ReplayClaim(rec) != claimed {
		return true, nil // another event's record, or one not put back whole
	}
	st, err := (*js).Stream(ctx, r.DLQStream)
	if err == nil {
		err = st.DeleteMsg(ctx, n.DeadLetter)
	}
	if err != nil {
		if m, gerr := msgGet(ctx, *js, r.DLQStream, msgGetRequest{Seq: n.DeadLetter}); gerr == nil && m == nil {
			return true, nil // removed meanwhile
		}
		return true, fmt.Errorf("remove dead letter %d: %w", n.DeadLetter, err)
	}
	return true, nil
}
