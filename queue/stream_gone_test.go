package queue_test

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestWorkStreamDeletedUnderTheWorkerIsMadeAgainWhole: an operator deletes
// the work stream while the worker runs, again and again. The server takes
// a stream out of its list first, then stops its consumers (which tells the
// lanes theirs are gone), and deletes the stream's files last. A stream of
// that name made in between is made from those files, which are then
// deleted under it: it answers no publish again. Whenever the worker makes
// the stream again, it must be one that stores and delivers events.
func TestWorkStreamDeletedUnderTheWorkerIsMadeAgainWhole(t *testing.T) {
	if testing.Short() {
		t.Skip("deletes the work stream twelve times under a running worker")
	}
	s := newStack(t, nil)
	s.start()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for i := range 12 {
		key := fmt.Sprintf("key%d", i)
		if i > 0 {
			if err := s.js.DeleteStream(ctx, s.cfg.Stream); err != nil {
				t.Fatal(err)
			}
		}
		// Once the worker has made the stream again, a publish is stored.
		var err error
		for tries := 0; ; tries++ {
			pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
			_, err = s.js.Publish(pctx, s.cfg.LowestPriority(), []byte(eventJSON(acct, key)))
			pcancel()
			if err == nil || tries == 10 {
				break
			}
		}
		if err != nil {
			info, ierr := s.js.Stream(context.Background(), s.cfg.Stream)
			if ierr == nil {
				t.Fatalf("deletion %d: no publish to the work stream the worker made again was stored in 20 s (%v); the stream reads %+v", i, err, info.CachedInfo().State)
			}
			t.Fatalf("deletion %d: no publish stored in 20 s: %v; the stream: %v", i, err, ierr)
		}
		s.waitFor(key+"'s record", func() bool { return len(s.outcomes()) == i+1 })
		if n := s.deletes(key); n != 1 {
			t.Fatalf("deletion %d: %d calls for the event stored after it; want 1", i, n)
		}
	}
}
