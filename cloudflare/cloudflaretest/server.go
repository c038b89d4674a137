// Package cloudflaretest is an in-process stand-in for Cloudflare's Stream
// signing-key endpoints, for the demo, tests and benchmarks. It speaks the
// v4 envelope, checks credentials, keeps each account's keys, answers the
// key list, can be scripted per key, can rate-limit like the real API (429,
// code 971) and logs every request (never a secret).
//
// It can stand in for several credentials at once (WithAccountToken,
// WithUserToken, WithUserKey): each is allowed its own accounts and charged
// to a named rate budget, each budget limited on its own, as Cloudflare
// limits each user and each account token (SPEC §1, §6). It answers the
// token checks (GET /user/tokens/verify, GET
// /accounts/{account_id}/tokens/verify, and GET /user for the legacy pair).
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
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
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
	CodeInvalidToken   = 1000  // 401: a token check of a token unknown to that endpoint
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
	// TokenOK reports that the credential was accepted: it matched a
	// configured one (WithToken, WithLegacyKey, WithAccountToken,
	// WithUserToken, WithUserKey) allowed for the path's account, or, when
	// none is configured, that a well-formed credential was sent at all.
	TokenOK bool
	// Credential is the name of the configured credential the request's
	// matched (allowed for the account or not); "" when none matched, and
	// for WithToken and WithLegacyKey, which are unnamed.
	Credential string
	// Budget is the rate budget the request was charged to: its
	// credential's, "" for WithToken, WithLegacyKey and unknown credentials.
	Budget string
	Status int // the status answered; 0 while the Responder runs
}

// Responder decides the answer to a request before the default behaviour
// does. It is called concurrently, without the server's lock held (it may
// call the Server's methods). When handled is false the default behaviour
// answers; header is merged over the defaults (Content-Type, CF-Ray).
type Responder func(r Request) (status int, header http.Header, body string, handled bool)

// Option configures a Server.
type Option func(*config)

type config struct {
	responder   Responder
	principals  []*principal
	perSecond   int
	budgetRates map[string]int
	lockout     time.Duration
	latency     time.Duration
	withoutAPI  bool
}

type principalKind int

const (
	userToken principalKind = iota
	accountToken
	userKey
)

// principal is one configured credential.
type principal struct {
	name       string
	kind       principalKind
	token      string // the token, or the legacy key
	email      string
	budget     string
	all        bool // "*": every account
	accounts   map[string]bool
	fingerprnt string // the result.id of its token check
}

func (p *principal) allows(account string) bool { return p.all || p.accounts[account] }

func newPrincipal(kind principalKind, name, email, secret, budget string, accounts []string) *principal {
	if budget == "" {
		budget = name
	}
	p := &principal{name: name, kind: kind, token: secret, email: email, budget: budget, accounts: map[string]bool{}}
	for _, a := range accounts {
		if a == "*" {
			p.all = true
		}
		p.accounts[a] = true
	}
	sum := sha256.Sum256([]byte(name + "\x00" + secret))
	p.fingerprnt = hex.EncodeToString(sum[:16])
	return p
}

// WithResponder makes f answer first; see Responder.
func WithResponder(f Responder) Option { return func(c *config) { c.responder = f } }

// WithToken requires "Authorization: Bearer tok": a wrong or missing
// credential gets 403 with code 10000, a malformed Authorization header 400
// with code 6003 (chain 6111). It may be combined with WithLegacyKey.
// The token is a user's token valid for every account, charged to the
// budget "" (WithRateLimit's).
func WithToken(tok string) Option {
	return func(c *config) {
		c.principals = append(c.principals, newPrincipal(userToken, "", "", tok, "", []string{"*"}))
	}
}

// WithLegacyKey requires the legacy pair X-Auth-Email/X-Auth-Key (or the
// WithToken token, when both are set); a wrong pair gets 403, code 10000.
func WithLegacyKey(email, key string) Option {
	return func(c *config) {
		c.principals = append(c.principals, newPrincipal(userKey, "", email, key, "", []string{"*"}))
	}
}

// WithAccountToken adds an account API token named name (the name appears
// in the request log; the token never does), allowed for accounts ("*":
// every account), charged to budget ("" means name). Any credential option
// makes credentials required: a request whose credential is not allowed
// for the path's account gets 403 with code 10000. Its token check answers
// only on /accounts/{account_id}/tokens/verify, for its accounts.
func WithAccountToken(name, token, budget string, accounts ...string) Option {
	return func(c *config) {
		c.principals = append(c.principals, newPrincipal(accountToken, name, "", token, budget, accounts))
	}
}

// WithUserToken adds a user's API token, as WithAccountToken does; a
// user's tokens share the user's budget, so give them one budget name. Its
// token check answers only on /user/tokens/verify.
func WithUserToken(name, token, budget string, accounts ...string) Option {
	return func(c *config) {
		c.principals = append(c.principals, newPrincipal(userToken, name, "", token, budget, accounts))
	}
}

// WithUserKey adds a user's legacy pair (X-Auth-Email, X-Auth-Key), as
// WithAccountToken does. It has no token check; GET /user answers it.
func WithUserKey(name, email, key, budget string, accounts ...string) Option {
	return func(c *config) {
		c.principals = append(c.principals, newPrincipal(userKey, name, email, key, budget, accounts))
	}
}

// WithBudgetRate limits budget to perSecond as WithRateLimit does, in place
// of WithRateLimit's value (0 or less: no limit for that budget).
func WithBudgetRate(budget string, perSecond int) Option {
	return func(c *config) {
		if c.budgetRates == nil {
			c.budgetRates = map[string]int{}
		}
		c.budgetRates[budget] = perSecond
	}
}

// WithLockout makes a rate-limited budget behave as Cloudflare does past
// its limit: once a request is refused for the rate, every request charged
// to that budget is refused (429, code 971, Retry-After the seconds left)
// for d, whatever the window says. Other budgets are not affected. 0 (the
// default) refuses only the requests over the limit.
func WithLockout(d time.Duration) Option { return func(c *config) { c.lockout = d } }

// WithRateLimit answers 429 (code 971) to any request that would make more
// than perSecond requests answered with something other than 429 in the
// last second (a sliding window over arrival times, as the worker's own
// limiter must keep under). Retry-After is the whole seconds until the
// window has room, at least 1. 0 or less turns it off. With several
// credentials, it is the limit of each budget not given WithBudgetRate, each
// counted apart. Every answer charged to a limited budget carries Ratelimit
// and Ratelimit-Policy as Cloudflare's do, over its five-minute window
// (QuotaWindow): `"default";q=<perSecond×300>;w=300`, and what is left of
// that quota with the seconds until its oldest call leaves the window.
// The per-second refusal is stricter than that quota: it checks that the
// worker spaces its calls.
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
	budgets     map[string]*budgetState
	statuses    map[string]string // token check status by credential name, when not "active"
	throttled   int
	rayNext     uint64
}

// budgetState is one rate budget's window.
type budgetState struct {
	perSecond   int
	window      []time.Time // arrivals answered non-429 within the last second
	quota       []time.Time // those within the last QuotaWindow, for the headers
	lockedUntil time.Time
	count       int
	throttled   int
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
		budgets:     make(map[string]*budgetState),
		statuses:    make(map[string]string),
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
	mux.HandleFunc("GET "+APIPrefix+"/user/tokens/verify", s.handle(routeVerifyUser))
	mux.HandleFunc("GET "+APIPrefix+"/accounts/{account}/tokens/verify", s.handle(routeVerifyAccount))
	mux.HandleFunc("GET "+APIPrefix+"/user", s.handle(routeUser))
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
// (scripted 429s not included), every budget together.
func (s *Server) Throttled() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.throttled
}

// BudgetCount reports how many requests were charged to budget (every
// route, every answer, 429s included).
func (s *Server) BudgetCount(budget string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.budgets[budget]; b != nil {
		return b.count
	}
	return 0
}

// BudgetThrottled reports how many requests of budget were answered 429 for
// its rate.
func (s *Server) BudgetThrottled(budget string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.budgets[budget]; b != nil {
		return b.throttled
	}
	return 0
}

// SetTokenStatus makes the token check of the named credential answer
// success true with result.status status ("disabled", "expired"; "active"
// restores it), and its other calls 403 (code 10000) while it is not
// "active".
func (s *Server) SetTokenStatus(name, status string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if status == "active" {
		delete(s.statuses, name)
		return
	}
	s.statuses[name] = status
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
	routeVerifyUser
	routeVerifyAccount
	routeUser
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
		p, authReply := s.authenticate(r, &req)

		var rep reply
		handled := false
		if f := s.cfg.responder; f != nil {
			rep.status, rep.header, rep.body, handled = f(req)
		}

		s.mu.Lock()
		// The window uses the time taken under the lock, not req.At, so
		// it stays sorted however goroutines interleave.
		now := time.Now()
		b := s.budget(req.Budget)
		limited := b.perSecond > 0
		switch {
		case handled:
		case s.cfg.withoutAPI:
			// Not the API answering: no envelope, no budget.
			rep, limited = htmlReply(http.StatusNotFound), false
		default:
			b.count++
			if p != nil && authReply == nil && s.statuses[p.name] != "" && !isVerify(rt) {
				authReply = authError()
				req.TokenOK = false
			}
			rep = s.decide(rt, req, p, b, authReply, now)
		}
		if limited {
			if rep.status != http.StatusTooManyRequests {
				b.window = append(b.window, now)
				b.quota = append(b.quota, now)
			}
			s.addRateHeaders(b, &rep, now)
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

// budget returns the state of the named budget, made on first use; s.mu is
// held.
func (s *Server) budget(name string) *budgetState {
	b := s.budgets[name]
	if b == nil {
		b = &budgetState{perSecond: s.cfg.perSecond}
		if r, ok := s.cfg.budgetRates[name]; ok {
			b.perSecond = r
		}
		s.budgets[name] = b
	}
	return b
}

// ceilSeconds is d in whole seconds rounded up, at least 1.
func ceilSeconds(d time.Duration) int { return max(1, int((d+time.Second-1)/time.Second)) }

// decide is the default behaviour; s.mu is held.
func (s *Server) decide(rt route, req Request, p *principal, b *budgetState, authReply *reply, now time.Time) reply {
	if b.perSecond > 0 {
		b.prune(now)
		secs := 0
		switch {
		case now.Before(b.lockedUntil):
			secs = ceilSeconds(b.lockedUntil.Sub(now))
		case len(b.window) >= b.perSecond && s.cfg.lockout > 0:
			b.lockedUntil = now.Add(s.cfg.lockout)
			secs = ceilSeconds(s.cfg.lockout)
		case len(b.window) >= b.perSecond:
			// Honest Retry-After: when the oldest call in the window
			// leaves it.
			secs = ceilSeconds(b.window[0].Add(time.Second).Sub(now))
		}
		if secs > 0 {
			s.throttled++
			b.throttled++
			return withHeader(envelopeReply(http.StatusTooManyRequests, msg{CodeRateLimited, "Rate limited. Please wait and consider throttling your request speed", nil}),
				"Retry-After", strconv.Itoa(secs))
		}
	}
	if isVerify(rt) {
		return s.verify(rt, req, p, authReply)
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

func isVerify(rt route) bool {
	return rt == routeVerifyUser || rt == routeVerifyAccount || rt == routeUser
}

// verify answers the token checks; s.mu is held. A token check answers for
// the credential itself, so an account it is not allowed for only matters
// on the account endpoint.
func (s *Server) verify(rt route, req Request, p *principal, authReply *reply) reply {
	if authReply != nil && req.Auth == "malformed" {
		return *authReply
	}
	open := len(s.cfg.principals) == 0
	invalid := envelopeReply(http.StatusUnauthorized, msg{CodeInvalidToken, "Invalid API Token", nil})
	switch rt {
	case routeUser:
		// Whoever the API knows may read its own user; an account token
		// belongs to no user.
		if req.Auth == "none" || !open && (p == nil || p.kind == accountToken) {
			return *authError()
		}
		return resultReply(map[string]string{"id": fingerprintOf(p)})
	case routeVerifyAccount:
		if !cloudflare.ValidIdentifier(req.AccountID) {
			return envelopeReply(http.StatusBadRequest, msg{CodeBadIdentifier, "Could not route to " + req.Path + ", perhaps your object identifier is invalid?", nil})
		}
		if req.Auth != "bearer" || open || p == nil || p.kind != accountToken || !p.allows(req.AccountID) {
			return invalid
		}
	default:
		if req.Auth != "bearer" || !open && (p == nil || p.kind != userToken) {
			return invalid
		}
	}
	status := "active"
	if p != nil && s.statuses[p.name] != "" {
		status = s.statuses[p.name]
	}
	rep := resultReply(map[string]string{"id": fingerprintOf(p), "status": status})
	// Cloudflare's message on success carries code 10000, the code of its
	// authentication error too: clients must judge success and status.
	rep.body = strings.Replace(rep.body, `"messages":[]`, `"messages":[{"code":10000,"message":"This API Token is valid and active","type":null}]`, 1)
	return rep
}

func fingerprintOf(p *principal) string {
	if p == nil {
		return "00000000000000000000000000000000"
	}
	return p.fingerprnt
}

// resultReply is a successful envelope holding result.
func resultReply(result any) reply {
	b, _ := json.Marshal(struct {
		Success  bool  `json:"success"`
		Errors   []msg `json:"errors"`
		Messages []msg `json:"messages"`
		Result   any   `json:"result"`
	}{Success: true, Errors: []msg{}, Messages: []msg{}, Result: result})
	return reply{status: http.StatusOK, body: string(b)}
}

func authError() *reply {
	r := envelopeReply(http.StatusForbidden, msg{CodeAuthError, "Authentication error", nil})
	return &r
}

// authenticate classifies the credential of r into req (Auth, TokenOK,
// Credential, Budget) and returns the configured credential it matched, if
// any, and the rejection, if any, that the default behaviour answers with.
func (s *Server) authenticate(r *http.Request, req *Request) (*principal, *reply) {
	ps := s.cfg.principals
	required := len(ps) > 0
	authz, hasAuthz := r.Header["Authorization"]
	email, key := r.Header.Get("X-Auth-Email"), r.Header.Get("X-Auth-Key")
	var p *principal
	switch {
	case hasAuthz:
		tok, ok := bearer(authz)
		if !ok {
			req.Auth = "malformed"
			return nil, badHeaders(CodeBadAuthzHeader, "Invalid format for Authorization header")
		}
		req.Auth = "bearer"
		p = match(ps, func(p *principal) bool { return p.kind != userKey && equal(tok, p.token) })
	case email != "" || key != "" || r.Header["X-Auth-Email"] != nil || r.Header["X-Auth-Key"] != nil:
		switch {
		case !cloudflare.ValidSecret(email):
			req.Auth = "malformed"
			return nil, badHeaders(CodeBadAuthEmail, "Invalid format for X-Auth-Email header")
		case !cloudflare.ValidSecret(key):
			req.Auth = "malformed"
			return nil, badHeaders(CodeBadAuthKey, "Invalid format for X-Auth-Key header")
		}
		req.Auth = "legacy"
		p = match(ps, func(p *principal) bool { return p.kind == userKey && equal(email, p.email) && equal(key, p.token) })
	default:
		req.Auth = "none"
		if !required {
			return nil, nil // nothing required, nothing sent: let it through
		}
	}
	if p != nil {
		req.Credential, req.Budget = p.name, p.budget
	}
	// A path without an account (the user's routes, unknown paths) asks
	// nothing of the credential's accounts.
	req.TokenOK = !required || p != nil && (req.AccountID == "" || p.allows(req.AccountID))
	if !req.TokenOK {
		return p, authError()
	}
	return p, nil
}

// match returns the first credential ok accepts. Every one is compared, so
// the time taken does not tell which matched.
func match(ps []*principal, ok func(*principal) bool) *principal {
	var found *principal
	for _, p := range ps {
		if ok(p) && found == nil {
			found = p
		}
	}
	return found
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
func (b *budgetState) prune(now time.Time) {
	cut := now.Add(-time.Second)
	i := 0
	for i < len(b.window) && !b.window[i].After(cut) {
		i++
	}
	b.window = append(b.window[:0], b.window[i:]...)
}

// QuotaWindow is the window of the quota the headers tell, Cloudflare's:
// 1,200 calls in 5 minutes is 4 a second (SPEC §1).
const QuotaWindow = 5 * time.Minute

// addRateHeaders adds the IETF draft headers the real API may send, so
// clients can be tested against them; s.mu is held.
func (s *Server) addRateHeaders(b *budgetState, rep *reply, now time.Time) {
	b.prune(now)
	i := 0
	for i < len(b.quota) && !b.quota[i].After(now.Add(-QuotaWindow)) {
		i++
	}
	b.quota = append(b.quota[:0], b.quota[i:]...)
	quota := b.perSecond * int(QuotaWindow/time.Second)
	left := max(0, quota-len(b.quota))
	reset := int(QuotaWindow / time.Second)
	switch {
	case now.Before(b.lockedUntil):
		left, reset = 0, ceilSeconds(b.lockedUntil.Sub(now))
	case rep.status == http.StatusTooManyRequests:
		// Refused for the second's rate: nothing is left until it has room.
		left, reset = 0, 1
		if len(b.window) > 0 {
			reset = max(1, ceilSeconds(b.window[0].Add(time.Second).Sub(now)))
		}
	case len(b.quota) > 0:
		reset = ceilSeconds(b.quota[0].Add(QuotaWindow).Sub(now))
	}
	if rep.header == nil {
		rep.header = http.Header{}
	}
	if rep.header.Get("Ratelimit") == "" {
		rep.header.Set("Ratelimit", fmt.Sprintf(`"default";r=%d;t=%d`, left, reset))
		rep.header.Set("Ratelimit-Policy", fmt.Sprintf(`"default";q=%d;w=%d`, quota, int(QuotaWindow/time.Second)))
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
