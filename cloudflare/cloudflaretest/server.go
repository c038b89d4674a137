// Package cloudflaretest is an in-process stand-in for Cloudflare's Stream
// signing-key endpoints, for the demo, tests and benchmarks. It speaks the
// v4 envelope, checks credentials, keeps each account's keys, answers the
// key list, can be scripted per key, can rate-limit like the real API (429,
// code 971) and logs every request (never a secret).
//
// The behaviour is modelled on what SPEC §1 records of the real API. Every
// key exists until its first successful delete; deleting it again answers
// 404, the answer the worker is specified to expect where Cloudflare's
// behaviour is undocumented. A key the server has never seen is created by
// its first delete (which then succeeds), so a test need not add the keys
// its events name. The ways a 404 can mislead are all here: a key that
// answers 404 yet stays listed (KeepListed), an HTML 404 from something
// that is not the API (HTML404, WithoutAPI).
package cloudflaretest

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/revoker/revoker/cloudflare"
	"github.com/revoker/revoker/throttle"
)

// APIPrefix is the path of the API root on the server; Server.URL ends in it.
const APIPrefix = "/client/v4"

// Error codes the stand-in answers with (the real API's where known).
const (
	CodeAuthError      = 10000 // 403: bad or missing credential
	CodeBadHeaders     = 6003  // 400: malformed auth header ...
	CodeBadAuthzHeader = 6111  // ... chain: Authorization
	CodeBadAuthEmail   = 6102  // ... chain: X-Auth-Email
	CodeBadAuthKey     = 6103  // ... chain: X-Auth-Key
	CodeRateLimited    = 971   // 429
	CodeNoRoute        = 7000  // 404: unknown path
	CodeBadIdentifier  = 7003  // 400: identifier not valid in the path
	CodeNotFound       = 10003 // 404: no such key (the stand-in's choice)
	CodeMethod         = 10405 // 405: method not allowed (the stand-in's choice)
	CodeScripted       = 10999 // any other scripted 4xx (the stand-in's choice)
)

// HTML404 is a status for Script and ScriptList: a 404 whose body is an
// HTML page, not the envelope, as a proxy, a load balancer or a wrong base
// URL answers. The request log records it as 404.
const HTML404 = -http.StatusNotFound

// SuccessBody is the body of a successful delete.
const SuccessBody = `{"success":true,"errors":[],"messages":[],"result":"ok"}`

// Request is one request as the server saw it. It never holds a secret.
type Request struct {
	At        time.Time // arrival
	Method    string    // "DELETE" for a delete, "GET" for the key list
	Path      string    // escaped path, e.g. /client/v4/accounts/a/stream/keys/k
	AccountID string    // path values; "" on other routes, KeyID "" on the list
	KeyID     string
	// Auth is "bearer", "legacy", "none", or "malformed" (an auth header
	// that does not parse: answered 400, code 6003).
	Auth string
	// TokenOK reports that the credential was accepted: it matched
	// WithToken/WithLegacyKey, or, when neither is set, that a well-formed
	// credential was sent at all.
	TokenOK bool
	Status  int // the status answered; 0 while the Responder runs
}

// Responder decides the answer to a request before the default behaviour
// does. It is called concurrently, without the server's lock held (it may
// call the Server's methods). When handled is false the default behaviour
// answers; header is merged over the defaults (Content-Type, CF-Ray).
type Responder func(r Request) (status int, header http.Header, body string, handled bool)

// Option configures a Server.
type Option func(*config)

type config struct {
	responder  Responder
	token      string
	hasToken   bool
	email, key string
	hasLegacy  bool
	perSecond  int
	latency    time.Duration
	withoutAPI bool
}

// WithResponder makes f answer first; see Responder.
func WithResponder(f Responder) Option { return func(c *config) { c.responder = f } }

// WithToken requires "Authorization: Bearer tok": a wrong or missing
// credential gets 403 with code 10000, a malformed Authorization header 400
// with code 6003 (chain 6111). It may be combined with WithLegacyKey.
func WithToken(tok string) Option {
	return func(c *config) { c.token, c.hasToken = tok, true }
}

// WithLegacyKey requires the legacy pair X-Auth-Email/X-Auth-Key (or the
// WithToken token, when both are set); a wrong pair gets 403, code 10000.
func WithLegacyKey(email, key string) Option {
	return func(c *config) { c.email, c.key, c.hasLegacy = email, key, true }
}

// WithRateLimit answers 429 (code 971) to any request that would make more
// than perSecond requests answered with something other than 429 in the
// last second (a sliding window over arrival times, as the worker's own
// limiter must keep under). Retry-After is the whole seconds until the
// window has room, at least 1. 0 or less turns it off.
func WithRateLimit(perSecond int) Option { return func(c *config) { c.perSecond = perSecond } }

// WithoutAPI makes the server something that is not the API, as a wrong
// base URL reaches: every request, whatever its method, path and
// credential, answers 404 with an HTML page. A Responder still answers
// first. No key changes and WithRateLimit does not apply.
func WithoutAPI() Option { return func(c *config) { c.withoutAPI = true } }

// WithLatency delays every answer by d (after it is decided, so a client
// that gives up meanwhile leaves the key deleted, as with the real API).
func WithLatency(d time.Duration) Option { return func(c *config) { c.latency = d } }

// Server is a started stand-in. Close it when done.
type Server struct {
	// URL is the base URL to give the client: http://127.0.0.1:port/client/v4.
	URL string

	ts  *httptest.Server
	cfg config

	mu          sync.Mutex
	log         []Request
	keys        map[[2]string]*keyState // by account, key
	scripts     map[string][]int        // deletes, by key
	listScripts map[string][]int        // key lists, by account
	window      []time.Time             // arrivals answered non-429 within the last second
	throttled   int
	rayNext     uint64
}

// keyState is what the server knows of one key.
type keyState struct {
	created    time.Time
	deleted    bool
	keepListed bool // deletes answer 404 and leave it listed
}

// NewServer starts a stand-in on a loopback port.
func NewServer(opts ...Option) *Server {
	s := &Server{
		keys:        make(map[[2]string]*keyState),
		scripts:     make(map[string][]int),
		listScripts: make(map[string][]int),
		// CF-Ray values look like Cloudflare's (16 hex digits and a colo)
		// and are unique per server: a random start, then a counter.
		rayNext: rand.Uint64() >> 1,
	}
	for _, o := range opts {
		o(&s.cfg)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("DELETE "+APIPrefix+"/accounts/{account}/stream/keys/{key}", s.handle(routeDelete))
	mux.HandleFunc("GET "+APIPrefix+"/accounts/{account}/stream/keys", s.handle(routeList))
	mux.HandleFunc(APIPrefix+"/accounts/{account}/stream/keys/{key}", s.handle(routeMethod))
	mux.HandleFunc("/", s.handle(routeOther))
	s.ts = httptest.NewServer(mux)
	s.URL = s.ts.URL + APIPrefix
	return s
}

// Close shuts the server down, waiting for requests in flight.
func (s *Server) Close() { s.ts.Close() }

// CloseClientConnections drops every open client connection, for tests of
// connection errors.
func (s *Server) CloseClientConnections() { s.ts.CloseClientConnections() }

// Requests returns a copy of the request log, in the order the server
// decided the answers: a request that arrived after another was answered
// comes after it (At, taken on arrival, may be out of order between
// concurrent requests).
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.log...)
}

// Count reports how many requests arrived (every route, every answer).
func (s *Server) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.log)
}

// Throttled reports how many requests WithRateLimit answered with 429
// (scripted 429s not included).
func (s *Server) Throttled() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.throttled
}

// Deleted reports whether key of account has been deleted.
func (s *Server) Deleted(account, key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.keys[[2]string{account, key}]
	return st != nil && st.deleted
}

// Listed reports whether the key list of account names key: the server
// knows the key and it is not deleted.
func (s *Server) Listed(account, key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.keys[[2]string{account, key}]
	return st != nil && !st.deleted
}

// AddKey makes key a live key of account: listed until a delete succeeds.
// A deleted key is made live again (the real API never reuses ids; tests
// may).
func (s *Server) AddKey(account, key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.key(account, key, time.Now()).deleted = false
}

// KeepListed makes key a live key of account whose deletes, unless
// scripted otherwise, answer the not-found envelope (404, code 10003) while
// it stays in the list: "404 on delete, but the key is still listed".
// RemoveKey, or a scripted 2xx, ends it.
func (s *Server) KeepListed(account, key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.key(account, key, time.Now())
	st.deleted, st.keepListed = false, true
}

// RemoveKey deletes key of account as someone else would: it leaves the
// list and deletes of it answer 404. No request is logged.
func (s *Server) RemoveKey(account, key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.key(account, key, time.Now()).deleted = true
}

// key returns the state of a key, making it known (live) if it was not;
// s.mu is held.
func (s *Server) key(account, key string, now time.Time) *keyState {
	k := [2]string{account, key}
	st := s.keys[k]
	if st == nil {
		st = &keyState{created: now}
		s.keys[k] = st
	}
	return st
}

// Script queues statuses for deletes of key (in any account), consumed one
// per request in order before the default behaviour resumes; e.g.
// Script("k1", 503, 503). 2xx deletes the key (204 answers with no body);
// 404 is the not-found envelope and leaves the key as it was (a key never
// seen stays unlisted, as one deleted earlier by someone else); HTML404 a
// 404 with an HTML page; 401/403 the auth error (code 10000); 429 code 971
// with Retry-After: 1; 5xx an HTML page like Cloudflare's edge; 3xx a
// redirect to another path; any other status an error envelope.
// Authentication and WithRateLimit are checked first and do not consume it.
func (s *Server) Script(key string, statuses ...int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scripts[key] = append(s.scripts[key], statuses...)
}

// ScriptList queues statuses for key lists of account, as Script does for
// deletes: 2xx answers the list with that status (204 with no body), 404
// the envelope with code 7000 (no route), HTML404 an HTML page, and every
// other status as for Script.
func (s *Server) ScriptList(account string, statuses ...int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.listScripts[account] = append(s.listScripts[account], statuses...)
}

type route int

const (
	routeDelete route = iota
	routeList
	routeMethod
	routeOther
)

type reply struct {
	status int
	header http.Header
	body   string
}

func (s *Server) handle(rt route) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		req := Request{
			At:        time.Now(),
			Method:    r.Method,
			Path:      r.URL.EscapedPath(),
			AccountID: r.PathValue("account"),
			KeyID:     r.PathValue("key"),
		}
		authReply := s.authenticate(r, &req)

		var rep reply
		handled := false
		if f := s.cfg.responder; f != nil {
			rep.status, rep.header, rep.body, handled = f(req)
		}

		s.mu.Lock()
		// The window uses the time taken under the lock, not req.At, so
		// it stays sorted however goroutines interleave.
		now := time.Now()
		limited := s.cfg.perSecond > 0
		switch {
		case handled:
		case s.cfg.withoutAPI:
			// Not the API answering: no envelope, no budget.
			rep, limited = htmlReply(http.StatusNotFound), false
		default:
			rep = s.decide(rt, req, authReply, now)
		}
		if limited {
			if rep.status != http.StatusTooManyRequests {
				s.window = append(s.window, now)
			}
			s.addRateHeaders(&rep, now)
		}
		ray := s.rayNext
		s.rayNext++
		req.Status = rep.status
		s.log = append(s.log, req)
		s.mu.Unlock()

		if s.cfg.latency > 0 {
			throttle.Sleep(r.Context(), s.cfg.latency)
		}
		s.write(w, rep, ray)
	}
}

// decide is the default behaviour; s.mu is held.
func (s *Server) decide(rt route, req Request, authReply *reply, now time.Time) reply {
	if s.cfg.perSecond > 0 {
		s.prune(now)
		if len(s.window) >= s.cfg.perSecond {
			s.throttled++
			// Honest Retry-After: when the oldest call in the window
			// leaves it, in whole seconds rounded up, at least 1.
			wait := s.window[0].Add(time.Second).Sub(now)
			secs := max(1, int((wait+time.Second-1)/time.Second))
			return withHeader(envelopeReply(http.StatusTooManyRequests, msg{CodeRateLimited, "Rate limited. Please wait and consider throttling your request speed", nil}),
				"Retry-After", strconv.Itoa(secs))
		}
	}
	if authReply != nil {
		return *authReply
	}
	switch rt {
	case routeOther:
		return envelopeReply(http.StatusNotFound, msg{CodeNoRoute, "No route for that URI", nil})
	case routeMethod:
		return withHeader(envelopeReply(http.StatusMethodNotAllowed, msg{CodeMethod, "Method not allowed", nil}), "Allow", http.MethodDelete)
	}
	if !cloudflare.ValidIdentifier(req.AccountID) || rt == routeDelete && !cloudflare.ValidIdentifier(req.KeyID) {
		return envelopeReply(http.StatusBadRequest, msg{CodeBadIdentifier, "Could not route to " + req.Path + ", perhaps your object identifier is invalid?", nil})
	}
	if rt == routeList {
		if st, ok := pop(s.listScripts, req.AccountID); ok {
			return s.scriptedList(st, req, now)
		}
		return s.listKeys(req.AccountID, http.StatusOK)
	}
	if st, ok := pop(s.scripts, req.KeyID); ok {
		return s.scripted(st, req, now)
	}
	return s.deleteKey(req, now)
}

// pop takes the first status queued under name.
func pop(scripts map[string][]int, name string) (int, bool) {
	q := scripts[name]
	if len(q) == 0 {
		return 0, false
	}
	if len(q) == 1 {
		delete(scripts, name)
	} else {
		scripts[name] = q[1:]
	}
	return q[0], true
}

func (s *Server) deleteKey(req Request, now time.Time) reply {
	st := s.key(req.AccountID, req.KeyID, now)
	if st.deleted || st.keepListed {
		return notFound()
	}
	st.deleted = true
	return reply{status: http.StatusOK, body: SuccessBody}
}

// listKeys answers the key list of account: its known keys not deleted,
// oldest first, as {"id", "created"} entries.
func (s *Server) listKeys(account string, status int) reply {
	type entry struct {
		ID      string `json:"id"`
		Created string `json:"created"`
		at      time.Time
	}
	list := []entry{}
	for k, st := range s.keys {
		if k[0] == account && !st.deleted {
			list = append(list, entry{ID: k[1], Created: st.created.UTC().Format(time.RFC3339Nano), at: st.created})
		}
	}
	slices.SortFunc(list, func(a, b entry) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	b, _ := json.Marshal(struct {
		Success  bool    `json:"success"`
		Errors   []msg   `json:"errors"`
		Messages []msg   `json:"messages"`
		Result   []entry `json:"result"`
	}{Success: true, Errors: []msg{}, Messages: []msg{}, Result: list})
	return reply{status: status, body: string(b)}
}

func (s *Server) scriptedList(st int, req Request, now time.Time) reply {
	switch {
	case st == http.StatusNoContent:
		return reply{status: st}
	case st >= 200 && st < 300:
		return s.listKeys(req.AccountID, st)
	case st == http.StatusNotFound:
		return envelopeReply(st, msg{CodeNoRoute, "No route for that URI", nil})
	}
	return s.scripted(st, req, now)
}

func (s *Server) scripted(st int, req Request, now time.Time) reply {
	switch {
	case st == http.StatusNoContent:
		s.key(req.AccountID, req.KeyID, now).deleted = true
		return reply{status: st}
	case st >= 200 && st < 300:
		s.key(req.AccountID, req.KeyID, now).deleted = true
		return reply{status: st, body: SuccessBody}
	case st >= 300 && st < 400:
		return withHeader(reply{status: st, body: ""}, "Location", "/moved"+req.Path)
	case st == http.StatusNotFound:
		return notFound()
	case st == HTML404:
		return htmlReply(http.StatusNotFound)
	case st == http.StatusUnauthorized || st == http.StatusForbidden:
		return envelopeReply(st, msg{CodeAuthError, "Authentication error", nil})
	case st == http.StatusTooManyRequests:
		return withHeader(envelopeReply(st, msg{CodeRateLimited, "Rate limited. Please wait and consider throttling your request speed", nil}), "Retry-After", "1")
	case st >= 500:
		return htmlReply(st)
	}
	text := http.StatusText(st)
	if text == "" {
		text = "Scripted error"
	}
	return envelopeReply(st, msg{CodeScripted, text, nil})
}

// authenticate classifies the credential of r into req.Auth/TokenOK and
// returns the rejection, if any, that the default behaviour answers with.
func (s *Server) authenticate(r *http.Request, req *Request) *reply {
	c := &s.cfg
	required := c.hasToken || c.hasLegacy
	authz, hasAuthz := r.Header["Authorization"]
	email, key := r.Header.Get("X-Auth-Email"), r.Header.Get("X-Auth-Key")
	switch {
	case hasAuthz:
		tok, ok := bearer(authz)
		if !ok {
			req.Auth = "malformed"
			return badHeaders(CodeBadAuthzHeader, "Invalid format for Authorization header")
		}
		req.Auth = "bearer"
		req.TokenOK = !required || c.hasToken && equal(tok, c.token)
	case email != "" || key != "" || r.Header["X-Auth-Email"] != nil || r.Header["X-Auth-Key"] != nil:
		switch {
		case !cloudflare.ValidSecret(email):
			req.Auth = "malformed"
			return badHeaders(CodeBadAuthEmail, "Invalid format for X-Auth-Email header")
		case !cloudflare.ValidSecret(key):
			req.Auth = "malformed"
			return badHeaders(CodeBadAuthKey, "Invalid format for X-Auth-Key header")
		}
		req.Auth = "legacy"
		req.TokenOK = !required || c.hasLegacy && equal(email, c.email) && equal(key, c.key)
	default:
		req.Auth = "none"
		req.TokenOK = false
		if !required {
			return nil // nothing required, nothing sent: let it through
		}
	}
	if !req.TokenOK {
		r := envelopeReply(http.StatusForbidden, msg{CodeAuthError, "Authentication error", nil})
		return &r
	}
	return nil
}

// bearer parses "Bearer <token>" (scheme in any case, one space, a token of
// visible ASCII), the only form the API accepts.
func bearer(vs []string) (string, bool) {
	if len(vs) != 1 {
		return "", false
	}
	scheme, tok, ok := strings.Cut(vs[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || !cloudflare.ValidSecret(tok) {
		return "", false
	}
	return tok, true
}

func equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

func badHeaders(chainCode int, text string) *reply {
	r := envelopeReply(http.StatusBadRequest, msg{CodeBadHeaders, "Invalid request headers", []msg{{chainCode, text, nil}}})
	return &r
}

// prune drops arrivals older than one second before now; s.mu is held.
func (s *Server) prune(now time.Time) {
	cut := now.Add(-time.Second)
	i := 0
	for i < len(s.window) && !s.window[i].After(cut) {
		i++
	}
	s.window = append(s.window[:0], s.window[i:]...)
}

// addRateHeaders adds the IETF draft headers the real API may send, so
// clients can be tested against them; s.mu is held.
func (s *Server) addRateHeaders(rep *reply, now time.Time) {
	s.prune(now)
	left := max(0, s.cfg.perSecond-len(s.window))
	reset := 1
	if len(s.window) > 0 {
		wait := s.window[0].Add(time.Second).Sub(now)
		reset = max(1, int((wait+time.Second-1)/time.Second))
	}
	if rep.header == nil {
		rep.header = http.Header{}
	}
	if rep.header.Get("Ratelimit") == "" {
		rep.header.Set("Ratelimit", fmt.Sprintf(`"default";r=%d;t=%d`, left, reset))
		rep.header.Set("Ratelimit-Policy", fmt.Sprintf(`"default";q=%d;w=1`, s.cfg.perSecond))
	}
}

func (s *Server) write(w http.ResponseWriter, rep reply, ray uint64) {
	h := w.Header()
	h.Set("Cf-Ray", fmt.Sprintf("%016x-SJC", ray))
	if rep.body != "" {
		if strings.HasPrefix(rep.body, "<") {
			h.Set("Content-Type", "text/html")
		} else {
			h.Set("Content-Type", "application/json")
		}
	}
	for k, vs := range rep.header {
		h[http.CanonicalHeaderKey(k)] = vs
	}
	status := rep.status
	if status < 100 || status > 999 {
		status = http.StatusInternalServerError
	}
	w.WriteHeader(status)
	_, _ = w.Write([]byte(rep.body))
}

type msg struct {
	Code       int    `json:"code"`
	Message    string `json:"message"`
	ErrorChain []msg  `json:"error_chain,omitempty"`
}

func envelopeReply(status int, errs ...msg) reply {
	b, _ := json.Marshal(struct {
		Success  bool  `json:"success"`
		Errors   []msg `json:"errors"`
		Messages []msg `json:"messages"`
		Result   any   `json:"result"`
	}{Success: false, Errors: errs, Messages: []msg{}, Result: nil})
	return reply{status: status, body: string(b)}
}

func notFound() reply {
	return envelopeReply(http.StatusNotFound, msg{CodeNotFound, "Not Found", nil})
}

func withHeader(r reply, k, v string) reply {
	if r.header == nil {
		r.header = http.Header{}
	}
	r.header.Set(k, v)
	return r
}

// htmlReply is what Cloudflare's edge answers with for 5xx: HTML, not JSON.
func htmlReply(status int) reply {
	title := fmt.Sprintf("%d %s", status, http.StatusText(status))
	return reply{status: status, body: "<html>\r\n<head><title>" + title + "</title></head>\r\n<body>\r\n<center><h1>" +
		title + "</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"}
}
