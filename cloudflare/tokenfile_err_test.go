package cloudflare_test

import (
	"errors"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/revoker/revoker/cloudflare"
)

// A token file that cannot be read is reported once per distinct error, and
// once more when it can be read again; the previous token is used meanwhile.
func TestTokenFileErrorReportedOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte("first-"+secret), 0o600); err != nil {
		t.Fatal(err)
	}
	tf, err := cloudflare.NewTokenFile(path, 0) // check on every call
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []error
	tf.SetOnError(func(err error) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, err)
	})
	reports := func() []error {
		mu.Lock()
		defer mu.Unlock()
		return append([]error(nil), got...)
	}
	apply := func(times int) string {
		t.Helper()
		var auth string
		for range times {
			req, _ := http.NewRequest(http.MethodDelete, "http://127.0.0.1/", nil)
			if err := tf.Apply(req); err != nil {
				t.Fatal(err)
			}
			auth = req.Header.Get("Authorization")
		}
		return auth
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if auth := apply(5); auth != "Bearer first-"+secret {
		t.Fatalf("with the file gone, Authorization = %q: the previous token must be kept", auth)
	}
	r := reports()
	if len(r) != 1 || !errors.Is(r[0], fs.ErrNotExist) {
		t.Fatalf("after 5 checks of a deleted file, reports = %v, want one not-exist error", r)
	}

	// A different failure is a new report.
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	apply(3)
	r = reports()
	if len(r) != 2 || r[1] == nil || !strings.Contains(r[1].Error(), "not a regular file") {
		t.Fatalf("after the path became a directory, reports = %v", r)
	}
	for _, e := range r {
		if strings.Contains(e.Error(), secret) {
			t.Errorf("error holds the token: %v", e)
		}
	}

	// Readable again: one nil report, and the new token is used.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("second-"+secret), 0o600); err != nil {
		t.Fatal(err)
	}
	if auth := apply(3); auth != "Bearer second-"+secret {
		t.Fatalf("Authorization = %q after the file came back", auth)
	}
	r = reports()
	if len(r) != 3 || r[2] != nil {
		t.Fatalf("after the file came back, reports = %v, want a final nil", r)
	}
}
