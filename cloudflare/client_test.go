package cloudflare_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/revoker/revoker/cloudflare"
)

// secret is distinctive so a leak into any error or log line is found by a
// plain substring search.
const secret = "SECRETtok0123456789abcdefGHIJ"

// recorder is a real HTTP server that records what arrived and answers
// with its handler (by default 200 and a success envelope).
type recorder struct {
	*httptest.Server
	mu      sync.Mutex
	reqs    []*http.Request
	handler http.HandlerFunc
	conns   atomic.Int32
}

func newRecorder(t *testing.T, h http.HandlerFunc) *recorder {
	t.Helper()
	rec := &recorder{handler: h}
	rec.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, r.Clone(context.Background()))
		rec.mu.Unlock()
		if rec.handler == nil {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"success":true,"errors":[],"messages":[],"result":"ok"}`)
			return
		}
		rec.handler(w, r)
	}))
	rec.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			rec.conns.Add(1)
		}
	}
	rec.Start()
	t.Cleanup(rec.Close)
	return rec
}

func (r *recorder) requests() []*http.Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*http.Request(nil), r.reqs...)
}

func newClient(t *testing.T, base string, cred cloudflare.Credential, timeout time.Duration) *cloudflare.Client {
	t.Helper()
	c, err := cloudflare.New(cloudflare.Config{
		BaseURL:    base,
		Credential: cred,
		Timeout:    timeout,
		UserAgent:  "revoker/test",
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

// assertNoSecret fails when the secret shows up in any rendering of v.
func assertNoSecret(t *testing.T, what string, v any) {
	t.Helper()
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
		if s := fmt.Sprintf(verb, v); strings.Contains(s, secret) ||
			strings.Contains(s, fmt.Sprintf("%x", secret)) {
			t.Errorf("%s rendered with %s contains the secret: %s", what, verb, s)
		}
	}
}

func TestHeadersSent(t *testing.T) {
	tests := []struct {
		name  string
		cred  cloudflare.Credential
		check func(t *testing.T, h http.Header)
	}{
		{"bearer", cloudflare.Token(" " + secret + "\n"), func(t *testing.T, h http.Header) {
			if got := h.Get("Authorization"); got != "Bearer "+secret {
				t.Errorf("Authorization = %q", got)
			}
			if h.Get("X-Auth-Key") != "" || h.Get("X-Auth-Email") != "" {
				t.Error("legacy headers sent with a token")
			}
		}},
		{"legacy", cloudflare.LegacyKey("ops@example.com", secret), func(t *testing.T, h http.Header) {
			if h.Get("X-Auth-Email") != "ops@example.com" || h.Get("X-Auth-Key") != secret {
				t.Errorf("legacy headers = %q / %q", h.Get("X-Auth-Email"), h.Get("X-Auth-Key"))
			}
			if h.Get("Authorization") != "" {
				t.Error("Authorization sent with the legacy pair")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder(t, nil)
			c := newClient(t, rec.URL+"/client/v4", tt.cred, 5*time.Second)
			resp, err := c.DeleteSigningKey(t.Context(), "acc1", "Key2")
			if err != nil {
				t.Fatalf("DeleteSigningKey: %v", err)
			}
			if resp.Status != 200 || resp.Envelope == nil || !resp.Envelope.Success {
				t.Fatalf("resp = %+v", resp)
			}
			reqs := rec.requests()
			if len(reqs) != 1 {
				t.Fatalf("server saw %d requests", len(reqs))
			}
			r := reqs[0]
			if r.Method != http.MethodDelete || r.URL.Path != "/client/v4/accounts/acc1/stream/keys/Key2" {
				t.Errorf("request = %s %s", r.Method, r.URL.Path)
			}
			if r.URL.RawQuery != "" {
				t.Errorf("query = %q", r.URL.RawQuery)
			}
			if got := r.Header.Get("User-Agent"); got != "revoker/test" {
				t.Errorf("User-Agent = %q", got)
			}
			if got := r.Header.Get("Accept"); got != "application/json" {
				t.Errorf("Accept = %q", got)
			}
			tt.check(t, r.Header)
			assertNoSecret(t, "credential", tt.cred)
			assertNoSecret(t, "response", resp)
		})
	}
}

func TestBaseURLForms(t *testing.T) {
	rec := newRecorder(t, nil)
	for _, base := range []string{
		rec.URL + "/client/v4",
		rec.URL + "/client/v4/",
		strings.Replace(rec.URL, "http://", "HTTP://", 1) + "/client/v4",
	} {
		c := newClient(t, base, cloudflare.Token(secret), 5*time.Second)
		if _, err := c.DeleteSigningKey(t.Context(), "a", "k"); err != nil {
			t.Fatalf("%s: %v", base, err)
		}
	}
	c := newClient(t, rec.URL, cloudflare.Token(secret), 5*time.Second)
	if _, err := c.DeleteSigningKey(t.Context(), "a", "k"); err != nil {
		t.Fatal(err)
	}
	reqs := rec.requests()
	want := []string{
		"/client/v4/accounts/a/stream/keys/k",
		"/client/v4/accounts/a/stream/keys/k",
		"/client/v4/accounts/a/stream/keys/k",
		"/accounts/a/stream/keys/k",
	}
	if len(reqs) != len(want) {
		t.Fatalf("got %d requests", len(reqs))
	}
	for i, r := range reqs {
		if r.URL.Path != want[i] {
			t.Errorf("request %d path = %q, want %q", i, r.URL.Path, want[i])
		}
	}
}

func TestNewValidates(t *testing.T) {
	good := cloudflare.Token(secret)
	tests := []struct {
		name string
		cfg  cloudflare.Config
	}{
		{"empty base", cloudflare.Config{Credential: good}},
		{"no scheme", cloudflare.Config{BaseURL: "api.cloudflare.com/client/v4", Credential: good}},
		{"ftp", cloudflare.Config{BaseURL: "ftp://api.cloudflare.com/client/v4", Credential: good}},
		{"no host", cloudflare.Config{BaseURL: "https:///client/v4", Credential: good}},
		{"relative", cloudflare.Config{BaseURL: "/client/v4", Credential: good}},
		{"opaque", cloudflare.Config{BaseURL: "https:api.cloudflare.com", Credential: good}},
		{"user info", cloudflare.Config{BaseURL: "https://me:" + secret + "@api.cloudflare.com/client/v4", Credential: good}},
		{"bad escape with user info", cloudflare.Config{BaseURL: "https://me:" + secret + "@api.cloudflare.com/%zz", Credential: good}},
		{"query", cloudflare.Config{BaseURL: "https://api.cloudflare.com/client/v4?x=1", Credential: good}},
		{"fragment", cloudflare.Config{BaseURL: "https://api.cloudflare.com/client/v4#f", Credential: good}},
		{"nil credential", cloudflare.Config{BaseURL: "https://api.cloudflare.com/client/v4"}},
		{"empty token", cloudflare.Config{BaseURL: "https://api.cloudflare.com/client/v4", Credential: cloudflare.Token("  ")}},
		{"token with space", cloudflare.Config{BaseURL: "https://api.cloudflare.com/client/v4", Credential: cloudflare.Token(secret + " x")}},
		{"token with newline", cloudflare.Config{BaseURL: "https://api.cloudflare.com/client/v4", Credential: cloudflare.Token(secret + "\nX-Evil: 1")}},
		{"legacy without key", cloudflare.Config{BaseURL: "https://api.cloudflare.com/client/v4", Credential: cloudflare.LegacyKey("a@b.c", "")}},
		{"legacy without email", cloudflare.Config{BaseURL: "https://api.cloudflare.com/client/v4", Credential: cloudflare.LegacyKey("", secret)}},
		{"negative timeout", cloudflare.Config{BaseURL: "https://api.cloudflare.com/client/v4", Credential: good, Timeout: -time.Second}},
		{"user agent with newline", cloudflare.Config{BaseURL: "https://api.cloudflare.com/client/v4", Credential: good, UserAgent: "a\r\nb"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := cloudflare.New(tt.cfg)
			if err == nil {
				t.Fatalf("New accepted %+v", tt.cfg)
			}
			if c != nil {
				t.Error("non-nil client with an error")
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error contains the secret: %v", err)
			}
		})
	}
	for _, base := range []string{
		"https://api.cloudflare.com/client/v4",
		"https://api.cloudflare.com/client/v4/",
		"http://127.0.0.1:8080",
		"http://[::1]:8080/client/v4",
	} {
		if _, err := cloudflare.New(cloudflare.Config{BaseURL: base, Credential: good}); err != nil {
			t.Errorf("New(%q): %v", base, err)
		}
	}
}

func TestInvalidIdentifiers(t *testing.T) {
	rec := newRecorder(t, nil)
	c := newClient(t, rec.URL+"/client/v4", cloudflare.Token(secret), 5*time.Second)
	bad := []string{
		"", "../x", "..", ".", "a/b", "a?b", "a#b", "%2F", "a%2Fb", "a b", " a", "a\n",
		strings.Repeat("a", 33), "ключ", "é", "a\x00", "a-b", "a_b", "a.b", "a;b", "a\\b",
	}
	for _, id := range bad {
		for _, pos := range []string{"account", "key"} {
			acc, key := "acc", "key"
			if pos == "account" {
				acc = id
			} else {
				key = id
			}
			resp, err := c.DeleteSigningKey(t.Context(), acc, key)
			if !errors.Is(err, cloudflare.ErrInvalidIdentifier) {
				t.Errorf("%s %q: err = %v, want ErrInvalidIdentifier", pos, id, err)
			}
			if resp == nil || resp.Status != 0 {
				t.Errorf("%s %q: resp = %+v", pos, id, resp)
			}
			if cloudflare.ValidIdentifier(id) {
				t.Errorf("ValidIdentifier(%q) = true", id)
			}
		}
	}
	if n := len(rec.requests()); n != 0 {
		t.Fatalf("server saw %d requests for invalid identifiers", n)
	}
	for _, id := range []string{"a", "Z", "0", strings.Repeat("aZ9", 10) + "xy", "023e105f4ecef8ad9ca31a8372d0c353"} {
		if !cloudflare.ValidIdentifier(id) {
			t.Errorf("ValidIdentifier(%q) = false", id)
		}
	}
}

func TestRedirectNotFollowed(t *testing.T) {
	for _, tc := range []struct {
		name string
		cred cloudflare.Credential
	}{
		{"bearer", cloudflare.Token(secret)},
		{"legacy", cloudflare.LegacyKey("ops@example.com", secret)},
	} {
		for _, status := range []int{301, 302, 303, 307, 308} {
			t.Run(fmt.Sprintf("%s/%d", tc.name, status), func(t *testing.T) {
				target := newRecorder(t, nil)
				src := newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Location", target.URL+"/client/v4/accounts/a/stream/keys/k")
					w.WriteHeader(status)
				})
				c := newClient(t, src.URL+"/client/v4", tc.cred, 5*time.Second)
				resp, err := c.DeleteSigningKey(t.Context(), "a", "k")
				if err != nil {
					t.Fatalf("DeleteSigningKey: %v", err)
				}
				if resp.Status != status {
					t.Errorf("Status = %d, want %d", resp.Status, status)
				}
				if resp.Envelope != nil || resp.BodyError == "" {
					t.Errorf("Envelope = %v, BodyError = %q", resp.Envelope, resp.BodyError)
				}
				for _, r := range target.requests() {
					if r.Header.Get("Authorization") != "" || r.Header.Get("X-Auth-Key") != "" {
						t.Error("redirect target received the credential")
					}
				}
				if n := len(target.requests()); n != 0 {
					t.Errorf("redirect target received %d requests", n)
				}
			})
		}
	}
}

func TestTimeout(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	c := newClient(t, rec.URL, cloudflare.Token(secret), 50*time.Millisecond)
	resp, err := c.DeleteSigningKey(t.Context(), "a", "k")
	if !errors.Is(err, cloudflare.ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want it to wrap context.DeadlineExceeded", err)
	}
	if errors.Is(err, context.Canceled) {
		t.Errorf("err = %v wraps context.Canceled", err)
	}
	if resp == nil || resp.Status != 0 || resp.Duration < 50*time.Millisecond {
		t.Errorf("resp = %+v", resp)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("err = %v does not expose a net.Error with Timeout()", err)
	}
	assertNoSecret(t, "error", err)
}

func TestTimeoutWhileReadingBody(t *testing.T) {
	rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cf-Ray", "8f1c2d3e4a5b6c7d-SJC")
		w.Header().Set("Content-Length", "1000")
		w.WriteHeader(200)
		io.WriteString(w, `{"success":`)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	c := newClient(t, rec.URL, cloudflare.Token(secret), 100*time.Millisecond)
	resp, err := c.DeleteSigningKey(t.Context(), "a", "k")
	if !errors.Is(err, cloudflare.ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	if resp.Status != 0 || resp.CFRay != "8f1c2d3e4a5b6c7d-SJC" {
		t.Errorf("resp = %+v, want Status 0 and the CF-Ray kept", resp)
	}
	if !strings.Contains(err.Error(), "HTTP 200") {
		t.Errorf("err = %v does not say which status arrived", err)
	}
	assertNoSecret(t, "error", err)
}

func TestCallerCancel(t *testing.T) {
	arrived := make(chan struct{}, 1)
	rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-r.Context().Done()
	})
	c := newClient(t, rec.URL, cloudflare.Token(secret), time.Minute)

	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		go func() {
			<-arrived
			cancel()
		}()
		resp, err := c.DeleteSigningKey(ctx, "a", "k")
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		if errors.Is(err, cloudflare.ErrTimeout) {
			t.Errorf("err = %v wraps ErrTimeout after a caller cancel", err)
		}
		if resp.Status != 0 {
			t.Errorf("Status = %d", resp.Status)
		}
		assertNoSecret(t, "error", err)
	})

	t.Run("cancel with cause", func(t *testing.T) {
		cause := errors.New("shutting down")
		ctx, cancel := context.WithCancelCause(t.Context())
		go func() {
			<-arrived
			cancel(cause)
		}()
		_, err := c.DeleteSigningKey(ctx, "a", "k")
		if !errors.Is(err, context.Canceled) || errors.Is(err, cloudflare.ErrTimeout) {
			t.Fatalf("err = %v", err)
		}
	})

	t.Run("caller deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		go func() { <-arrived }()
		_, err := c.DeleteSigningKey(ctx, "a", "k")
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want context.DeadlineExceeded", err)
		}
		if errors.Is(err, cloudflare.ErrTimeout) {
			t.Errorf("err = %v wraps ErrTimeout though the caller's deadline ended the call", err)
		}
	})

	t.Run("already cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		n := len(rec.requests())
		_, err := c.DeleteSigningKey(ctx, "a", "k")
		if !errors.Is(err, context.Canceled) || errors.Is(err, cloudflare.ErrTimeout) {
			t.Fatalf("err = %v", err)
		}
		if len(rec.requests()) != n {
			t.Error("a request was sent with a cancelled context")
		}
	})
}

func TestConnectionRefused(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	base := srv.URL
	srv.Close()
	c := newClient(t, base, cloudflare.Token(secret), 5*time.Second)
	resp, err := c.DeleteSigningKey(t.Context(), "a", "k")
	if err == nil {
		t.Fatal("no error from a closed server")
	}
	if errors.Is(err, cloudflare.ErrTimeout) || errors.Is(err, cloudflare.ErrInvalidIdentifier) {
		t.Errorf("err = %v", err)
	}
	if resp == nil || resp.Status != 0 {
		t.Errorf("resp = %+v", resp)
	}
	assertNoSecret(t, "error", err)
}

func TestConnectionReset(t *testing.T) {
	for _, tc := range []struct {
		name string
		do   func(conn net.Conn, buf io.Writer)
	}{
		{"close before answering", func(conn net.Conn, _ io.Writer) {}},
		{"reset", func(conn net.Conn, _ io.Writer) {
			if tcp, ok := conn.(*net.TCPConn); ok {
				tcp.SetLinger(0) // RST instead of FIN
			}
		}},
		{"half a status line", func(conn net.Conn, _ io.Writer) {
			io.WriteString(conn, "HTTP/1.1 20")
		}},
		{"body cut short", func(conn net.Conn, _ io.Writer) {
			io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nCf-Ray: 00000000000000aa-SJC\r\n\r\n{\"success\":true")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
				conn, buf, err := w.(http.Hijacker).Hijack()
				if err != nil {
					t.Error(err)
					return
				}
				tc.do(conn, buf)
				conn.Close()
			})
			c := newClient(t, rec.URL, cloudflare.Token(secret), 5*time.Second)
			resp, err := c.DeleteSigningKey(t.Context(), "a", "k")
			if err == nil {
				t.Fatalf("no error; resp = %+v", resp)
			}
			if resp.Status != 0 {
				t.Errorf("Status = %d with an error", resp.Status)
			}
			if errors.Is(err, cloudflare.ErrTimeout) {
				t.Errorf("err = %v wraps ErrTimeout", err)
			}
			assertNoSecret(t, "error", err)
		})
	}
}

func TestEnvelopeOverHTTP(t *testing.T) {
	big := `{"success":true,"errors":[],"messages":[],"result":"` + strings.Repeat("x", cloudflare.MaxBody) + `"}`
	tests := []struct {
		name        string
		status      int
		ctype       string
		body        string
		wantEnv     bool
		wantSuccess bool
		wantCodes   []int
		wantSummary string
		wantBodyErr string // substring
	}{
		{name: "success ok", status: 200, body: `{"success":true,"errors":[],"messages":[],"result":"ok"}`, wantEnv: true, wantSuccess: true},
		{name: "success Revoked", status: 200, body: `{"result":"Revoked","success":true,"errors":[],"messages":[]}`, wantEnv: true, wantSuccess: true},
		{name: "success false", status: 200, body: `{"success":false,"errors":[{"code":10001,"message":"nope"}],"messages":[],"result":null}`,
			wantEnv: true, wantCodes: []int{10001}, wantSummary: "10001 nope"},
		{name: "auth error", status: 403, body: `{"success":false,"errors":[{"code":10000,"message":"Authentication error"}],"messages":[],"result":null}`,
			wantEnv: true, wantCodes: []int{10000}, wantSummary: "10000 Authentication error"},
		{name: "error chain", status: 400, body: `{"success":false,"errors":[{"code":6003,"message":"Invalid request headers","error_chain":[{"code":6111,"message":"Invalid format for Authorization header"}]}],"messages":[],"result":null}`,
			wantEnv: true, wantCodes: []int{6003, 6111}, wantSummary: "6003 Invalid request headers; 6111 Invalid format for Authorization header"},
		{name: "html 503", status: 503, ctype: "text/html", body: "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body></body>\r\n</html>\r\n",
			wantBodyErr: "not JSON (Content-Type text/html): <html> <head><title>503 Service"},
		{name: "json without success", status: 200, body: `{"result":"ok"}`, wantBodyErr: `without a boolean "success"`},
		{name: "success as string", status: 200, body: `{"success":"true"}`, wantBodyErr: `without a boolean "success"`},
		{name: "json array", status: 200, body: `[{"success":true}]`, wantBodyErr: "not an object"},
		{name: "empty 200", status: 200, body: "", wantBodyErr: "empty body"},
		{name: "oversized", status: 200, body: big, wantBodyErr: "larger than"},
		{name: "trailing garbage", status: 200, body: `{"success":true} {"success":false}`, wantBodyErr: "not JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
				if tt.ctype != "" {
					w.Header().Set("Content-Type", tt.ctype)
				}
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			})
			c := newClient(t, rec.URL, cloudflare.Token(secret), 5*time.Second)
			resp, err := c.DeleteSigningKey(t.Context(), "a", "k")
			if err != nil {
				t.Fatalf("DeleteSigningKey: %v", err)
			}
			if resp.Status != tt.status {
				t.Errorf("Status = %d", resp.Status)
			}
			if (resp.Envelope != nil) != tt.wantEnv {
				t.Fatalf("Envelope = %+v, BodyError = %q", resp.Envelope, resp.BodyError)
			}
			if tt.wantEnv {
				if resp.BodyError != "" {
					t.Errorf("BodyError = %q with an envelope", resp.BodyError)
				}
				if resp.Envelope.Success != tt.wantSuccess {
					t.Errorf("Success = %v", resp.Envelope.Success)
				}
				for _, code := range tt.wantCodes {
					if !resp.Envelope.HasCode(code) {
						t.Errorf("HasCode(%d) = false", code)
					}
				}
				if resp.Envelope.HasCode(12345) {
					t.Error("HasCode(12345) = true")
				}
				if got := resp.Envelope.Summary(); got != tt.wantSummary {
					t.Errorf("Summary = %q, want %q", got, tt.wantSummary)
				}
				return
			}
			if !strings.Contains(resp.BodyError, tt.wantBodyErr) {
				t.Errorf("BodyError = %q, want it to contain %q", resp.BodyError, tt.wantBodyErr)
			}
			if len(resp.BodyError) > 300 || strings.ContainsAny(resp.BodyError, "\r\n\t") {
				t.Errorf("BodyError is not one short line: %q", resp.BodyError)
			}
		})
	}
}

func TestResultKeptRaw(t *testing.T) {
	rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"success":true,"errors":[],"messages":[{"code":1,"message":"hi"}],"result":"Revoked"}`)
	})
	c := newClient(t, rec.URL, cloudflare.Token(secret), 5*time.Second)
	resp, err := c.DeleteSigningKey(t.Context(), "a", "k")
	if err != nil {
		t.Fatal(err)
	}
	if string(resp.Envelope.Result) != `"Revoked"` {
		t.Errorf("Result = %s", resp.Envelope.Result)
	}
	if len(resp.Envelope.Messages) != 1 || resp.Envelope.Messages[0].Message != "hi" {
		t.Errorf("Messages = %+v", resp.Envelope.Messages)
	}
}

func TestHeadersParsedOverHTTP(t *testing.T) {
	date := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	yes, no := true, false
	tests := []struct {
		name    string
		header  map[string]string
		wantRA  time.Duration
		wantHas bool
		wantSR  *bool
		wantRL  cloudflare.RateLimit
	}{
		{name: "nothing"},
		{name: "retry-after seconds", header: map[string]string{"Retry-After": "30"}, wantRA: 30 * time.Second, wantHas: true},
		{name: "retry-after date", header: map[string]string{
			"Date": date.Format(http.TimeFormat), "Retry-After": date.Add(2 * time.Minute).Format(http.TimeFormat),
		}, wantRA: 2 * time.Minute, wantHas: true},
		{name: "retry-after date in the past", header: map[string]string{
			"Date": date.Format(http.TimeFormat), "Retry-After": date.Add(-time.Minute).Format(http.TimeFormat),
		}, wantRA: 0, wantHas: true},
		{name: "retry-after-ms fractional wins", header: map[string]string{"Retry-After-Ms": "1500.5", "Retry-After": "30"},
			wantRA: 1500*time.Millisecond + 500*time.Microsecond, wantHas: true},
		{name: "retry-after-ms garbage falls back", header: map[string]string{"Retry-After-Ms": "soon", "Retry-After": "2"},
			wantRA: 2 * time.Second, wantHas: true},
		{name: "retry-after garbage", header: map[string]string{"Retry-After": "tomorrow"}},
		{name: "retry-after negative", header: map[string]string{"Retry-After": "-5"}},
		{name: "should retry true", header: map[string]string{"X-Should-Retry": "true"}, wantSR: &yes},
		{name: "should retry False", header: map[string]string{"x-should-retry": "False"}, wantSR: &no},
		{name: "should retry other", header: map[string]string{"X-Should-Retry": "maybe"}},
		{name: "ratelimit ietf", header: map[string]string{"Ratelimit": `"default";r=50;t=30`, "Ratelimit-Policy": `"default";q=1200;w=300`},
			wantRL: cloudflare.RateLimit{Known: true, Remaining: 50, Reset: 30 * time.Second}},
		{name: "x-ratelimit", header: map[string]string{"X-RateLimit-Remaining": "7", "X-RateLimit-Reset": "12"},
			wantRL: cloudflare.RateLimit{Known: true, Remaining: 7, Reset: 12 * time.Second}},
		{name: "x-ratelimit epoch reset", header: map[string]string{
			"Date": date.Format(http.TimeFormat), "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": fmt.Sprint(date.Add(45 * time.Second).Unix()),
		}, wantRL: cloudflare.RateLimit{Known: true, Remaining: 0, Reset: 45 * time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
				for k, v := range tt.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(429)
				io.WriteString(w, `{"success":false,"errors":[{"code":971,"message":"Please wait"}],"messages":[],"result":null}`)
			})
			c := newClient(t, rec.URL, cloudflare.Token(secret), 5*time.Second)
			resp, err := c.DeleteSigningKey(t.Context(), "a", "k")
			if err != nil {
				t.Fatal(err)
			}
			if resp.RetryAfter != tt.wantRA || resp.HasRetryAfter != tt.wantHas {
				t.Errorf("RetryAfter = %v/%v, want %v/%v", resp.RetryAfter, resp.HasRetryAfter, tt.wantRA, tt.wantHas)
			}
			if (resp.ShouldRetry == nil) != (tt.wantSR == nil) || resp.ShouldRetry != nil && *resp.ShouldRetry != *tt.wantSR {
				t.Errorf("ShouldRetry = %v, want %v", resp.ShouldRetry, tt.wantSR)
			}
			if resp.RateLimit != tt.wantRL {
				t.Errorf("RateLimit = %+v, want %+v", resp.RateLimit, tt.wantRL)
			}
			if !resp.Envelope.HasCode(971) {
				t.Error("HasCode(971) = false")
			}
		})
	}
}

func TestCFRayAndDuration(t *testing.T) {
	rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("CF-RAY", "8f1c2a3b4d5e6f70-SJC")
		w.WriteHeader(404)
		io.WriteString(w, `{"success":false,"errors":[{"code":10003,"message":"Not Found"}],"messages":[],"result":null}`)
	})
	c := newClient(t, rec.URL, cloudflare.Token(secret), 5*time.Second)
	resp, err := c.DeleteSigningKey(t.Context(), "a", "k")
	if err != nil {
		t.Fatal(err)
	}
	if resp.CFRay != "8f1c2a3b4d5e6f70-SJC" || resp.Status != 404 || resp.Duration <= 0 {
		t.Errorf("resp = %+v", resp)
	}
}

// TestKeepAlive checks that bodies up to the read limit plus the drain are
// consumed so that one connection serves many sequential calls.
func TestKeepAlive(t *testing.T) {
	sizes := []int{0, 100, cloudflare.MaxBody, cloudflare.MaxBody + 1, 200 << 10}
	for _, size := range sizes {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			body := strings.Repeat(" ", size)
			rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, body)
			})
			c := newClient(t, rec.URL, cloudflare.Token(secret), 5*time.Second)
			for range 10 {
				if _, err := c.DeleteSigningKey(t.Context(), "a", "k"); err != nil {
					t.Fatal(err)
				}
			}
			if n := rec.conns.Load(); n != 1 {
				t.Errorf("%d connections for 10 sequential calls", n)
			}
		})
	}
}

func TestParallelCalls(t *testing.T) {
	rec := newRecorder(t, nil)
	c := newClient(t, rec.URL, cloudflare.Token(secret), 5*time.Second)
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Go(func() {
			resp, err := c.DeleteSigningKey(t.Context(), "acc", fmt.Sprintf("k%d", i))
			if err != nil || resp.Status != 200 {
				t.Errorf("call %d: %+v, %v", i, resp, err)
			}
		})
	}
	wg.Wait()
	if n := len(rec.requests()); n != 64 {
		t.Errorf("server saw %d requests", n)
	}
}

// TestCredentialErrorsCarryNoSecret collects the error of every failure mode
// and checks none of them renders the secret.
func TestCredentialErrorsCarryNoSecret(t *testing.T) {
	var errs []error
	_, err := cloudflare.New(cloudflare.Config{BaseURL: "http://127.0.0.1:1", Credential: cloudflare.Token(secret + " \x01")})
	errs = append(errs, err)
	_, err = cloudflare.New(cloudflare.Config{BaseURL: "http://127.0.0.1:1", Credential: cloudflare.LegacyKey("a b", secret)})
	errs = append(errs, err)
	_, err = cloudflare.New(cloudflare.Config{BaseURL: "http://127.0.0.1:1", Credential: cloudflare.LegacyKey("a@b.c", secret+"\n")})
	if err != nil {
		t.Errorf("trailing newline not trimmed: %v", err)
	}
	_, err = cloudflare.New(cloudflare.Config{BaseURL: "http://127.0.0.1:1", Credential: cloudflare.LegacyKey("a@b.c", "x\n"+secret)})
	errs = append(errs, err)
	for i, err := range errs {
		if err == nil {
			t.Errorf("case %d: no error", i)
			continue
		}
		assertNoSecret(t, fmt.Sprintf("error %d", i), err)
	}
	for _, c := range []cloudflare.Credential{cloudflare.Token(secret), cloudflare.LegacyKey("a@b.c", secret)} {
		assertNoSecret(t, "credential", c)
		assertNoSecret(t, "credential in a struct", struct{ C cloudflare.Credential }{c})
	}
}
