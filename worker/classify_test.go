package worker_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/worker"
)

// TestClassify maps real HTTP answers, through the real client, to their
func envelope(code int, msg string) string {
	return `{"success":false,"errors":[{"code":` + strconv.Itoa(code) + `,"message":"` + msg + `"}],"messages":[],"result":null}`
}

const okBody = `{"success":true,"errors":[],"messages":[],"result":"Revoked"}`

// decision: every row of SPEC §4 and its edges.
func TestClassify(t *testing.T) {
	auth := `{"success":false,"errors":[{"code":10000,"message":"Authentication error"}],"messages":[],"result":null}`
	badHeader := `{"success":false,"errors":[{"code":6003,"message":"Invalid request headers","error_chain":[{"code":6111,"message":"Invalid format for Authorization header"}]}],"messages":[],"result":null}`
	html := "<html><head><title>502 Bad Gateway</title></head><body>cloudflare</body></html>"
	date := time.Now().Add(7 * time.Second).UTC().Format(http.TimeFormat)
	tests := []struct {
		name       string
		status     int
		header     map[string]string
		body       string
		want       worker.Kind
		pause      bool
		retryAfter time.Duration // lower bound when > 0
	}{
		{"200 success", 200, nil, okBody, worker.Revoked, false, 0},
		{"200 result ok", 200, nil, `{"success":true,"errors":[],"messages":[],"result":"ok"}`, worker.Revoked, false, 0},
		{"204 with envelope", 202, nil, okBody, worker.Revoked, false, 0},
		{"200 success with x-should-retry false", 200, map[string]string{"x-should-retry": "false"}, okBody, worker.Revoked, false, 0},
		{"200 success false", 200, nil, envelope(10005, "locked"), worker.Rejected, false, 0},
		{"200 non-JSON", 200, nil, "<html>ok</html>", worker.Rejected, false, 0},
		{"200 JSON without success", 200, nil, `{"result":"ok"}`, worker.Rejected, false, 0},
		{"200 empty body", 200, nil, "", worker.Rejected, false, 0},
		{"404", 404, nil, envelope(10003, "not found"), worker.NotFound, false, 0},
		{"404 HTML", 404, nil, html, worker.NoAPI, false, 0},
		{"404 empty body", 404, nil, "", worker.NoAPI, false, 0},
		{"404 saying success true", 404, nil, `{"success":true,"errors":[],"messages":[],"result":null}`, worker.NoAPI, false, 0},
		{"404 saying success twice", 404, nil, `{"success":false,"errors":[{"code":10003,"message":"x"}],"success":true}`, worker.NoAPI, false, 0},
		{"200 success, messages an object", 200, nil, `{"success":true,"errors":[],"messages":{},"result":"Revoked"}`, worker.Revoked, false, 0},
		{"200 success, errors a string", 200, nil, `{"success":true,"errors":"","messages":[],"result":"Revoked"}`, worker.Revoked, false, 0},
		{"200 success twice", 200, nil, `{"success":true,"errors":[],"success":false}`, worker.Rejected, false, 0},
		{"200 success true twice", 200, nil, `{"success":true,"errors":[],"messages":[],"result":"Revoked","success":true}`, worker.Revoked, false, 0},
		{"200 success, result twice", 200, nil, `{"success":true,"result":"ok","result":"Revoked"}`, worker.Revoked, false, 0},
		{"404, errors twice", 404, nil, `{"success":false,"errors":[{"code":10003,"message":"x"}],"errors":[]}`, worker.NoAPI, false, 0},
		{"408", 408, nil, "", worker.Retry, false, 0},
		{"409", 409, nil, envelope(1, "conflict"), worker.Retry, false, 0},
		{"429 Retry-After seconds", 429, map[string]string{"Retry-After": "3"}, envelope(971, "rate limited"), worker.Retry, true, 3 * time.Second},
		{"429 Retry-After date", 429, map[string]string{"Retry-After": date}, envelope(971, "rate limited"), worker.Retry, true, 5 * time.Second},
		{"429 Retry-After-Ms", 429, map[string]string{"Retry-After-Ms": "1500"}, envelope(971, "rate limited"), worker.Retry, true, 1500 * time.Millisecond},
		{"429 without Retry-After", 429, nil, envelope(971, "rate limited"), worker.Retry, true, 0},
		{"500 HTML", 500, nil, html, worker.Retry, false, 0},
		{"501 HTML", 501, nil, html, worker.Retry, false, 0},
		{"502 HTML", 502, nil, html, worker.Retry, false, 0},
		// Any hold the API asks for holds every call (SPEC §4), not just
		// the 429's.
		{"503 HTML with Retry-After", 503, map[string]string{"Retry-After": "2"}, html, worker.Retry, true, 2 * time.Second},
		{"408 with Retry-After-Ms", 408, map[string]string{"Retry-After-Ms": "700"}, envelope(1, "timeout"), worker.Retry, true, 700 * time.Millisecond},
		{"503 with Retry-After 0", 503, map[string]string{"Retry-After": "0"}, envelope(1, "busy"), worker.Retry, false, 0},
		{"504 HTML", 504, nil, html, worker.Retry, false, 0},
		{"401", 401, nil, auth, worker.Unauthorized, false, 0},
		{"403 code 10000", 403, nil, auth, worker.Unauthorized, false, 0},
		{"403 HTML", 403, nil, html, worker.Unauthorized, false, 0},
		{"400 code 6003", 400, nil, badHeader, worker.Unauthorized, false, 0},
		{"400 other code", 400, nil, envelope(7003, "bad id"), worker.Rejected, false, 0},
		{"400 HTML", 400, nil, html, worker.Rejected, false, 0},
		{"405", 405, nil, envelope(10405, "method"), worker.Rejected, false, 0},
		{"422", 422, nil, envelope(10011, "unprocessable"), worker.Rejected, false, 0},
		{"301 redirect", 301, map[string]string{"Location": "/elsewhere"}, "", worker.NoAPI, false, 0},
		{"x-should-retry true on 400", 400, map[string]string{"x-should-retry": "true"}, envelope(9, "x"), worker.Retry, false, 0},
		// Retried either way; the credential's refusal and the missing
		// API still turn the worker not-ready.
		{"x-should-retry true on 403", 403, map[string]string{"x-should-retry": "true"}, auth, worker.Unauthorized, false, 0},
		{"x-should-retry true on 401", 401, map[string]string{"x-should-retry": "true"}, auth, worker.Unauthorized, false, 0},
		{"x-should-retry true on 400 6003", 400, map[string]string{"x-should-retry": "true"}, badHeader, worker.Unauthorized, false, 0},
		{"x-should-retry true on an HTML 404", 404, map[string]string{"x-should-retry": "true"}, html, worker.NoAPI, false, 0},
		{"x-should-retry true on a redirect", 302, map[string]string{"x-should-retry": "true", "Location": "https://example.com/"}, "", worker.NoAPI, false, 0},
		{"x-should-retry true on the API's 404", 404, map[string]string{"x-should-retry": "true"}, envelope(10003, "x"), worker.Retry, false, 0},
		{"x-should-retry false on 503", 503, map[string]string{"x-should-retry": "false"}, html, worker.Rejected, false, 0},
		{"x-should-retry false on 429", 429, map[string]string{"x-should-retry": "false", "Retry-After": "1"}, envelope(971, "x"), worker.Rejected, true, time.Second},
		{"x-should-retry false on 404", 404, map[string]string{"x-should-retry": "false"}, envelope(10003, "x"), worker.Rejected, false, 0},
		{"x-should-retry other value ignored", 503, map[string]string{"x-should-retry": "maybe"}, html, worker.Retry, false, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				for k, v := range tc.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tc.status)
				io.WriteString(w, tc.body)
			}))
			defer ts.Close()
			resp, err := client(t, ts.URL, time.Second).DeleteSigningKey(context.Background(), "acct", "key")
			d := worker.Classify(resp, err)
			if d.Kind != tc.want || d.Pause != tc.pause {
				t.Fatalf("Classify = %v pause=%v (%s), want %v pause=%v", d.Kind, d.Pause, d.Detail, tc.want, tc.pause)
			}
			if tc.retryAfter > 0 && (d.RetryAfter < tc.retryAfter || d.RetryAfter > tc.retryAfter+2*time.Second) {
				t.Errorf("RetryAfter = %v, want about %v", d.RetryAfter, tc.retryAfter)
			}
			if d.Detail == "" || strings.ContainsAny(d.Detail, "\r\n") {
				t.Errorf("detail %q is not one line", d.Detail)
			}
		})
	}
}

// TestClassifyTransportFailures: no answer at all is always retried.
func TestClassifyTransportFailures(t *testing.T) {
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}))
	defer slow.Close()
	reset := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			if tc, ok := conn.(*net.TCPConn); ok {
				tc.SetLinger(0) // RST, not FIN
			}
			conn.Close()
		}
	}))
	defer reset.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()

	cases := []struct {
		name, url string
		timeout   time.Duration
		wantErr   error
	}{
		{"timeout", slow.URL, 50 * time.Millisecond, cloudflare.ErrTimeout},
		{"connection reset", reset.URL, time.Second, nil},
		{"connection refused", closedURL, time.Second, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := client(t, tc.url, tc.timeout).DeleteSigningKey(context.Background(), "acct", "key")
			if err == nil {
				t.Fatal("no error")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if d := worker.Classify(resp, err); d.Kind != worker.Retry {
				t.Fatalf("Classify = %v, want retry", d.Kind)
			}
		})
	}
	if d := worker.Classify(nil, nil); d.Kind != worker.Retry {
		t.Fatalf("Classify(nil, nil) = %v", d.Kind)
	}
}

func client(t *testing.T, url string, timeout time.Duration) *cloudflare.Client {
	t.Helper()
	c, err := cloudflare.New(cloudflare.Config{BaseURL: url, Credential: cloudflare.Token("t"), Timeout: timeout, UserAgent: "revoker/test"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ExampleClassify() {
	// A 404 without the API's envelope proves nothing: the base URL or
	// the way to the API is wrong.
	d := worker.Classify(&cloudflare.Response{Status: 404}, nil)
	fmt.Println(d.Kind)
	// Output: no_api
}

// TestDetailSaysWhyThereIsNoEnvelope: a refusal whose body could not be
// read as the envelope says why in its detail (a body too large, not
// JSON), so that a person can act on the dead letter (SPEC §5).
func TestDetailSaysWhyThereIsNoEnvelope(t *testing.T) {
	for name, body := range map[string]string{
		"over 64 KiB": `{"success":false,"errors":[{"code":10005,"message":"` + strings.Repeat("x", 70<<10) + `"}]}`,
		"HTML":        "<html><body>Bad Request</body></html>",
	} {
		t.Run(name, func(t *testing.T) {
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(400)
				io.WriteString(w, body)
			}))
			defer ts.Close()
			resp, err := client(t, ts.URL, time.Second).DeleteSigningKey(context.Background(), "acct", "key")
			d := worker.Classify(resp, err)
			if d.Kind != worker.Rejected || resp.BodyError == "" || !strings.Contains(d.Detail, resp.BodyError) {
				t.Fatalf("detail %q (%v); want the rejection to say %q", d.Detail, d.Kind, resp.BodyError)
			}
		})
	}
}
