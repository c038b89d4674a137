package credentials

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Each check of an unchanged bad file stays silent; a change of content or
// of the error is reported again, and a good file resets it all.
func TestWatcherReportsOnce(t *testing.T) {
	d := t.TempDir()
	tok := filepath.Join(d, "tok")
	path := filepath.Join(d, "c.yaml")
	mustWrite(t, tok, "SECRETtoken0123456789")
	good := "credentials:\n  - name: a\n    token_file: tok\n    accounts: [\"*\"]\n"
	mustWrite(t, path, good)
	set, err := Load(path, Options{BaseURL: "https://api.cloudflare.com/client/v4", SecretCheck: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var errs []error
	changes := 0
	w := watcher{cur: set, prev: set.digest, onChange: func(*Set) { changes++ }, onError: func(err error) { errs = append(errs, err) }}

	for range 3 {
		w.check() // unchanged
	}
	// A content read once is not acted on: it may be half written.
	mustWrite(t, path, "credentials: [")
	w.check()
	if len(errs) != 0 {
		t.Fatalf("reported after one read: %v", errs)
	}
	for range 5 {
		w.check()
	}
	if len(errs) != 1 {
		t.Fatalf("bad content checked 6 times: %d reports", len(errs))
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		w.check()
	}
	if len(errs) != 2 || !os.IsNotExist(unwrapAll(errs[1])) {
		t.Fatalf("file gone: %v", errs)
	}
	// Back to what is in use: nothing to report, nothing changed; the same
	// bad content afterwards is news again.
	mustWrite(t, path, good)
	w.check()
	w.check()
	mustWrite(t, path, "credentials: [")
	w.check()
	w.check()
	w.check()
	if len(errs) != 3 || changes != 0 || w.cur != set {
		t.Fatalf("%d reports, %d changes", len(errs), changes)
	}
	// A good content read once is not loaded either.
	mustWrite(t, path, good+"# touched\n")
	w.check()
	if changes != 0 {
		t.Fatal("loaded after one read")
	}
	w.check()
	w.check()
	if changes != 1 || w.cur == set || len(errs) != 3 {
		t.Fatalf("good content: %d changes, %d reports", changes, len(errs))
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

func mustWrite(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
