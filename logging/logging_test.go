package logging_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/revoker/revoker/logging"
)

// countingWriter records each write it is given.
type countingWriter struct {
	mu     sync.Mutex
	writes []string
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes = append(w.writes, string(p))
	return len(p), nil
}

func (w *countingWriter) got() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.writes...)
}

// lines is every JSON line written so far, in order.
func (w *countingWriter) lines(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSuffix(strings.Join(w.got(), ""), "\n"), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestInfoLinesShareAWrite: info lines logged together go out in one
// write, whole and in order, within the window.
func TestInfoLinesShareAWrite(t *testing.T) {
	w := &countingWriter{}
	log := logging.New(zap.InfoLevel, "json", w)
	for i := range 100 {
		log.Info("event revoked", zap.Int("n", i))
	}
	waitFor(t, "the batch written", func() bool { return len(w.lines(t)) == 100 })
	if n := len(w.got()); n >= 100 {
		t.Fatalf("%d writes for 100 lines logged at once; want them batched", n)
	}
	for i, l := range w.lines(t) {
		if l["n"] != float64(i) || l["msg"] != "event revoked" {
			t.Fatalf("line %d is %v; lines must keep their order", i, l)
		}
	}
}

// TestWarningsAreWrittenAtOnce: a warning goes out when it is logged, with
// every line waiting before it; Sync writes what is waiting.
func TestWarningsAreWrittenAtOnce(t *testing.T) {
	w := &countingWriter{}
	b := logging.NewBatcher(w, time.Hour) // only a warning or Sync writes
	log := logging.NewWith(zap.InfoLevel, "json", b, w)
	log.Info("first")
	if len(w.got()) != 0 {
		t.Fatal("an info line was written before its window ended")
	}
	log.Warn("requeued")
	if got := w.lines(t); len(got) != 2 || got[0]["msg"] != "first" || got[1]["msg"] != "requeued" {
		t.Fatalf("after a warning: %v; want the waiting line and the warning, in order", got)
	}
	log.Info("last")
	if err := log.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := w.lines(t); len(got) != 3 || got[2]["msg"] != "last" {
		t.Fatalf("after Sync: %v", got)
	}
}

// TestBatcherFullBatch: a batch that reaches its size limit is written at
// once, whatever its age; writers from many goroutines lose nothing.
func TestBatcherFullBatch(t *testing.T) {
	w := &countingWriter{}
	b := logging.NewBatcher(w, time.Hour)
	line := bytes.Repeat([]byte("x"), 1023)
	line = append(line, '\n')
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 32 {
				if _, err := b.Write(line); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if len(w.got()) == 0 {
		t.Fatal("256 KiB waited for a window of an hour; a full batch must be written")
	}
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	if n := len(strings.Join(w.got(), "")); n != 256*1024 {
		t.Fatalf("%d bytes written, want %d", n, 256*1024)
	}
}
