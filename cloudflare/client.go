// Package cloudflare is the HTTP client for Cloudflare's "Delete signing
// keys" endpoint and the key list that proves a key absent (SPEC §1, §4):
//
//	DELETE {base}/accounts/{account_id}/stream/keys/{identifier}
//	GET    {base}/accounts/{account_id}/stream/keys
//
// It makes exactly one call per DeleteSigningKey or ListSigningKeys and
// reports what it learned (status, envelope, CF-Ray, retry and rate-limit
// hints); deciding what the answer means and whether to retry is the
// caller's job. Secrets never appear in its errors, and no redirect is ever
// followed.
package cloudflare

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// DefaultTimeout is used when Config.Timeout is zero (SPEC §6
// REVOKER_HTTP_TIMEOUT).
const DefaultTimeout = 10 * time.Second

// DefaultUserAgent is used when Config.UserAgent is empty.
const DefaultUserAgent = "revoker"

const (
	// maxBody is how much of a body is read: an envelope is a few hundred
	// bytes, and the body is the remote side's to choose.
	maxBody = 64 << 10
	// maxDrain is how much more is read and discarded so the connection can
	// be reused; past that, closing the connection is cheaper.
	maxDrain = 256 << 10
	// idleConnsPerHost covers the worker's parallel calls (64 and more) so
	// keep-alive connections are reused, not churned.
	idleConnsPerHost = 256
)

// ErrInvalidIdentifier is wrapped by the error of a call whose account or
// key identifier is not 1-32 characters of [A-Za-z0-9]. No request is made.
var ErrInvalidIdentifier = errors.New("cloudflare: invalid identifier")

// ErrTimeout is wrapped when the per-call timeout (Config.Timeout) elapsed.
// It is not used when the caller's context ended first: then the error
// wraps that context's error instead.
var ErrTimeout = errors.New("cloudflare: per-call timeout elapsed")

// Config configures a Client.
type Config struct {
	// BaseURL is the API root, e.g. https://api.cloudflare.com/client/v4;
	// a trailing '/' is fine. http or https, with a host, and no user info,
	// query or fragment.
	BaseURL string
	// Credential authenticates every call; required.
	Credential Credential
	// Timeout bounds each call, body read included; 0 means
	// DefaultTimeout, negative is an error.
	Timeout time.Duration
	// UserAgent is sent with every call; "" means DefaultUserAgent.
	UserAgent string
	// Transport is optional; by default a clone of http.DefaultTransport
	// keeping up to 256 idle connections per host.
	Transport http.RoundTripper
}

// Client calls the API. It is safe for concurrent use.
type Client struct {
	base *url.URL
	// prefix is base.JoinPath("x") without the x: the start of every URL
	// whose segments are identifiers, made once rather than per call.
	prefix    string
	cred      Credential
	timeout   time.Duration
	userAgent string
	ua        []string // userAgent as the header's value, made once
	// rt makes the calls, without http.Client: no redirect is ever
	// followed (a redirect would carry the credential to wherever
	// Location points; Go only strips Authorization across hosts, not
	// X-Auth-Key), so the 3xx is returned for the caller to classify, and
	// no copy of the headers is made per call for redirects.
	rt http.RoundTripper
}

// acceptJSON is the Accept header's value of every call.
var acceptJSON = []string{"application/json"}

// New checks cfg and returns a Client. Its errors never contain the
// credential, nor the base URL's user info.
func New(cfg Config) (*Client, error) {
	base, err := parseBaseURL(cfg.BaseURL)
	if err != nil {
		return nil, err
	}
	if cfg.Credential == nil {
		return nil, errors.New("cloudflare: no credential")
	}
	// Applying the credential once catches an empty or unusable one at
	// start, where it is a configuration error, not at the first event.
	probe, _ := http.NewRequest(http.MethodDelete, base.String(), nil)
	if err := cfg.Credential.Apply(probe); err != nil {
		return nil, fmt.Errorf("cloudflare: credential %s: %w", cfg.Credential.ID(), err)
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("cloudflare: negative timeout %s", cfg.Timeout)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	ua := strings.TrimSpace(cfg.UserAgent)
	if ua == "" {
		ua = DefaultUserAgent
	}
	if strings.ContainsAny(ua, "\r\n\x00") {
		return nil, errors.New("cloudflare: user agent holds a line break or NUL")
	}
	rt := cfg.Transport
	if rt == nil {
		rt = defaultTransport()
	}
	return &Client{
		base:      base,
		prefix:    strings.TrimSuffix(base.JoinPath("x").String(), "x"),
		cred:      cfg.Credential,
		timeout:   cfg.Timeout,
		userAgent: ua,
		ua:        []string{ua},
		rt:        rt,
	}, nil
}

func parseBaseURL(raw string) (*url.URL, error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return nil, errors.New("cloudflare: base URL is empty")
	}
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error quotes the whole URL, user info included: keep only
		// the reason.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("cloudflare: base URL does not parse: %v", err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, errors.New("cloudflare: base URL scheme must be http or https")
	case u.Opaque != "" || u.Host == "" || u.Hostname() == "":
		return nil, errors.New("cloudflare: base URL has no host")
	case u.User != nil:
		return nil, errors.New("cloudflare: base URL must not hold user info (use the credential settings)")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return nil, errors.New("cloudflare: base URL must not hold a query or fragment")
	}
	return u, nil
}

func defaultTransport() http.RoundTripper {
	var t *http.Transport
	if dt, ok := http.DefaultTransport.(*http.Transport); ok {
		t = dt.Clone()
	} else {
		t = &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			ForceAttemptHTTP2:     true,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ExpectContinueTimeout: time.Second,
		}
	}
	t.MaxIdleConnsPerHost = idleConnsPerHost
	if t.MaxIdleConns != 0 && t.MaxIdleConns < idleConnsPerHost {
		t.MaxIdleConns = idleConnsPerHost
	}
	return t
}

// ValidIdentifier reports whether s is 1-32 characters of [A-Za-z0-9]
// (SPEC §2), the only thing ever put into a URL path.
func ValidIdentifier(s string) bool {
	if len(s) == 0 || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}

// DeleteSigningKey calls DELETE {base}/accounts/{accountID}/stream/keys/{keyID}
// once. The returned *Response is never nil.
//
// Any HTTP response, whatever its status (3xx included), gives (resp, nil).
// Otherwise err is non-nil and resp.Status is 0; resp keeps what is known
// (CF-Ray and Duration, for instance). err wraps:
//   - ErrInvalidIdentifier when an identifier breaks its rule (no call made);
//   - ErrTimeout and context.DeadlineExceeded when Config.Timeout elapsed;
//   - the caller's ctx.Err() when ctx ended first;
//   - otherwise the transport's error (connection refused or reset, DNS,
//     TLS, a body cut short).
//
// When err is not an invalid identifier the call may or may not have reached
// the API: the key may be deleted. Errors never contain the credential.
func (c *Client) DeleteSigningKey(ctx context.Context, accountID, keyID string) (*Response, error) {
	// Checked again here, whoever checked before: nothing unchecked may
	// reach a URL path.
	if !ValidIdentifier(accountID) {
		return &Response{}, fmt.Errorf("%w: the account id is not 1-32 characters of [A-Za-z0-9]", ErrInvalidIdentifier)
	}
	if !ValidIdentifier(keyID) {
		return &Response{}, fmt.Errorf("%w: the key id is not 1-32 characters of [A-Za-z0-9]", ErrInvalidIdentifier)
	}
	resp, _, err := c.call(ctx, http.MethodDelete, maxBody, "accounts", accountID, "stream", "keys", keyID)
	return resp, err
}

// call makes one request of method to {base}/{path...} and reads at most
// limit bytes of the answer: the path every call of the client takes, with
// the contract documented at DeleteSigningKey. The segments of path must
// have been checked by the caller. body is the answer's body, nil when it
// was larger than limit or there was no answer.
func (c *Client) call(ctx context.Context, method string, limit int, path ...string) (resp *Response, body []byte, err error) {
	resp = &Response{}
	if ctx == nil {
		return resp, nil, errors.New("cloudflare: nil context")
	}
	target := c.target(path)

	start := time.Now()
	// A context, not http.Client.Timeout, so that our timeout can be told
	// apart from the caller's cancellation through the cause.
	callCtx, cancel := context.WithTimeoutCause(ctx, c.timeout, ErrTimeout)
	defer cancel()

	req, err := http.NewRequestWithContext(callCtx, method, target, nil)
	if err != nil {
		return resp, nil, fmt.Errorf("cloudflare: building request: %w", err)
	}
	// Values shared by every call: nothing on the way changes them (a
	// transport that adds a header, as tracing's, works on a copy).
	req.Header = http.Header{"User-Agent": c.ua, "Accept": acceptJSON}
	if err := c.cred.Apply(req); err != nil {
		return resp, nil, fmt.Errorf("cloudflare: credential %s: %w", c.cred.ID(), err)
	}

	hr, err := c.rt.RoundTrip(req)
	if err != nil {
		resp.Duration = time.Since(start)
		return resp, nil, redactError(c.callError(ctx, callCtx, method, target, "", err), req.Header)
	}
	resp.CFRay = KeptRay(hr.Header.Get("Cf-Ray"), req.Header)
	body, oversized, err := readBody(hr.Body, limit)
	resp.Duration = time.Since(start)
	if err != nil {
		return resp, nil, redactError(c.callError(ctx, callCtx, method, target, fmt.Sprintf("reading the body of HTTP %d", hr.StatusCode), err), req.Header)
	}

	now := time.Now()
	resp.Status = hr.StatusCode
	resp.RetryAfter, resp.HasRetryAfter = parseRetryAfter(hr.Header, now)
	resp.ShouldRetry = parseShouldRetry(hr.Header)
	resp.RateLimit = parseRateLimit(hr.Header, now)
	resp.Policy = parseRatePolicy(hr.Header)
	if oversized {
		resp.BodyError = fmt.Sprintf("body larger than %d bytes", limit)
		return resp, nil, nil
	}
	body = scrubSecrets(body, req.Header)
	resp.Envelope, resp.BodyError = decodeEnvelope(body, hr.Header.Get("Content-Type"))
	resp.redact(req.Header)
	return resp, body, nil
}

// target is {base}/{path...}, as base.JoinPath(path...) writes it: joined
// by hand when every segment is an identifier, which neither cleaning nor
// escaping changes.
func (c *Client) target(path []string) string {
	byHand := len(path) > 0
	for _, p := range path {
		byHand = byHand && ValidIdentifier(p)
	}
	if !byHand {
		return c.base.JoinPath(path...).String()
	}
	return c.prefix + strings.Join(path, "/")
}

// readBody reads at most limit bytes, then drains a bounded amount more so
// the keep-alive connection can be reused, and closes the body.
func readBody(rc io.ReadCloser, limit int) (body []byte, oversized bool, err error) {
	defer rc.Close()
	body, err = io.ReadAll(io.LimitReader(rc, int64(limit)+1))
	if err != nil {
		return nil, false, err
	}
	if len(body) > limit {
		_, _ = io.CopyN(io.Discard, rc, maxDrain)
		return nil, true, nil
	}
	return body, false, nil
}

// callError describes a failed call in one line ("cloudflare: <method> <url>:
// <what happened>") and wraps its causes so that errors.Is tells our
// timeout from the caller's cancellation.
func (c *Client) callError(parent, callCtx context.Context, method, target, stage string, err error) error {
	cause := err
	var ue *url.Error
	if errors.As(err, &ue) {
		cause = ue.Err // its message repeats the method and URL
	}
	msg := "cloudflare: " + method + " " + target + ": "
	if stage != "" {
		msg += stage + ": "
	}
	if perr := parent.Err(); perr != nil {
		msg += "ended by the caller's context"
		if !errors.Is(cause, perr) || cause.Error() != perr.Error() {
			msg += " (" + perr.Error() + ")"
		}
		errs := []error{perr, err}
		if errors.Is(err, ErrTimeout) {
			// Our timer fired too, but the caller's end takes precedence:
			// ErrTimeout must not be seen through the transport's error.
			errs = errs[:1]
		}
		return &wrapped{msg: msg + ": " + cause.Error(), errs: errs}
	}
	if callCtx.Err() != nil && errors.Is(context.Cause(callCtx), ErrTimeout) {
		msg += fmt.Sprintf("no answer within the %s per-call timeout", c.timeout)
		if !errors.Is(cause, ErrTimeout) && !errors.Is(cause, context.DeadlineExceeded) {
			msg += ": " + cause.Error()
		}
		return &wrapped{msg: msg, errs: []error{ErrTimeout, context.DeadlineExceeded, err}}
	}
	return &wrapped{msg: msg + cause.Error(), errs: []error{err}}
}

// wrapped is an error with its own message wrapping several causes.
type wrapped struct {
	msg  string
	errs []error
}

func (w *wrapped) Error() string   { return w.msg }
func (w *wrapped) Unwrap() []error { return w.errs }

// redacted stands in for a secret an answer echoed.
var redacted = []byte("[redacted]")

// minSecretPart is the shortest run of a secret's characters taken for a
// part of it: shorter runs (a token's "cfut_" prefix) say nothing.
const minSecretPart = 8

// secretsOf are the secrets a request carries: the bearer token, the
// legacy key.
func secretsOf(h http.Header) [2]string {
	return [...]string{strings.TrimPrefix(h.Get("Authorization"), "Bearer "), h.Get("X-Auth-Key")}
}

// RedactSecrets replaces in s every run of minSecretPart or more
// characters that is also a run of a secret the request's header h
// carried: whatever an answer echoes of a credential (in a header, in
// JSON escapes its body's bytes hid, in part), none of it is kept (SPEC §6:
// "not even in part"). Linear in s for each secret; a CF-Ray costs a few
// comparisons.
func RedactSecrets(s string, h http.Header) string {
	if len(s) < minSecretPart {
		return s
	}
	secrets := secretsOf(h)
	var b strings.Builder
	last := 0
	for i := 0; i+minSecretPart <= len(s); {
		n := 0
		for _, v := range secrets {
			if len(v) < minSecretPart || !strings.Contains(v, s[i:i+minSecretPart]) {
				continue
			}
			k := minSecretPart
			for i+k < len(s) && strings.Contains(v, s[i:i+k+1]) {
				k++
			}
			n = max(n, k)
		}
		if n == 0 {
			i++
			continue
		}
		b.WriteString(s[last:i])
		b.Write(redacted)
		i += n
		last = i
	}
	if last == 0 {
		return s
	}
	b.WriteString(s[last:])
	return b.String()
}

// redactError takes the secrets h carried out of a call's error message:
// a transport's error may quote what a broken answer echoed (a header
// line holding the Authorization header, say).
func redactError(err error, h http.Header) error {
	if w, ok := err.(*wrapped); ok {
		w.msg = RedactSecrets(w.msg, h)
	}
	return err
}

// redact takes out of what resp keeps every part of the secrets h carried
// (RedactSecrets), in the forms the body's bytes did not show: headers
// quoted, JSON escapes decoded.
func (resp *Response) redact(h http.Header) {
	resp.BodyError = RedactSecrets(resp.BodyError, h)
	resp.scrub = func(s string) string { return RedactSecrets(s, h) }
	if env := resp.Envelope; env != nil {
		env.irregular = RedactSecrets(env.irregular, h)
		redactMessages(env.Errors, h)
		redactMessages(env.Messages, h)
	}
}

func redactMessages(ms []Message, h http.Header) {
	for i := range ms {
		m := &ms[i]
		m.Message = RedactSecrets(m.Message, h)
		m.DocumentationURL = RedactSecrets(m.DocumentationURL, h)
		if m.Source != nil {
			m.Source.Pointer = RedactSecrets(m.Source.Pointer, h)
		}
		redactMessages(m.ErrorChain, h)
	}
}

// scrubSecrets replaces in body every copy of the secrets the request
// carried (the bearer token, the legacy key): an answer that echoes them
// (a proxy's debug page, an error quoting the header) must not carry them
// into details, logs and records.
func scrubSecrets(body []byte, h http.Header) []byte {
	for _, v := range secretsOf(h) {
		if len(v) >= 8 && bytes.Contains(body, []byte(v)) {
			body = bytes.ReplaceAll(body, []byte(v), redacted)
		}
	}
	return body
}
