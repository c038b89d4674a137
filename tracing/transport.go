package tracing

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/revoker/revoker/cloudflare"
)

// Path segments whose successor is an id, and what the id becomes in span
// names and URLs: a trace store is no place for account or key ids.
var idAfter = map[string]string{
	"accounts": "{account_id}",
	"keys":     "{identifier}",
}

// Transport returns rt (http.DefaultTransport when nil) wrapped so that,
// while tracing is on, every API call is a client span (otelhttp: the HTTP
// semantic conventions, the status) named by its route, such as
// "DELETE /accounts/{account_id}/stream/keys/{identifier}", with the
// answer's CF-Ray as cf_ray. The span's URL is the route too: account and
// key ids, other paths, the query and user info are never recorded, nor is
// any header (Authorization, X-Auth-Key). No trace context is sent to the
// API, which is not ours. While tracing is off a call goes straight to rt.
func Transport(rt http.RoundTripper) http.RoundTripper {
	if rt == nil {
		rt = http.DefaultTransport
	}
	return &transport{base: rt}
}

type transport struct {
	base   http.RoundTripper
	traced atomic.Pointer[traced]
}

// traced is the otelhttp transport built for one installed provider.
type traced struct {
	st *state
	rt http.RoundTripper
}

// realURLKey carries the request's own URL past otelhttp, which sees only
// the route.
type realURLKey struct{}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	st := current.Load()
	if st == nil {
		return t.base.RoundTrip(req)
	}
	tr := t.traced.Load()
	if tr == nil || tr.st != st {
		tr = &traced{st: st, rt: otelhttp.NewTransport(answered{t.base},
			otelhttp.WithTracerProvider(st.tp),
			otelhttp.WithMeterProvider(noop.NewMeterProvider()),
			otelhttp.WithPropagators(propagation.NewCompositeTextMapPropagator()),
			otelhttp.WithSpanNameFormatter(spanName),
		)}
		t.traced.Store(tr)
	}
	if req.URL == nil {
		return tr.rt.RoundTrip(req)
	}
	// A shallow copy: otelhttp clones before it changes anything.
	masked := req.WithContext(context.WithValue(req.Context(), realURLKey{}, req.URL))
	masked.URL = &url.URL{Scheme: req.URL.Scheme, Host: req.URL.Host, Path: route(req.URL.Path)}
	return tr.rt.RoundTrip(masked)
}

// answered sits under otelhttp: it puts the real URL back before the call
// and adds what only the answer knows to the span.
type answered struct{ base http.RoundTripper }

func (a answered) RoundTrip(req *http.Request) (*http.Response, error) {
	span := trace.SpanFromContext(req.Context())
	if u, ok := req.Context().Value(realURLKey{}).(*url.URL); ok {
		path := req.URL.Path
		req = req.WithContext(req.Context())
		req.URL = u
		if i := strings.Index(path, "/accounts/"); i >= 0 {
			span.SetAttributes(semconv.URLTemplate(path[i:]))
		}
	}
	resp, err := a.base.RoundTrip(req)
	if err != nil {
		// otelhttp puts the error's text on the span: none of a secret an
		// answer echoed may go with it.
		err = &redactedError{err: err, msg: cloudflare.RedactSecrets(err.Error(), req.Header)}
	}
	if resp != nil {
		if ray := resp.Header.Get("CF-Ray"); ray != "" {
			// As the records keep it, so that the span names the
			// record's ray (a real one is about 20 bytes).
			span.SetAttributes(CFRayKey.String(cloudflare.KeptRay(ray, req.Header)))
		}
	}
	return resp, err
}

// route replaces the ids in an API path by their names:
// /client/v4/accounts/023e…/stream/keys/8ccd… becomes
// /client/v4/accounts/{account_id}/stream/keys/{identifier}. A path outside
// the accounts is not known to be free of ids and becomes "/".
func route(path string) string {
	if !strings.Contains(path, "/accounts/") {
		return "/"
	}
	segs := strings.Split(path, "/")
	for i := 1; i < len(segs); i++ {
		if name, ok := idAfter[segs[i-1]]; ok && segs[i] != "" {
			segs[i] = name
		}
	}
	return strings.Join(segs, "/")
}

// spanName is "<METHOD> <route from /accounts/>", or the method alone for
// a path outside the API's accounts (the HTTP conventions' fallback).
func spanName(_ string, req *http.Request) string {
	if req.URL != nil {
		if i := strings.Index(req.URL.Path, "/accounts/"); i >= 0 {
			return req.Method + " " + req.URL.Path[i:]
		}
	}
	return req.Method
}

// redactedError is a transport's error with the secrets out of its text;
// it still unwraps to the error itself.
type redactedError struct {
	err error
	msg string
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }
