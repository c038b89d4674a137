package queue_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/revoker/revoker/queue"
	"github.com/revoker/revoker/queue/queuetest"
)

// The event index answers for the id it was given, and believes an entry
// only where it names that id, the work stream and a valid key: a value
// planted under an id's key points nowhere.
func TestEventIndexBelievesOnlyWhatNamesTheID(t *testing.T) {
	_, _, js := queuetest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	x := queue.NewEventIndex(js, "REVOCATIONS", 1, true, zap.NewNop())
	p := queue.Published{EventID: "svc-1", AccountID: "acct", KeyID: "key1", Stream: "REVOCATIONS", Sequence: 5}
	if err := x.Remember(ctx, p); err != nil {
		t.Fatal(err)
	}
	got, found, err := x.Find(ctx, "svc-1")
	if err != nil || !found || got.AccountID != "acct" || got.KeyID != "key1" || got.Sequence != 5 {
		t.Fatalf("Find(svc-1) = %+v, %v, %v; want p", got, found, err)
	}
	if _, found, err := x.Find(ctx, "svc-2"); err != nil || found {
		t.Fatalf("Find of an id never remembered: found %v, err %v", found, err)
	}

	kv, err := js.KeyValue(ctx, queue.EventIndexBucket)
	if err != nil {
		t.Fatal(err)
	}
	plant := func(id string, v map[string]any) {
		t.Helper()
		sum := sha256.Sum256([]byte(id))
		b, _ := json.Marshal(v)
		if _, err := kv.Put(ctx, "id."+hex.EncodeToString(sum[:16]), b); err != nil {
			t.Fatal(err)
		}
	}
	for name, v := range map[string]map[string]any{
		"another id":     {"event_id": "other", "account_id": "acct", "key_id": "key1", "stream": "REVOCATIONS", "sequence": 5},
		"another stream": {"event_id": "planted", "account_id": "acct", "key_id": "key1", "stream": "ELSEWHERE", "sequence": 5},
		"a bad key":      {"event_id": "planted", "account_id": "acct", "key_id": "../x", "stream": "REVOCATIONS", "sequence": 5},
		"no sequence":    {"event_id": "planted", "account_id": "acct", "key_id": "key1", "stream": "REVOCATIONS"},
	} {
		plant("planted", v)
		if got, found, err := x.Find(ctx, "planted"); err != nil || found {
			t.Errorf("%s: Find believed %+v (err %v)", name, got, err)
		}
	}
}

// An id stored again for another event within the index's day names
// neither alone (ids can be reused; SPEC §5a): Find says so rather than
// answer for the last one. The same event noted again is still found.
func TestEventIndexIDOfSeveralEventsNamesNone(t *testing.T) {
	_, _, js := queuetest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	x := queue.NewEventIndex(js, "REVOCATIONS", 1, true, zap.NewNop())
	first := queue.Published{EventID: "X-incident", AccountID: "other", KeyID: "victim", Stream: "REVOCATIONS", Sequence: 1}
	for range 2 { // a retried request: the same event
		if err := x.Remember(ctx, first); err != nil {
			t.Fatal(err)
		}
	}
	if got, found, err := x.Find(ctx, "X-incident"); err != nil || !found || got.Sequence != 1 {
		t.Fatalf("Find = %+v, %v, %v; want the one event", got, found, err)
	}
	reused := queue.Published{EventID: "X-incident", AccountID: "acct1", KeyID: "bait", Stream: "REVOCATIONS", Sequence: 2}
	if err := x.Remember(ctx, reused); err != nil {
		t.Fatal(err)
	}
	if got, found, err := x.Find(ctx, "X-incident"); !errors.Is(err, queue.ErrSeveralEvents) || found {
		t.Fatalf("Find of a reused id = %+v, %v, %v; want ErrSeveralEvents", got, found, err)
	}
	if err := x.Remember(ctx, first); err != nil { // and it stays so
		t.Fatal(err)
	}
	if _, _, err := x.Find(ctx, "X-incident"); !errors.Is(err, queue.ErrSeveralEvents) {
		t.Fatalf("Find after the first event was noted again: %v; want ErrSeveralEvents", err)
	}
}

// TestEventIndexBucketLostIsMadeAgain: the index's bucket is lost while
// the service runs (deleted by hand, lost with its only replica). The use
// that finds it gone fails; the next binds it again, making it, instead of
// failing until a restart.
func TestEventIndexBucketLostIsMadeAgain(t *testing.T) {
	_, _, js := queuetest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	x := queue.NewEventIndex(js, "REVOCATIONS", 1, true, zap.NewNop())
	p := queue.Published{EventID: "svc-1", AccountID: "acct", KeyID: "key1", Stream: "REVOCATIONS", Sequence: 5}
	if err := x.Remember(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteKeyValue(ctx, queue.EventIndexBucket); err != nil {
		t.Fatal(err)
	}
	queuetest.Eventually(t, 10*time.Second, "remembered again once the bucket is made again", func() bool {
		return x.Remember(ctx, p) == nil
	})
	if got, found, err := x.Find(ctx, "svc-1"); err != nil || !found || got.Sequence != 5 {
		t.Fatalf("Find(svc-1) = %+v, %v, %v; want p", got, found, err)
	}
}
