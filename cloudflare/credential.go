package cloudflare

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Credential authenticates requests. Implementations never expose the secret
// in String(), errors or logs.
type Credential interface {
	// Apply sets the auth headers on req.
	Apply(req *http.Request) error
	// ID is a short non-secret fingerprint ("token:1a2b3c4d", "key:…",
	// "file:…") so operators can tell credentials apart in logs.
	ID() string
}

// fingerprint is the first 8 hex digits of the SHA-256 of s: enough to tell
// credentials apart, far too little to help guess one.
func fingerprint(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:4])
}

// ValidSecret reports whether s can go into a header value as one token:
// visible ASCII only, so no spaces, control characters or line breaks that
// could split or smuggle headers.
func ValidSecret(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// Token returns a Credential sending "Authorization: Bearer <token>".
// Surrounding white space is trimmed. An empty token, or one holding
// characters that cannot appear in a header, makes Apply (and so New) fail.
func Token(token string) Credential {
	t := strings.TrimSpace(token)
	return &tokenCred{token: t, id: "token:" + fingerprint(t), auth: []string{"Bearer " + t}}
}

type tokenCred struct {
	token string
	id    string
	auth  []string // the header's value, made once: every call sends it
}

var errBadToken = errors.New("cloudflare: API token is empty or holds characters not allowed in an HTTP header")

func (c *tokenCred) Apply(req *http.Request) error {
	if !ValidSecret(c.token) {
		return errBadToken
	}
	// Never changed once sent: the transport only reads it.
	req.Header["Authorization"] = c.auth
	return nil
}

func (c *tokenCred) ID() string { return c.id }

// String, GoString, Format, LogValue and MarshalText all render the
// fingerprint only, so that no fmt verb (%#v and %d included), slog handler
// or encoder ever reaches the secret field.
func (c *tokenCred) String() string               { return "cloudflare.Token(" + c.id + ")" }
func (c *tokenCred) GoString() string             { return c.String() }
func (c *tokenCred) Format(f fmt.State, _ rune)   { _, _ = io.WriteString(f, c.String()) }
func (c *tokenCred) LogValue() slog.Value         { return slog.StringValue(c.String()) }
func (c *tokenCred) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// LegacyKey returns a Credential sending the legacy pair X-Auth-Email and
// X-Auth-Key. Surrounding white space is trimmed from both. Empty values, or
// characters that cannot appear in a header, make Apply (and so New) fail.
func LegacyKey(email, key string) Credential {
	e, k := strings.TrimSpace(email), strings.TrimSpace(key)
	return &legacyCred{email: e, key: k, id: "key:" + fingerprint(e+"\x00"+k)}
}

type legacyCred struct {
	email, key string
	id         string
}

var (
	errBadEmail = errors.New("cloudflare: API email is empty or holds characters not allowed in an HTTP header")
	errBadKey   = errors.New("cloudflare: API key is empty or holds characters not allowed in an HTTP header")
)

func (c *legacyCred) Apply(req *http.Request) error {
	if !ValidSecret(c.email) {
		return errBadEmail
	}
	if !ValidSecret(c.key) {
		return errBadKey
	}
	req.Header.Set("X-Auth-Email", c.email)
	req.Header.Set("X-Auth-Key", c.key)
	return nil
}

func (c *legacyCred) ID() string { return c.id }

// The printing methods render the fingerprint only (see tokenCred).
func (c *legacyCred) String() string               { return "cloudflare.LegacyKey(" + c.id + ")" }
func (c *legacyCred) GoString() string             { return c.String() }
func (c *legacyCred) Format(f fmt.State, _ rune)   { _, _ = io.WriteString(f, c.String()) }
func (c *legacyCred) LogValue() slog.Value         { return slog.StringValue(c.String()) }
func (c *legacyCred) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// maxTokenFile bounds what is read from a token file: a token is ~40 bytes,
// so anything near this is the wrong file, and it must not be slurped whole.
const maxTokenFile = 64 << 10

// racyWindow is how close to the time of a read a file's mtime may be before
// the read is not trusted to have seen the final content. File systems
// stamp mtime with a coarse clock (1 ms to 2 s), so a second write of the
// same size within one tick would leave size, mtime and inode unchanged; such
// a file is re-read on the next check until its mtime is safely in the past.
const racyWindow = 2 * time.Second

// TokenFile is a Credential whose bearer token lives in a file that may be
// rotated while the process runs (a mounted secret, a file rewritten by an
// agent). It is safe for concurrent use.
//
// Change notification: SetOnChange registers a function called with the old
// and new ID after the token changed, and Reloads counts such changes, so
// callers can log "token reloaded". Err reports why the last check could
// not read the file (the previous token is kept meanwhile).
type TokenFile struct {
	path  string
	every time.Duration
	start time.Time // monotonic base for due
	// email is set for a legacy key file (NewLegacyKeyFile): the file then
	// holds the X-Auth-Key sent with this X-Auth-Email.
	email string

	cur      atomic.Pointer[tokenState]
	due      atomic.Int64 // nanoseconds since start when the next check is due
	reloads  atomic.Uint64
	onChange atomic.Pointer[func(oldID, newID string)]
	onError  atomic.Pointer[func(err error)]

	mu      sync.Mutex // serialises checks; guards the fields below
	fi      os.FileInfo
	racy    bool
	lastErr error
	// reported is the message of the error last given to onError ("" when
	// none, or the file was readable since).
	reported string
}

type tokenState struct {
	token string
	id    string
	auth  []string // "Bearer <token>" as the header's value, made once
}

// what names the file in errors.
func (f *TokenFile) what() string {
	if f.email != "" {
		return "API key file"
	}
	return "token file"
}

// NewTokenFile reads the token from path (surrounding white space trimmed)
// and returns a Credential that re-reads it when it may have changed, at most
// once every `every` (every <= 0 means on every call). A change is detected
// by os.Stat (size, mtime and identity via os.SameFile), so both in-place
// writes and atomic renames count. An empty file or a read error keeps the
// previous token. The first read must succeed and yield a usable token; its
// error names the path (unless the path looks like a pasted secret), never
// the content.
func NewTokenFile(path string, every time.Duration) (*TokenFile, error) {
	return newSecretFile(path, "", every)
}

// NewLegacyKeyFile is NewTokenFile for the legacy pair: the file at path
// holds the Global API Key sent as X-Auth-Key, with email as X-Auth-Email.
// It is re-read, reported and fingerprinted ("keyfile:…") as a token file.
// An email that cannot go into a header is an error; the error does not
// quote it.
func NewLegacyKeyFile(email, path string, every time.Duration) (*TokenFile, error) {
	email = strings.TrimSpace(email)
	if !ValidSecret(email) {
		return nil, errBadEmail
	}
	return newSecretFile(path, email, every)
}

func newSecretFile(path, email string, every time.Duration) (*TokenFile, error) {
	f := &TokenFile{path: path, every: every, start: time.Now(), email: email}
	tok, fi, err := readTokenFile(path, f.what())
	if err != nil {
		return nil, err
	}
	f.fi = fi
	f.racy = isRacy(fi, time.Now())
	f.cur.Store(f.newState(tok))
	f.due.Store(int64(every))
	return f, nil
}

// Apply sets "Authorization: Bearer <token>", checking the file first when
// a check is due.
func (f *TokenFile) Apply(req *http.Request) error {
	cur := f.current()
	if f.email != "" {
		req.Header.Set("X-Auth-Email", f.email)
		req.Header.Set("X-Auth-Key", cur.token)
		return nil
	}
	req.Header["Authorization"] = cur.auth
	return nil
}

// Legacy reports whether f sends the legacy pair (NewLegacyKeyFile) rather
// than a bearer token.
func (f *TokenFile) Legacy() bool { return f.email != "" }

// ID is "file:" (a legacy key file: "keyfile:") and the fingerprint of the
// secret in use.
func (f *TokenFile) ID() string { return f.cur.Load().id }

// String renders the fingerprint, never the token or the path.
func (f *TokenFile) String() string { return "cloudflare.TokenFile(" + f.ID() + ")" }

// GoString makes %#v print String, not the fields.
func (f *TokenFile) GoString() string { return f.String() }

// Format makes every fmt verb print String, not the fields.
func (f *TokenFile) Format(s fmt.State, _ rune) { _, _ = io.WriteString(s, f.String()) }

// LogValue makes slog log String, not the fields.
func (f *TokenFile) LogValue() slog.Value { return slog.StringValue(f.String()) }

// MarshalText makes encoders (JSON, YAML, ...) write String, not the fields.
func (f *TokenFile) MarshalText() ([]byte, error) { return []byte(f.String()), nil }

func (f *TokenFile) current() *tokenState {
	f.maybeCheck()
	return f.cur.Load()
}

func (f *TokenFile) newState(tok string) *tokenState {
	if f.email != "" {
		return &tokenState{token: tok, id: "keyfile:" + fingerprint(f.email+"\x00"+tok)}
	}
	return &tokenState{token: tok, id: "file:" + fingerprint(tok), auth: []string{"Bearer " + tok}}
}

// Refresh checks the file when a check is due, as a call would. Calling it
// on a timer keeps an idle worker's token current and its file's trouble
// reported without waiting for the next call.
func (f *TokenFile) Refresh() { f.maybeCheck() }

// Reloads reports how many times a changed token has been loaded since
// NewTokenFile.
func (f *TokenFile) Reloads() uint64 { return f.reloads.Load() }

// Err reports why the latest check could not use the file (missing,
// unreadable, empty, unusable content), or nil. The message names the path,
// never the content.
func (f *TokenFile) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastErr
}

// SetOnChange registers fn to be called, in the goroutine that noticed the
// change, after a new token has been loaded; nil removes it. fn gets IDs,
// never tokens, and must not block.
func (f *TokenFile) SetOnChange(fn func(oldID, newID string)) {
	if fn == nil {
		f.onChange.Store(nil)
		return
	}
	f.onChange.Store(&fn)
}

// SetOnError registers fn to be called, in the goroutine that checked, when
// a check cannot use the file and fails differently from the check before
// (so a file that stays missing is reported once), and with nil once the
// file can be used again after an error. The previous token is kept
// meanwhile. Errors name the path, never the content. nil removes fn; fn
// must not block.
func (f *TokenFile) SetOnError(fn func(err error)) {
	if fn == nil {
		f.onError.Store(nil)
		return
	}
	f.onError.Store(&fn)
}

// maybeCheck re-reads the file when a check is due. The fast path is two
// atomic loads, so parallel calls do not contend between checks.
func (f *TokenFile) maybeCheck() {
	if f.every > 0 && int64(time.Since(f.start)) < f.due.Load() {
		return
	}
	oldID, newID, changed, report, err := f.check()
	if report {
		if fn := f.onError.Load(); fn != nil {
			(*fn)(err)
		}
	}
	if changed {
		if fn := f.onChange.Load(); fn != nil {
			(*fn)(oldID, newID)
		}
	}
}

func (f *TokenFile) check() (oldID, newID string, changed, report bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Since(f.start)
	if f.every > 0 {
		if int64(now) < f.due.Load() {
			return "", "", false, false, nil // another goroutine checked meanwhile
		}
		f.due.Store(int64(now + f.every))
	}
	oldID, newID, changed, err = f.reload()
	f.lastErr = err
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	report = msg != f.reported
	f.reported = msg
	return oldID, newID, changed, report, err
}

// reload reads the file if it may have changed. f.mu is held.
func (f *TokenFile) reload() (oldID, newID string, changed bool, err error) {
	fi, err := os.Stat(f.path)
	if err != nil {
		return "", "", false, pathError(f.what(), "stat", f.path, err)
	}
	if !f.racy && sameVersion(f.fi, fi) {
		return "", "", false, nil
	}
	tok, rfi, err := readTokenFile(f.path, f.what())
	if err != nil {
		return "", "", false, err
	}
	f.fi = rfi
	f.racy = isRacy(rfi, time.Now())
	old := f.cur.Load()
	if tok == old.token {
		return "", "", false, nil
	}
	st := f.newState(tok)
	f.cur.Store(st)
	f.reloads.Add(1)
	return old.id, st.id, true, nil
}

func sameVersion(a, b os.FileInfo) bool {
	return a != nil && b != nil && os.SameFile(a, b) &&
		a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

func isRacy(fi os.FileInfo, readAt time.Time) bool {
	return !fi.ModTime().Before(readAt.Add(-racyWindow))
}

// readTokenFile opens, reads and validates the token. The FileInfo comes
// from the open file, so it describes what was read even if the path is
// renamed over meanwhile.
func readTokenFile(path, what string) (string, os.FileInfo, error) {
	fh, err := os.Open(path)
	if err != nil {
		return "", nil, pathError(what, "open", path, err)
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return "", nil, pathError(what, "stat", path, err)
	}
	if !fi.Mode().IsRegular() {
		return "", nil, fmt.Errorf("cloudflare: %s %s: not a regular file", what, displayPath(path))
	}
	b, err := io.ReadAll(io.LimitReader(fh, maxTokenFile+1))
	if err != nil {
		return "", nil, pathError(what, "read", path, err)
	}
	if len(b) > maxTokenFile {
		return "", nil, fmt.Errorf("cloudflare: %s %s: larger than %d bytes", what, displayPath(path), maxTokenFile)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", nil, fmt.Errorf("cloudflare: %s %s: empty", what, displayPath(path))
	}
	if !ValidSecret(tok) {
		return "", nil, fmt.Errorf("cloudflare: %s %s: content holds white space or characters not allowed in an HTTP header", what, displayPath(path))
	}
	return tok, fi, nil
}

// pathError rebuilds an *fs.PathError message with displayPath, keeping the
// cause (errors.Is(err, fs.ErrNotExist) still works).
func pathError(what, op, path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("cloudflare: %s %s: %s: %w", what, displayPath(path), op, err)
}

// displayPath quotes the path for messages, unless it looks like a token
// pasted where a path belongs (no '/' and no '.', as every Cloudflare token):
// a secret in the wrong variable must not end up on stderr.
func displayPath(p string) string {
	if strings.ContainsAny(p, `/.\`) {
		return fmt.Sprintf("%q", p)
	}
	return fmt.Sprintf("(path of %d characters not shown: it has no '/' or '.' and may be a pasted token)", len(p))
}
