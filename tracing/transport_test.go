package tracing_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/revoker/revoker/tracing"
)

const (
	account = "023e105f4ecef8ad9ca31a8372d0c353"
	key     = "8ccd4b2d87e8484a8cf1cf4f0bfa56f3"
	token   = "s3cr3t-token-value"
	apiKey  = "s3cr3t-legacy-key"
)

// api answers like the API: the CF-Ray header, and the status the test asks
// for in the query; it remembers the path it was called on.
func api(t *testing.T) (*httptest.Server, *lastPath) {
	t.Helper()
	path := new(lastPath)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path.Store(r.URL.Path)
		if r.Header.Get("Traceparent") != "" {
			t.Errorf("trace context sent to the API")
		}
		w.Header().Set("CF-Ray", "8f1e2d3c4b5a6978-AMS")
		if r.URL.Query().Get("status") == "404" {
			w.WriteHeader(http.StatusNotFound)
		}
		_, _ = io.WriteString(w, `{"success":true,"errors":[],"messages":[],"result":null}`)
	}))
	t.Cleanup(srv.Close)
	return srv, path
}

// lastPath is the path of the last call the API took.
type lastPath struct{ atomic.Value }

func (p *lastPath) String() string {
	s, _ := p.Load().(string)
	return s
}

func call(t *testing.T, ctx context.Context, rt http.RoundTripper, method, url string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("X-Auth-Key", apiKey)
	req.Header.Set("X-Auth-Email", "ops@example.com")
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp
}

func TestTransportSpans(t *testing.T) {
	srv, path := api(t)
	base := srv.URL + "/client/v4/accounts/" + account + "/stream/keys"

	for _, tc := range []struct {
		method, url, name string
		status            int
	}{
		{"DELETE", base + "/" + key + "?token=" + token, "DELETE /accounts/{account_id}/stream/keys/{identifier}", 200},
		{"GET", base, "GET /accounts/{account_id}/stream/keys", 200},
		{"DELETE", base + "/" + key + "?status=404", "DELETE /accounts/{account_id}/stream/keys/{identifier}", 404},
		{"GET", srv.URL + "/elsewhere/" + account, "GET", 200},
	} {
		t.Run(tc.name+" "+http.StatusText(tc.status), func(t *testing.T) {
			exp := install(t)
			ctx, process := tracing.StartProcess(context.Background(), "revoke.urgent")

			resp := call(t, ctx, tracing.Transport(nil), tc.method, tc.url)
			process.End()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			wantPath := strings.TrimPrefix(strings.SplitN(tc.url, "?", 2)[0], srv.URL)
			if path.String() != wantPath {
				t.Errorf("the API was called on %q, want %q", path, wantPath)
			}

			spans := exp.GetSpans()
			if len(spans) != 2 {
				t.Fatalf("got %d spans, want 2", len(spans))
			}
			s := spans[0]
			if s.Name != tc.name {
				t.Errorf("name = %q, want %q", s.Name, tc.name)
			}
			if s.SpanKind != trace.SpanKindClient {
				t.Errorf("kind = %v, want client", s.SpanKind)
			}
			if s.Parent.SpanID() != spans[1].SpanContext.SpanID() {
				t.Error("the call is not a child of the delivery")
			}
			a := attrs(s)
			if got := a["http.response.status_code"].AsInt64(); got != int64(tc.status) {
				t.Errorf("http.response.status_code = %d", got)
			}
			if got := a["http.request.method"].AsString(); got != tc.method {
				t.Errorf("http.request.method = %q", got)
			}
			if got := a[tracing.CFRayKey].AsString(); got != "8f1e2d3c4b5a6978-AMS" {
				t.Errorf("cf_ray = %q", got)
			}
			if wantErr := tc.status >= 400; (s.Status.Code == codes.Error) != wantErr {
				t.Errorf("status = %v for %d", s.Status.Code, tc.status)
			}
			if strings.HasPrefix(tc.name, "DELETE") {
				if got := a["url.template"].AsString(); got != "/accounts/{account_id}/stream/keys/{identifier}" {
					t.Errorf("url.template = %q", got)
				}
			}

			// Nothing secret and no id, anywhere in the span.
			for _, v := range []string{account, key, token, apiKey, "ops@example.com"} {
				if strings.Contains(s.Name, v) {
					t.Errorf("span name %q holds %q", s.Name, v)
				}
				for _, kv := range s.Attributes {
					if strings.Contains(string(kv.Key), v) || strings.Contains(kv.Value.Emit(), v) {
						t.Errorf("attribute %s=%q holds %q", kv.Key, kv.Value.Emit(), v)
					}
				}
			}
		})
	}
}

func TestTransportWhileOff(t *testing.T) {
	tracing.SetTracerProvider(nil)
	srv, path := api(t)
	var seen *http.Request
	rt := tracing.Transport(roundTripper(func(r *http.Request) (*http.Response, error) {
		seen = r
		return http.DefaultTransport.RoundTrip(r)
	}))
	resp := call(t, context.Background(), rt, "DELETE", srv.URL+"/client/v4/accounts/"+account+"/stream/keys/"+key)
	if resp.StatusCode != 200 || path.String() != "/client/v4/accounts/"+account+"/stream/keys/"+key {
		t.Fatalf("status %d path %q", resp.StatusCode, path.String())
	}
	if trace.SpanFromContext(seen.Context()).SpanContext().IsValid() {
		t.Error("a span was started while tracing is off")
	}
}

// The provider may change (a test installs its own, Setup's shutdown turns
// tracing off): one Transport follows it.
func TestTransportFollowsTheProvider(t *testing.T) {
	srv, _ := api(t)
	rt := tracing.Transport(nil)
	url := srv.URL + "/client/v4/accounts/" + account + "/stream/keys"

	first := install(t)
	call(t, context.Background(), rt, "GET", url)
	second := install(t)
	call(t, context.Background(), rt, "GET", url)
	tracing.SetTracerProvider(nil)
	call(t, context.Background(), rt, "GET", url)

	if n, m := len(first.GetSpans()), len(second.GetSpans()); n != 1 || m != 1 {
		t.Errorf("spans: %d to the first provider, %d to the second; want 1 and 1", n, m)
	}
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestTransportKeepsTheRecordsRay: a call's span names the CF-Ray its
// record keeps (SPEC §10: up to 128 characters, on one line), whatever
// the ray: cut by characters, not bytes, and cleaned as the record's is.
func TestTransportKeepsTheRecordsRay(t *testing.T) {
	for _, tc := range []struct{ name, ray, record string }{
		{"100 characters", strings.Repeat("a", 96) + "-AMS", strings.Repeat("a", 96) + "-AMS"},
		{"129 ASCII", strings.Repeat("b", 129), strings.Repeat("b", 127) + "…"},
		{"2 MiB", strings.Repeat("b", 2<<20), strings.Repeat("b", 127) + "…"},
		{"200 é (400 bytes)", strings.Repeat("é", 200), strings.Repeat("é", 127) + "…"},
		{"100 é (200 bytes)", strings.Repeat("é", 100), strings.Repeat("é", 100)},
		{"tab run", "8f1c2a3b\t\t4d5e-SJC", "8f1c2a3b 4d5e-SJC"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("CF-Ray", tc.ray)
			}))
			defer srv.Close()
			exp := install(t)
			call(t, context.Background(), tracing.Transport(nil), "DELETE", srv.URL+"/client/v4/accounts/"+account+"/stream/keys/"+key)
			if got := attrs(only(t, exp))[tracing.CFRayKey].AsString(); got != tc.record {
				t.Errorf("span cf_ray = %.60q (%d characters), the record keeps %.60q (%d)", got, len([]rune(got)), tc.record, len([]rune(tc.record)))
			}
		})
	}
}
