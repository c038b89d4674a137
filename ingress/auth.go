package ingress

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Request headers of the signature schemes (SPEC §11).
const (
	HeaderWebhookID        = "webhook-id"
	HeaderWebhookTimestamp = "webhook-timestamp"
	HeaderWebhookSignature = "webhook-signature"
	HeaderPagerDuty        = "X-PagerDuty-Signature"
)

// Bounds of signature checking: a Standard Webhooks timestamp is good for
// five minutes either way, and at most maxSignatures signatures of a header
// are tried, so a request cannot make the ingress compute without end.
const (
	SignatureTolerance = 5 * time.Minute
	maxSignatures      = 8
	maxBearer          = 4096
)

// equal compares two secrets' digests in constant time. Tests replace it to
// count comparisons: every candidate is compared, whichever matches, so the
// time taken does not tell which caller (or whether any) matched.
var equal = func(a, b []byte) bool { return subtle.ConstantTimeCompare(a, b) == 1 }

// authFailure says why a request was not authenticated: a fixed phrase for
// the answer and the log, never a value the caller sent.
type authFailure string

const (
	authNone       authFailure = "no credential: send Authorization: Bearer <token>, or a signed webhook"
	authBadScheme  authFailure = "the Authorization header must be Bearer <token>"
	authBadToken   authFailure = "the bearer token is not one of a caller's"
	authBadTime    authFailure = "webhook-timestamp is missing, not a Unix time, or more than 5 minutes away from now"
	authNoID       authFailure = "webhook-id is missing"
	authBadSig     authFailure = "no signature matches a webhook caller's secret"
	authBadSigForm authFailure = "the signature header has no signature of a known version"
)

// authenticator finds the caller a request comes from.
type authenticator struct {
	tokens   []*Caller // bearer callers
	webhooks []*Caller // signing callers
}

func newAuthenticator(cs *Callers) authenticator {
	var a authenticator
	for _, c := range cs.List {
		if c.Webhook() {
			a.webhooks = append(a.webhooks, c)
		} else {
			a.tokens = append(a.tokens, c)
		}
	}
	return a
}

// authenticate returns the caller of a request with header h and body
// (empty for a GET): a bearer token if an Authorization header is sent,
// else a Standard Webhooks or PagerDuty v3 signature.
func (a authenticator) authenticate(h http.Header, body []byte, now time.Time) (*Caller, authFailure) {
	if v := h.Get("Authorization"); v != "" {
		return a.bearer(v)
	}
	if h.Get(HeaderWebhookSignature) != "" {
		return a.standard(h, body, now)
	}
	if v := h.Get(HeaderPagerDuty); v != "" {
		return a.pagerDuty(v, body)
	}
	return nil, authNone
}

// bearer checks an Authorization header value.
func (a authenticator) bearer(v string) (*Caller, authFailure) {
	token, ok := bearerToken(v)
	if !ok {
		return nil, authBadScheme
	}
	sum := sha256.Sum256([]byte(token))
	var found *Caller
	for _, c := range a.tokens {
		if equal(sum[:], c.tokenHash) && found == nil {
			found = c
		}
	}
	if found == nil {
		return nil, authBadToken
	}
	return found, ""
}

// bearerToken is the token of "Bearer <token>" (the scheme in any letter
// case, RFC 9110 §11.1).
func bearerToken(v string) (string, bool) {
	scheme, token, ok := strings.Cut(v, " ")
	token = strings.TrimSpace(token)
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" || len(token) > maxBearer {
		return "", false
	}
	return token, true
}

// standard checks a Standard Webhooks signature: HMAC-SHA256 of
// "<webhook-id>.<webhook-timestamp>.<body>", base64, as "v1,<sig>" entries
// separated by spaces.
func (a authenticator) standard(h http.Header, body []byte, now time.Time) (*Caller, authFailure) {
	id, ts := h.Get(HeaderWebhookID), h.Get(HeaderWebhookTimestamp)
	if id == "" {
		return nil, authNoID
	}
	if !freshTimestamp(ts, now) {
		return nil, authBadTime
	}
	sigs := standardSignatures(h.Get(HeaderWebhookSignature))
	if len(sigs) == 0 {
		return nil, authBadSigForm
	}
	return a.match(sigs, func(secret []byte) []byte {
		m := hmac.New(sha256.New, secret)
		m.Write([]byte(id))
		m.Write([]byte{'.'})
		m.Write([]byte(ts))
		m.Write([]byte{'.'})
		m.Write(body)
		return m.Sum(nil)
	})
}

// pagerDuty checks a PagerDuty v3 signature: "v1=<hex HMAC-SHA256 of the
// body>", several separated by commas while a secret is being rotated.
func (a authenticator) pagerDuty(v string, body []byte) (*Caller, authFailure) {
	sigs := pagerDutySignatures(v)
	if len(sigs) == 0 {
		return nil, authBadSigForm
	}
	return a.match(sigs, func(secret []byte) []byte {
		m := hmac.New(sha256.New, secret)
		m.Write(body)
		return m.Sum(nil)
	})
}

// match returns the webhook caller whose secret's MAC is one of sigs. Every
// caller's MAC is compared with every signature, whichever matches.
func (a authenticator) match(sigs [][]byte, mac func(secret []byte) []byte) (*Caller, authFailure) {
	var found *Caller
	for _, c := range a.webhooks {
		want := mac(c.secret)
		for _, sig := range sigs {
			if equal(want, sig) && found == nil {
				found = c
			}
		}
	}
	if found == nil {
		return nil, authBadSig
	}
	return found, ""
}

// freshTimestamp reports whether ts is a Unix time within
// SignatureTolerance of now.
func freshTimestamp(ts string, now time.Time) bool {
	if ts == "" || len(ts) > 20 {
		return false
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return false
	}
	d := now.Unix() - sec
	return d <= int64(SignatureTolerance/time.Second) && -d <= int64(SignatureTolerance/time.Second)
}

// standardSignatures decodes the v1 entries of a webhook-signature header;
// other versions and malformed entries are skipped.
func standardSignatures(v string) [][]byte {
	var out [][]byte
	for i, f := range strings.Fields(v) {
		if i >= maxSignatures {
			break
		}
		version, sig, ok := strings.Cut(f, ",")
		if !ok || version != "v1" {
			continue
		}
		b, err := base64.StdEncoding.DecodeString(sig)
		if err != nil || len(b) != sha256.Size {
			continue
		}
		out = append(out, b)
	}
	return out
}

// pagerDutySignatures decodes the v1 entries of X-PagerDuty-Signature.
func pagerDutySignatures(v string) [][]byte {
	var out [][]byte
	for i, f := range strings.Split(v, ",") {
		if i >= maxSignatures {
			break
		}
		sig, ok := strings.CutPrefix(strings.TrimSpace(f), "v1=")
		if !ok {
			continue
		}
		b, err := hex.DecodeString(sig)
		if err != nil || len(b) != sha256.Size {
			continue
		}
		out = append(out, b)
	}
	return out
}
