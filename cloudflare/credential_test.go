package cloudflare_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/revoker/revoker/cloudflare"
)

func authOf(t *testing.T, c cloudflare.Credential) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodDelete, "http://example.invalid/", nil)
	if err := c.Apply(req); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return req.Header.Get("Authorization")
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// rewriteInPlace truncates and rewrites the same inode, as an editor or
// `echo > file` does.
func rewriteInPlace(t *testing.T, path, content string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// replaceByRename writes a new file and renames it over path, as secret
// managers and Kubernetes do.
func replaceByRename(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	writeFile(t, tmp, content)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func fp(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:4])
}

func TestIDs(t *testing.T) {
	if got, want := cloudflare.Token(secret).ID(), "token:"+fp(secret); got != want {
		t.Errorf("Token ID = %q, want %q", got, want)
	}
	if cloudflare.Token(" "+secret+"\n").ID() != cloudflare.Token(secret).ID() {
		t.Error("surrounding white space changes the ID")
	}
	re := regexp.MustCompile(`^key:[0-9a-f]{8}$`)
	a, b := cloudflare.LegacyKey("a@b.c", secret).ID(), cloudflare.LegacyKey("a@b.c", secret+"x").ID()
	if !re.MatchString(a) || a == b {
		t.Errorf("legacy IDs %q %q", a, b)
	}
}

func TestTokenFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	tok1 := "tokenAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA1"
	tok2 := "tokenAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA2" // same length: only the content differs
	tok3 := "tokenBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB3"
	tok4 := "tokenCCCC4"

	writeFile(t, path, "  "+tok1+"\n\n")
	f, err := cloudflare.NewTokenFile(path, 0)
	if err != nil {
		t.Fatalf("NewTokenFile: %v", err)
	}
	var changes [][2]string
	f.SetOnChange(func(oldID, newID string) { changes = append(changes, [2]string{oldID, newID}) })

	if got := authOf(t, f); got != "Bearer "+tok1 {
		t.Fatalf("initial: Authorization = %q", got)
	}
	if f.ID() != "file:"+fp(tok1) {
		t.Errorf("ID = %q", f.ID())
	}

	rewriteInPlace(t, path, tok2+"\n")
	if got := authOf(t, f); got != "Bearer "+tok2 {
		t.Fatalf("after in-place rewrite: Authorization = %q", got)
	}

	replaceByRename(t, path, tok3)
	if got := authOf(t, f); got != "Bearer "+tok3 {
		t.Fatalf("after rename: Authorization = %q", got)
	}

	rewriteInPlace(t, path, " \n\t")
	if got := authOf(t, f); got != "Bearer "+tok3 {
		t.Fatalf("empty file: Authorization = %q, want the previous token", got)
	}
	if err := f.Err(); err == nil || !strings.Contains(err.Error(), "empty") || !strings.Contains(err.Error(), path) {
		t.Errorf("Err after empty file = %v", err)
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if got := authOf(t, f); got != "Bearer "+tok3 {
		t.Fatalf("missing file: Authorization = %q, want the previous token", got)
	}
	if err := f.Err(); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Err after removal = %v", err)
	}

	writeFile(t, path, "bad token\nwith lines "+secret)
	if got := authOf(t, f); got != "Bearer "+tok3 {
		t.Fatalf("unusable content: Authorization = %q", got)
	}
	if err := f.Err(); err == nil || strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "bad token") {
		t.Errorf("Err after unusable content = %v", err)
	}

	writeFile(t, path, tok4)
	if got := authOf(t, f); got != "Bearer "+tok4 {
		t.Fatalf("after recovery: Authorization = %q", got)
	}
	if f.Err() != nil {
		t.Errorf("Err after recovery = %v", f.Err())
	}

	if f.Reloads() != 3 {
		t.Errorf("Reloads = %d, want 3", f.Reloads())
	}
	want := [][2]string{
		{"file:" + fp(tok1), "file:" + fp(tok2)},
		{"file:" + fp(tok2), "file:" + fp(tok3)},
		{"file:" + fp(tok3), "file:" + fp(tok4)},
	}
	if fmt.Sprint(changes) != fmt.Sprint(want) {
		t.Errorf("change notifications = %v, want %v", changes, want)
	}
	if f.ID() != "file:"+fp(tok4) {
		t.Errorf("ID = %q", f.ID())
	}
	for _, tok := range []string{tok1, tok2, tok3, tok4} {
		for _, s := range []string{fmt.Sprint(f), fmt.Sprintf("%#v", f), fmt.Sprintf("%+v", f)} {
			if strings.Contains(s, tok) {
				t.Errorf("TokenFile renders a token: %s", s)
			}
		}
	}
}

func TestTokenFileSymlinkSwap(t *testing.T) {
	// Kubernetes mounts secrets as path -> ..data/token with ..data a
	// symlink swapped atomically to a new directory.
	dir := t.TempDir()
	for _, v := range []string{"v1", "v2"} {
		if err := os.Mkdir(filepath.Join(dir, v), 0o700); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, v, "token"), "tok"+v)
	}
	if err := os.Symlink("v1", filepath.Join(dir, "..data")); err != nil {
		t.Skipf("no symlinks: %v", err)
	}
	path := filepath.Join(dir, "token")
	if err := os.Symlink(filepath.Join("..data", "token"), path); err != nil {
		t.Fatal(err)
	}
	f, err := cloudflare.NewTokenFile(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := authOf(t, f); got != "Bearer tokv1" {
		t.Fatalf("Authorization = %q", got)
	}
	if err := os.Symlink("v2", filepath.Join(dir, "..data.tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data.tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if got := authOf(t, f); got != "Bearer tokv2" {
		t.Fatalf("after the swap: Authorization = %q", got)
	}
}

func TestTokenFileCheckInterval(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	writeFile(t, path, "first")

	// A long interval: the change is not looked at yet.
	slow, err := cloudflare.NewTokenFile(path, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// A tiny interval: due again on every call.
	fast, err := cloudflare.NewTokenFile(path, time.Nanosecond)
	if err != nil {
		t.Fatal(err)
	}
	replaceByRename(t, path, "second")
	if got := authOf(t, slow); got != "Bearer first" {
		t.Errorf("1h interval: Authorization = %q, want the old token until the check is due", got)
	}
	if got := authOf(t, fast); got != "Bearer second" {
		t.Errorf("1ns interval: Authorization = %q", got)
	}
}

func TestNewTokenFileErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing-token")
	_, err := cloudflare.NewTokenFile(missing, time.Second)
	if err == nil || !strings.Contains(err.Error(), missing) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: err = %v", err)
	}

	for name, content := range map[string]string{
		"empty":       "",
		"white space": " \n\t\r\n",
		"inner space": secret + " " + secret,
		"two lines":   secret + "\n" + secret,
		"control":     secret + "\x01",
		"non-ascii":   secret + "é",
		"too large":   strings.Repeat(secret, 3000),
	} {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".txt")
		writeFile(t, path, content)
		_, err := cloudflare.NewTokenFile(path, time.Second)
		if err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		if !strings.Contains(err.Error(), path) {
			t.Errorf("%s: err = %v does not name the path", name, err)
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("%s: err = %v contains the content", name, err)
		}
	}

	_, err = cloudflare.NewTokenFile(dir, time.Second)
	if err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: err = %v", err)
	}

	// A token pasted where the path belongs must not be echoed.
	_, err = cloudflare.NewTokenFile(secret, time.Second)
	if err == nil || strings.Contains(err.Error(), secret) {
		t.Errorf("pasted token as path: err = %v", err)
	}
}

func TestTokenFileConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	writeFile(t, path, "tok0")
	f, err := cloudflare.NewTokenFile(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	var notified sync.Map
	f.SetOnChange(func(_, newID string) { notified.Store(newID, true) })
	valid := map[string]bool{}
	for i := range 20 {
		valid[fmt.Sprintf("Bearer tok%d", i)] = true
	}
	var wg sync.WaitGroup
	done := make(chan struct{})
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				req, _ := http.NewRequest(http.MethodDelete, "http://example.invalid/", nil)
				if err := f.Apply(req); err != nil {
					t.Error(err)
					return
				}
				if got := req.Header.Get("Authorization"); !valid[got] {
					t.Errorf("Authorization = %q", got)
					return
				}
				_ = f.ID()
			}
		})
	}
	for i := 1; i < 20; i++ {
		replaceByRename(t, path, fmt.Sprintf("tok%d", i))
	}
	close(done)
	wg.Wait()
	if got := authOf(t, f); got != "Bearer tok19" {
		t.Errorf("final Authorization = %q", got)
	}
	if _, ok := notified.Load("file:" + fp("tok19")); !ok {
		t.Error("no notification for the final token")
	}
}

func TestTokenFileWithClient(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	writeFile(t, path, "alpha\n")
	f, err := cloudflare.NewTokenFile(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder(t, nil)
	c := newClient(t, rec.URL, f, 5*time.Second)
	if _, err := c.DeleteSigningKey(t.Context(), "a", "k1"); err != nil {
		t.Fatal(err)
	}
	replaceByRename(t, path, "beta\n")
	if _, err := c.DeleteSigningKey(t.Context(), "a", "k2"); err != nil {
		t.Fatal(err)
	}
	reqs := rec.requests()
	if len(reqs) != 2 || reqs[0].Header.Get("Authorization") != "Bearer alpha" || reqs[1].Header.Get("Authorization") != "Bearer beta" {
		t.Errorf("Authorization headers: %q, %q", reqs[0].Header.Get("Authorization"), reqs[1].Header.Get("Authorization"))
	}
}

func TestCredentialRendering(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	writeFile(t, path, secret)
	tf, err := cloudflare.NewTokenFile(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []cloudflare.Credential{cloudflare.Token(secret), cloudflare.LegacyKey("ops@example.com", secret), tf} {
		assertNoSecret(t, c.ID(), c)
		b, err := json.Marshal(map[string]any{"cred": c})
		if err != nil || strings.Contains(string(b), secret) {
			t.Errorf("JSON = %s, %v", b, err)
		}
		var sb strings.Builder
		slog.New(slog.NewTextHandler(&sb, nil)).Info("x", "cred", c)
		slog.New(slog.NewJSONHandler(&sb, nil)).Info("x", "cred", c)
		if strings.Contains(sb.String(), secret) || !strings.Contains(sb.String(), c.ID()) {
			t.Errorf("slog output = %s", sb.String())
		}
	}
}

// TestTokenFileStatShortCircuit pins the cheap path: when size, mtime and
// identity are all unchanged (and the mtime is safely in the past) the file
// is not read again. Real rewrites always move mtime forward; here it is
// put back on purpose to prove no read happens.
func TestTokenFileStatShortCircuit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	writeFile(t, path, "tokenA")
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	f, err := cloudflare.NewTokenFile(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	rewriteInPlace(t, path, "tokenB")
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	if got := authOf(t, f); got != "Bearer tokenA" {
		t.Errorf("Authorization = %q: the file was read though its stat did not change", got)
	}
	// Any change of mtime is noticed.
	newer := old.Add(time.Second)
	if err := os.Chtimes(path, newer, newer); err != nil {
		t.Fatal(err)
	}
	if got := authOf(t, f); got != "Bearer tokenB" {
		t.Errorf("Authorization = %q after the mtime changed", got)
	}
}

// TestTokenFileRacyRewrite covers a rewrite that leaves size, mtime and
// inode unchanged, as two same-length writes within one tick of the file
// system's coarse clock do: a file read while its mtime was recent is read
// again on the next check.
func TestTokenFileRacyRewrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	stamp := time.Now().Truncate(time.Second)
	writeFile(t, path, "tokenA")
	if err := os.Chtimes(path, stamp, stamp); err != nil {
		t.Fatal(err)
	}
	f, err := cloudflare.NewTokenFile(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	rewriteInPlace(t, path, "tokenB")
	if err := os.Chtimes(path, stamp, stamp); err != nil {
		t.Fatal(err)
	}
	if got := authOf(t, f); got != "Bearer tokenB" {
		t.Errorf("Authorization = %q, want the rewrite seen despite an unchanged stat", got)
	}
}
