package credentials_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/revoker/revoker/credentials"
	"github.com/revoker/revoker/queue/queuetest"
)

// recorder keeps what Watch reported.
type recorder struct {
	mu      sync.Mutex
	sets    []*credentials.Set
	errs    []error
	current *credentials.Set
}

func (r *recorder) onChange(s *credentials.Set) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sets = append(r.sets, s)
	r.current = s
}

func (r *recorder) onError(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, err)
}

func (r *recorder) counts() (sets, errs int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.sets), len(r.errs)
}

func (r *recorder) credentialFor(acc string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.current == nil {
		return ""
	}
	c, ok := r.current.For(acc)
	if !ok {
		return ""
	}
	return c.Name
}

func oneCredential(name, tokenFile, account string) string {
	return "credentials:\n  - name: " + name + "\n    token_file: " + tokenFile + "\n    accounts: [" + account + "]\n"
}

// watch loads path and watches it every 10 ms until the test ends.
func watch(t *testing.T, path string) (*credentials.Set, *recorder) {
	t.Helper()
	set, err := credentials.Load(path, opts("https://api.cloudflare.com/client/v4"))
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		credentials.Watch(ctx, set, 10*time.Millisecond, rec.onChange, rec.onError)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return set, rec
}

// A file written in place is read again within 5 s.
func TestWatchInPlace(t *testing.T) {
	d := dir(t)
	path := filepath.Join(d, "credentials.yaml")
	write(t, path, oneCredential("a", "tok-a", accA))
	_, rec := watch(t, path)

	write(t, path, oneCredential("b", "tok-b", accA))
	queuetest.Eventually(t, 5*time.Second, "the new set", func() bool { return rec.credentialFor(accA) == "b" })
	if sets, errs := rec.counts(); sets != 1 || errs != 0 {
		t.Errorf("%d sets, %d errors", sets, errs)
	}
}

// A file renamed over the watched one counts as a change too.
func TestWatchRename(t *testing.T) {
	d := dir(t)
	path := filepath.Join(d, "credentials.yaml")
	write(t, path, oneCredential("a", "tok-a", accA))
	_, rec := watch(t, path)

	tmp := filepath.Join(d, ".credentials.yaml.new")
	write(t, tmp, oneCredential("a", "tok-a", accB))
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	queuetest.Eventually(t, 5*time.Second, "the renamed set", func() bool { return rec.credentialFor(accB) == "a" })
	if rec.credentialFor(accA) != "" {
		t.Error("the old set's account is still routed")
	}
}

// A change that does not load keeps the set in use and is reported once,
// until the file changes again.
func TestWatchBadChange(t *testing.T) {
	d := dir(t)
	path := filepath.Join(d, "credentials.yaml")
	write(t, path, oneCredential("a", "tok-a", accA))
	set, rec := watch(t, path)

	write(t, path, "credentials:\n  - name: a\n    token: "+tokB+"\n")
	queuetest.Eventually(t, 5*time.Second, "the error", func() bool { _, errs := rec.counts(); return errs == 1 })

	// Another bad content is reported again; many checks ran over the first
	// one meanwhile, none of them reported it twice.
	write(t, path, oneCredential("a", "missing-file", accA))
	queuetest.Eventually(t, 5*time.Second, "the second error", func() bool { _, errs := rec.counts(); return errs == 2 })

	rec.mu.Lock()
	first, second := rec.errs[0].Error(), rec.errs[1].Error()
	rec.mu.Unlock()
	if !strings.Contains(first, "line 3") || !strings.Contains(first, "secrets are not allowed") || strings.Contains(first, tokB) {
		t.Errorf("first error: %s", first)
	}
	if !strings.Contains(second, "line 3") || !strings.Contains(second, "token_file") {
		t.Errorf("second error: %s", second)
	}
	if c, ok := set.For(accA); !ok || c.Name != "a" {
		t.Error("the set in use changed")
	}

	write(t, path, oneCredential("c", "tok-b", accA))
	queuetest.Eventually(t, 5*time.Second, "the good set", func() bool { return rec.credentialFor(accA) == "c" })
	if sets, errs := rec.counts(); sets != 1 || errs != 2 {
		t.Errorf("%d sets, %d errors", sets, errs)
	}
}
